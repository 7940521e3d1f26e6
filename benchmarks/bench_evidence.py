"""Time records/evidence.py on logs the size of the record's: 5590 steps, a step line per step,
a val line every 125 steps, the training script's source on top (~6000 lines per log).

    python benchmarks/bench_evidence.py [--runs 200] [--repeat 3]

Prints the best of --repeat timings per stage, in-process, plus the whole command line as a
subprocess (interpreter start and imports included). Pin it to one core with `taskset -c 0`.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import train_gpt as tg  # noqa: E402
from records import cli, evidence, logs  # noqa: E402

RECORD = tg.Hyperparameters()
STEPS, VAL_EVERY = RECORD.num_iterations, RECORD.val_loss_every
TARGET, SAMPLES, SIZE = cli.DEFAULT_TARGETS[logs.OURS], evidence.DEFAULT_BOOTSTRAP, evidence.DEFAULT_SAMPLE_SIZE


def write_log(path: Path, source: str, final_loss: float, ms_per_step: float, rng: np.random.Generator) -> None:
    lines = [source, "=" * 100, "Running Python 3.12", "nvidia-smi output would be here", "=" * 100]
    elapsed = 0.0
    for step in range(STEPS + 1):
        if step % VAL_EVERY == 0 or step == STEPS:
            loss = final_loss + 8.0 * (1 - step / STEPS) ** 3
            lines.append(tg.format_val_line(step, STEPS, loss, elapsed))
        if step < STEPS:
            elapsed += ms_per_step * (1 + 0.01 * rng.standard_normal())
            lines.append(tg.format_train_line(step + 1, STEPS, elapsed))
    lines.append("peak memory allocated: 50000 MiB reserved: 60000 MiB")
    path.write_text("\n".join(lines) + "\n")


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    # The record's script is about the size of train_gpt.py; its f-strings hold the step formats.
    source_file = REPO / "train_gpt.py"
    source = (source_file if source_file.exists() else REPO / "records" / "evidence.py").read_text()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.runs):
            write_log(folder / f"run{i:03d}.txt", source, 2.9195 + 0.0008 * rng.standard_normal(), 251.0, rng)
        files = sorted(folder.iterdir())
        lines = sum(1 for _ in files[0].open())
        size = sum(f.stat().st_size for f in files) / 2**20

        t_load, loaded = best(lambda: logs.load([str(folder)]), args.repeat)
        assert len(loaded.runs) == args.runs, "every generated log must parse"
        loss = np.array([r.final_val_loss for r in loaded.runs])
        t_boot, _ = best(lambda: evidence.bootstrap_pvalues(loss, TARGET, SIZE, SAMPLES, 0), args.repeat)
        t_power, _ = best(lambda: evidence.power_table(loss, TARGET, SAMPLES, 0), args.repeat)
        t_all, _ = best(lambda: evidence.analyse(loaded, TARGET, SAMPLES, SIZE, 0), args.repeat)
        cmd = [sys.executable, str(REPO / "records" / "evidence.py"), str(folder)]
        t_cli, _ = best(lambda: subprocess.run(cmd, check=True, capture_output=True), args.repeat)
        outputs = ["--markdown", str(folder / "README.md"), "--plot", str(folder / "evidence.png"), "--force"]
        t_full, _ = best(lambda: subprocess.run(cmd + outputs, check=True, capture_output=True), args.repeat)

    print(
        f"{args.runs} logs x {lines} lines ({size:.0f} MiB), {SAMPLES} bootstrap samples of {SIZE}; "
        f"best of {args.repeat}; "
        f"{os.cpu_count()} CPUs visible, affinity {len(os.sched_getaffinity(0))}"
    )
    print(f"{'stage':<44}{'seconds':>8}")
    for name, t in [
        (f"read {args.runs} logs", t_load),
        (f"bootstrap, {SAMPLES} x {SIZE} runs", t_boot),
        (f"power table, {len(evidence.POWER_GRID)} sizes x {SAMPLES} samples", t_power),
        ("all statistics (analyse)", t_all),
        ("whole command (new process, imports)", t_cli),
        ("whole command with --markdown and --plot", t_full),
    ]:
        print(f"{name:<44}{t:>8.3f}")


if __name__ == "__main__":
    main()
