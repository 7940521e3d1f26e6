"""Time the record configuration on this machine's GPUs: compile time, ms per step, peak memory.

    python benchmarks/bench_train.py                  # 1 GPU, 20 steps
    python benchmarks/bench_train.py --nproc 8 --steps 50 --out benchmarks/results/train_8xh100.md
    python benchmarks/bench_train.py --steps 30 -- --coordinate_descent_tuning=false   # shorter compile
    python benchmarks/bench_train.py --smoke          # tiny preset on CPU: checks the script runs

Writes synthetic shards (random tokens in documents of ~1000 tokens) to a temporary folder, runs
train_gpt.py with the record's hyperparameters for --steps steps (one validation, at the end, on
--val_steps validation steps), and prints a table made from the run's own log. With fewer than 8
processes each rank accumulates 8 / nproc sequences per step, so ms per step is per record step.
"""

import argparse
import datetime
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data"))
sys.path.insert(0, str(REPO))
from shards import write_shard  # noqa: E402

import train_gpt as tg  # noqa: E402

TRAIN_LINE = re.compile(r"^step:(\d+)/\d+ train_time:(\d+)ms")
VAL_LINE = re.compile(r"^step:\d+/\d+ val_loss:(\S+) ")
WARMUP_LINE = re.compile(r"^kernel warmup: \d+ steps in ([\d.]+)s")
MEMORY_LINE = re.compile(r"^peak memory allocated: (\d+) MiB reserved: (\d+) MiB")
NEWTON_SCHULZ_LINE = re.compile(r"^newton_schulz: (.*)$")


def synthetic_tokens(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, tg.EOT_TOKEN, n).astype(np.uint16)
    tokens[rng.random(n) < 1 / 1000] = tg.EOT_TOKEN
    tokens[0] = tg.EOT_TOKEN
    return tokens


def rows_from_log(lines: list[str], steps: int, skip: int) -> list[tuple[str, str]]:
    """The table's measured rows, read from a train_gpt.py log."""
    times = {int(m[1]): int(m[2]) for m in map(TRAIN_LINE.match, lines) if m}
    warmup = next((f"{float(m[1]):.1f} s" for m in map(WARMUP_LINE.match, lines) if m), "not logged")
    val = next(float(m[1]) for m in map(VAL_LINE.match, reversed(lines)) if m)
    memory = next((m for m in map(MEMORY_LINE.match, lines) if m), None)
    newton_schulz = next((m[1] for m in map(NEWTON_SCHULZ_LINE.match, lines) if m), "not logged")
    return [
        ("Newton-Schulz (what --ns_impl timed and chose)", newton_schulz),
        ("kernel warmup (compile, autotune; untimed)", warmup),
        (f"ms per step, steps {skip + 1}-{steps}", f"{(times[steps] - times[skip]) / (steps - skip):.1f}"),
        (f"step_avg at step {steps} (as logged)", f"{times[steps] / steps:.1f}"),
        ("peak memory allocated / reserved (MiB)", f"{memory[1]} / {memory[2]}" if memory else "not logged"),
        ("final val loss (random tokens: only finiteness matters)", f"{val:.4f}"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=1, choices=(1, 2, 4, 8), help="processes (GPUs)")
    parser.add_argument("--steps", type=int, help="training steps to time (default 20; smoke 4)")
    parser.add_argument(
        "--val_steps", type=int, default=1, help="validation steps (of seqs_per_step x val_seq_len tokens)"
    )
    parser.add_argument("--skip", type=int, help="first steps left out of ms per step (default 3; smoke 1)")
    parser.add_argument(
        "--out", type=Path, help="also write the table to this file and the run's log beside it (never overwritten)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the tiny preset on CPU for a few steps: checks the script runs; numbers mean nothing",
    )
    parser.add_argument(
        "train_args",
        nargs="*",
        metavar="-- OPTION",
        help="train_gpt.py options after --, e.g. -- --coordinate_descent_tuning=false",
    )
    args = parser.parse_args(argv)
    steps = args.steps or (4 if args.smoke else 20)
    skip = args.skip if args.skip is not None else (1 if args.smoke else 3)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(
            "error: bench_train.py times the record configuration and needs a CUDA GPU; none is visible "
            "(--smoke runs the tiny preset on CPU)."
        )
    if steps <= skip:
        sys.exit(f"error: --steps={steps} must be larger than --skip={skip}.")
    if args.out and (args.out.exists() or log_path(args.out).exists()):
        sys.exit(f"error: {args.out} or its log exists; choose another --out (results are never overwritten).")
    preset = ["--preset=tiny", "--device=cpu"] if args.smoke else []
    try:
        run = tg.parse_args(preset + args.train_args)
    except tg.UserError as e:
        sys.exit(f"error: {e}")
    step_tokens = run.seqs_per_step * run.train_seq_len
    val_step_tokens = run.seqs_per_step * run.val_seq_len

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shard(tmp / "val_000000.bin", synthetic_tokens(args.val_steps * val_step_tokens + 2, 0))
        write_shard(tmp / "train_000001.bin", synthetic_tokens(steps * step_tokens + 2, 1))
        cmd = [sys.executable, str(REPO / "train_gpt.py")]
        if args.nproc > 1:
            cmd = ["torchrun", "--standalone", f"--nproc_per_node={args.nproc}", str(REPO / "train_gpt.py")]
        cmd += [
            *preset,
            f"--train_files={tmp}/train_*.bin",
            f"--val_files={tmp}/val_*.bin",
            f"--val_tokens={args.val_steps * val_step_tokens}",
            f"--num_iterations={steps}",
            "--val_loss_every=0",
            f"--records_dir={tmp}/records",
            "--record=bench",
            *args.train_args,
        ]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            sys.exit(f"error: train_gpt.py exited with {out.returncode}:\n{out.stderr[-4000:]}")
        (log,) = (tmp / "records" / "bench").glob("*.txt")
        log_text = log.read_text()
        lines = log_text.splitlines()

    device = (
        f"{args.nproc} x {torch.cuda.get_device_name(0)}" if not args.smoke else "CPU (smoke: numbers mean nothing)"
    )
    rows = [
        ("GPU", device),
        ("torch / CUDA", f"{torch.__version__} / {torch.version.cuda}"),
        ("date", datetime.date.today().isoformat()),
        ("options", " ".join(preset + args.train_args) or "the record's"),
        ("whole process", f"{wall:.1f} s"),
    ] + rows_from_log(lines, steps, skip)
    width = max(len(r[0]) for r in rows)
    table = "\n".join(
        [f"| {'':{width}} | value |", f"|{'-' * (width + 2)}|-------|"] + [f"| {k:{width}} | {v} |" for k, v in rows]
    )
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "x") as f:
            f.write(table + "\n")
        with open(log_path(args.out), "x") as f:  # the whole run: its code, environment and every step
            f.write(log_text)
        print(f"the run's log: {log_path(args.out)}")
    return 0


def log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".log.txt")


if __name__ == "__main__":
    sys.exit(main())
