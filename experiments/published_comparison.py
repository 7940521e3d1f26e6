"""The published optimizer comparison's setting (spec optimizers.md, section 1), like for like on our model.

That comparison put Adam, Shampoo, SOAP and Muon in turn on the hidden matrices of the late-2024 small-track
model, before the outer loop (Snoo) and update smoothing existed, with Muon at lr 0.02, momentum 0.95 and
zero weight decay for every optimizer. Here every run has Snoo off (--snoo_k=0); Muon runs twice: at the
record's settings (its update smoothing, lr 0.03, weight decay 0.01, momentum warmed up from 0.85) and at
the published ones (no smoothing, lr 0.02, momentum 0.95 from the start, no weight decay). Embeddings, head
and scalars keep the record's AdamW. Each configuration's runs go to records/<prefix>-<name>/, then
records/compare.py compares the folders.

    python experiments/published_comparison.py --runs 5                      # ./run.sh: the GPUs of this node
    python experiments/published_comparison.py --dry-run                     # print the commands only
    python experiments/published_comparison.py --launch "python train_gpt.py" -- --preset=tiny

Options after `--` go to every train_gpt.py run.
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USAGE_ERROR = 2

# Every run: no outer loop, as in the published comparison.
COMMON = ("--snoo_k=0",)
CONFIGURATIONS = {
    "muon-record": ("--matrix_optimizer=muon",),
    "muon-published": (
        "--matrix_optimizer=muon",
        "--update_smoothing=0",
        "--muon_lr=0.02",
        "--muon_momentum=0.95",
        "--muon_momentum_start=0.95",
        "--muon_weight_decay=0",
    ),
    # train_gpt.py's defaults for these are the published settings (README, "Comparing optimizers").
    "adam": ("--matrix_optimizer=adam",),
    "shampoo": ("--matrix_optimizer=shampoo",),
    "soap": ("--matrix_optimizer=soap",),
}


def commands(launch: list[str], runs: int, records_dir: str, prefix: str, extra: list[str]) -> list[list[str]]:
    """The training commands, one run of every configuration in turn (so that a batch interrupted late still
    has runs of each), then compare.py over the folders."""
    out = []
    for _ in range(runs):
        for name, options in CONFIGURATIONS.items():
            record = [f"--records_dir={records_dir}", f"--record={prefix}-{name}"]
            out.append([*launch, *COMMON, *options, *record, *extra])
    folders = [str(Path(records_dir) / f"{prefix}-{name}") for name in CONFIGURATIONS]
    out.append([sys.executable, "records/compare.py", *folders])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="published_comparison.py",
        description="Run the published optimizer comparison's setting on our model (Snoo off; Muon at the "
        "record's and at the published settings; Adam, Shampoo, SOAP), then compare the batches.",
        epilog="Options after -- go to every train_gpt.py run, e.g. -- --preset=tiny --num_iterations=100.",
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per configuration (default %(default)s)")
    parser.add_argument(
        "--launch",
        default="./run.sh",
        help="how to start train_gpt.py (default %(default)r: torchrun on every GPU of the node)",
    )
    parser.add_argument("--records-dir", default="records", help="where the run folders go (default %(default)s)")
    parser.add_argument("--prefix", default="cmp", help="folders are RECORDS_DIR/PREFIX-NAME (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for train_gpt.py")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: give at least 1 run per configuration")
    if args.extra and args.extra[0] == "--":
        args.extra = args.extra[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for command in commands(shlex.split(args.launch), args.runs, args.records_dir, args.prefix, args.extra):
        print(shlex.join(command), flush=True)
        if args.dry_run:
            continue
        try:
            done = subprocess.run(command, cwd=REPO)
        except OSError as e:
            print(f"error: cannot start {command[0]}: {e.strerror or e}. Check --launch.", file=sys.stderr)
            return USAGE_ERROR
        if done.returncode != 0:
            print(
                f"error: this command exited with status {done.returncode}; the runs before it are kept in "
                "their folders. Fix the cause and run again (existing runs stay and count).",
                file=sys.stderr,
            )
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
