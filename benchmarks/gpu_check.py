"""Check a GPU node before paying for timed runs, in one command and one report.

    python benchmarks/gpu_check.py --out DIR            # one GPU, no network, under 8 minutes
    python benchmarks/gpu_check.py --out DIR --full     # coordinate-descent tuning on, as in the record
    python benchmarks/gpu_check.py --out DIR --smoke    # on CPU in seconds: checks this script; numbers mean nothing

It runs, in order, each with a time limit, and goes on after a failure:
1. the environment: GPU, driver, torch, CUDA, triton, Python;
2. the gpu-marked tests (`python -m pytest -m gpu`: the Triton kernels in bf16, the compiled FlexAttention model
   against the dense one, ...), except the few record steps that part 4 runs anyway;
3. the Newton-Schulz benchmark (benchmarks/bench_newton_schulz.py: compiled torch against Triton on the record's
   shapes, TFLOP/s, the autotuner's picks);
4. the record configuration at world size 1 (8 accumulated sequences per step) for --steps steps on synthetic
   shards (benchmarks/bench_train.py: compile time, ms per step, peak memory allocated and reserved, finite loss).
   Coordinate-descent tuning is off unless --full, to bound the compile time.
DIR/gpu_check.md holds the whole report (GPU name, versions, date, one row per part, then each part's output);
each part's output is also beside it (gpu_tests.txt, newton_schulz.txt, train.txt, and the training run's
whole log, train.log.txt).
The exit status is 0 only if every part passed.
"""

import argparse
import datetime
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# Per-part limits: together under 8 minutes on an H100, with room for the compiles.
TEST_LIMIT_S, NS_LIMIT_S, TRAIN_LIMIT_S = 150, 90, 210
DEFAULT_STEPS = 30
TRAIN_SKIP = 5  # steps left out of ms per step: the first steps after the warmup still settle
# --smoke: the same plumbing on CPU with the tiny preset, small and uncompiled so it takes seconds
SMOKE_TRAIN_ARGS = ["--compile=false", "--model_dim=64", "--num_heads=1", "--head_dim=64", "--warmup_steps=1"]
SMOKE_STEPS = 3


def run_part(name: str, cmd: list[str], out: Path, limit_s: int) -> dict:
    """Run one part, save what it printed to out, return its row of the summary."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        text += f"\n(stopped after the {limit_s} s limit of this part)"
        code = None
    seconds = time.perf_counter() - start
    out.write_text(text)
    status = "passed" if code == 0 else "timed out" if code is None else f"FAILED (exit {code})"
    return dict(name=name, status=status, seconds=seconds, file=out.name, command=" ".join(cmd), output=text)


def environment() -> list[tuple[str, str]]:
    def nvidia_smi() -> str:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return out.stdout.strip().replace("\n", "; ") if out.returncode == 0 else "nvidia-smi failed"
        except (OSError, subprocess.TimeoutExpired):
            return "nvidia-smi not found"

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
        ("GPU (name, driver, memory)", nvidia_smi() if torch.cuda.is_available() else "none visible"),
        ("torch", torch.__version__),
        ("CUDA (torch build)", str(torch.version.cuda)),
        ("triton", triton_version),
        ("Python", platform.python_version()),
        ("host", platform.node()),
    ]


def pytest_summary(text: str) -> str:
    """The last line pytest prints ("3 passed, 1 skipped in 9.2s"), or what is left of it."""
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error|deselected).*?)\s*=*$", text, re.M)
    return found[-1] if found else "no summary line"


def report(parts: list[dict], env: list[tuple[str, str]], smoke: bool, full: bool) -> str:
    lines = ["# GPU node check", ""]
    if smoke:
        lines += ["**Smoke run on CPU: checks that this script runs; none of its numbers mean anything.**", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env]
    lines += [f"| coordinate-descent tuning | {'on (--full)' if full else 'off'} |", ""]
    lines += ["| part | status | seconds | output |", "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['status']} | {p['seconds']:.1f} | {p['file']} |" for p in parts]
    for p in parts:
        lines += ["", f"## {p['name']}: {p['status']}", "", f"`{p['command']}`", "", "```", p["output"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="new folder for the report and each part's output")
    parser.add_argument("--full", action="store_true", help="coordinate-descent tuning on, as in the record")
    parser.add_argument("--smoke", action="store_true", help="run on CPU in seconds (numbers mean nothing)")
    parser.add_argument("--steps", type=int, help=f"training steps of part 4 (default {DEFAULT_STEPS})")
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(
            f"error: --out {args.out} exists and is not an empty folder; results are never overwritten. "
            f"Choose a new folder.",
            file=sys.stderr,
        )
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU is visible to torch, so there is nothing to check. Check nvidia-smi, "
            "CUDA_VISIBLE_DEVICES and that torch is a CUDA build (--smoke runs this script on CPU).",
            file=sys.stderr,
        )
        return 2
    steps = args.steps or (SMOKE_STEPS if args.smoke else DEFAULT_STEPS)
    skip = 1 if args.smoke else TRAIN_SKIP
    if steps <= skip:
        print(
            f"error: --steps={steps}: more than {skip} needed (the first {skip} are left out of ms per step).",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    train_args = SMOKE_TRAIN_ARGS if args.smoke else [] if args.full else ["--coordinate_descent_tuning=false"]
    parts = [
        (
            "gpu-marked tests",
            [
                py,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "-p",
                "no:cacheprovider",
                "--deselect",
                "tests/test_train.py::test_record_configuration_on_one_gpu",
            ],
            "gpu_tests.txt",
            TEST_LIMIT_S,
        ),
        (
            "Newton-Schulz benchmark",
            [py, "benchmarks/bench_newton_schulz.py"] + (["--smoke"] if args.smoke else []),
            "newton_schulz.txt",
            NS_LIMIT_S,
        ),
        (
            "record configuration, 1 GPU",
            [py, "benchmarks/bench_train.py", f"--steps={steps}", f"--skip={skip}", f"--out={args.out / 'train.md'}"]
            + (["--smoke"] if args.smoke else [])
            + ["--", *train_args],
            "train.txt",
            TRAIN_LIMIT_S,
        ),
    ]
    env = environment()
    results = []
    for name, cmd, file, limit in parts:
        print(f"gpu_check: {name} ...", flush=True)
        results.append(run_part(name, cmd, args.out / file, limit))
        print(f"gpu_check: {name}: {results[-1]['status']} in {results[-1]['seconds']:.1f} s", flush=True)
    results[0]["status"] += f" ({pytest_summary(results[0]['output'])})"
    text = report(results, env, args.smoke, args.full)
    (args.out / "gpu_check.md").write_text(text)
    print(f"gpu_check: report in {args.out / 'gpu_check.md'}")
    ok = all(r["status"].startswith("passed") for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
