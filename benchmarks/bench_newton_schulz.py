"""Time Muon's Newton-Schulz: the torch path (newton_schulz_torch under torch.compile) against the
Triton path (newton_schulz_triton: symmetric kernels for X Xᵀ and b A + c A A, cuBLAS for the rest),
on the record's matrix shapes and on the whole per-step Muon workload.

    python benchmarks/bench_newton_schulz.py [--out FILE]       # on a CUDA GPU: the table to commit
    python benchmarks/bench_newton_schulz.py --smoke             # tiny shapes on CPU, torch path only
    TRITON_INTERPRET=1 python benchmarks/bench_newton_schulz.py --smoke   # ... with the Triton path

--smoke only checks that the script runs: its shapes are tiny, its torch path is eager, and it runs
both paths in fp32 (the Triton interpreter computes bf16 wrong). Its numbers mean nothing.

TFLOP/s count the useful FLOPs of the plain algorithm for both paths: per step 2 M M K (X Xᵀ) +
2 M M M (A A) + 2 M M K (B X), with M <= K after the transpose, times 5 steps, times the batch. The
symmetric kernels skip about half of the first two products, so their saving shows as a higher rate.
Inputs are fp32 like Muon's (momentum mixed with the gradient); a repeated workload finds its inputs
in L2 when they fit, for both paths alike.
"""

import argparse
import datetime
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import train_gpt as tg  # noqa: E402

WORLD_SIZE = 8
# (name, shape, how many such parameters the record's Muon holds)
RECORD_MATRICES = [
    ("MLP fc (4096, 1024), transposed", (4096, 1024), 16),
    ("MLP proj (1024, 4096)", (1024, 4096), 16),
    ("attention (4, 1024, 1024)", (4, 1024, 1024), 15),
]
# the same structure at a size the CPU and the Triton interpreter run in moments
SMOKE_MATRICES = [
    ("MLP fc (96, 24), transposed", (96, 24), 2),
    ("MLP proj (24, 96)", (24, 96), 2),
    ("attention (4, 24, 24)", (4, 24, 24), 1),
]


def useful_flops(shape: tuple) -> int:
    *batch, m, k = shape
    m, k = min(m, k), max(m, k)
    return math.prod(batch) * len(tg.NS_COEFFS) * (4 * m * m * k + 2 * m**3)


def time_ms(fn, inputs: list, device: torch.device, warmup: int, repeat: int) -> float:
    """Median wall time of one pass of fn over all inputs, in ms (train_gpt's timer: CUDA events)."""
    return tg.time_ms(lambda: [fn(x) for x in inputs], device, repeat, warmup)


def matmul_ceiling(n: int, dtype: torch.dtype, device: torch.device, warmup: int, repeat: int) -> float:
    """TFLOP/s of one n x n x n matmul, the rate the GPU reaches on the easiest shape."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / time_ms(lambda _: a @ b, [None], device, warmup, repeat) / 1e9


def workloads(matrices: list) -> list:
    """(name, [(shape, count)]) rows: each shape alone, all of Muon's matrices, and the share of the
    busiest rank at world size 8 (Muon gives rank r members r, r + 8, ... of each shape's group)."""
    rows = [(name, [(shape, 1)]) for name, shape, _ in matrices]
    rows.append((f"all {sum(n for *_, n in matrices)} matrices", [(s, n) for _, s, n in matrices]))
    share = [(s, math.ceil(n / WORLD_SIZE)) for _, s, n in matrices]
    rows.append((f"1/{WORLD_SIZE} share (busiest rank): {sum(n for _, n in share)}", share))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script runs)")
    parser.add_argument("--warmup", type=int, help="untimed passes (default 10; smoke 1)")
    parser.add_argument("--repeat", type=int, help="timed passes, median kept (default 50; smoke 2)")
    parser.add_argument("--out", type=Path, help="also write the report to this file (never overwritten)")
    args = parser.parse_args()
    if args.out and args.out.exists():
        sys.exit(f"bench_newton_schulz: {args.out} exists; choose another --out (results are never overwritten).")
    if args.warmup is not None and args.warmup < 0:
        sys.exit("bench_newton_schulz: --warmup must be 0 or more.")
    if args.repeat is not None and args.repeat < 1:
        sys.exit("bench_newton_schulz: --repeat must be at least 1 (the median of no passes is undefined).")

    if args.smoke:
        device, dtype, matrices, ceiling_n = torch.device("cpu"), torch.float32, SMOKE_MATRICES, 256
        warmup, repeat = 1, 2
        torch_ns = lambda G: tg.newton_schulz_torch(G, dtype)  # noqa: E731
        torch_label = "torch eager"
        have_triton = tg.triton is not None and tg.TRITON_INTERPRET
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_newton_schulz: needs a CUDA GPU (or --smoke for a CPU check of the script).")
        device, dtype, matrices, ceiling_n = torch.device("cuda"), torch.bfloat16, RECORD_MATRICES, 8192
        warmup, repeat = 10, 50
        torch_ns = torch.compile(tg.newton_schulz_torch, dynamic=False)  # specialized per shape
        torch_label = "torch compiled"
        have_triton = tg.triton is not None
        if not have_triton:
            sys.exit("bench_newton_schulz: triton is not installed.")
    warmup = warmup if args.warmup is None else args.warmup
    repeat = repeat if args.repeat is None else args.repeat
    triton_ns = lambda G: tg.newton_schulz_triton(G, dtype)  # noqa: E731

    gen = torch.Generator(device=device).manual_seed(0)
    ceiling = matmul_ceiling(ceiling_n, dtype, device, warmup, repeat)
    lines = [
        f"Newton-Schulz benchmark, {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "device: "
        + (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke: numbers mean nothing)"),
        f"torch {torch.__version__}, triton {tg.triton.__version__ if tg.triton else None}, "
        f"dtype {str(dtype).removeprefix('torch.')}, median of {repeat} passes after {warmup} warmup",
        f"matmul ceiling ({ceiling_n}^3, {str(dtype).removeprefix('torch.')}): {ceiling:.4g} TFLOP/s",
        "",
    ]
    header = (
        f"{'workload':<36} {'GFLOP':>8} {torch_label + ' ms':>18} {'triton ms':>10} {'speedup':>8} "
        f"{'torch TFLOP/s':>14} {'triton TFLOP/s':>15} {'of ceiling':>10} {'rel diff':>9}"
    )
    lines += [header, "-" * len(header)]
    for name, parts in workloads(matrices):
        inputs = [torch.randn(shape, device=device, generator=gen) for shape, count in parts for _ in range(count)]
        gflop = sum(useful_flops(tuple(x.shape)) for x in inputs) / 1e9
        t_torch = time_ms(torch_ns, inputs, device, warmup, repeat)
        row = f"{name:<36} {gflop:>8.2f} {t_torch:>18.3f} "
        if have_triton:
            t_triton = time_ms(triton_ns, inputs, device, warmup, repeat)
            ref, out = torch_ns(inputs[0]).double(), triton_ns(inputs[0]).double()
            diff = ((out - ref).norm() / ref.norm()).item()
            row += (
                f"{t_triton:>10.3f} {t_torch / t_triton:>7.2f}x {gflop / t_torch:>14.4g} "
                f"{gflop / t_triton:>15.4g} {gflop / t_triton / ceiling:>10.0%} {diff:>9.1e}"
            )
        else:
            row += f"{'n/a':>10} {'n/a':>8} {gflop / t_torch:>14.4g} {'n/a':>15} {'n/a':>10} {'n/a':>9}"
        lines.append(row)
    if have_triton:
        # the autotuner's pick per (batch, M, K, HAS_C, dtypes) key; with one config it keeps none
        picks = tg._sym_matmul_kernel.cache or {"every call (single config)": tg._SYM_CONFIGS[0]}
        lines += ["", "Triton configs picked:"] + [f"  {key}: {config}" for key, config in picks.items()]
    elif args.smoke:
        lines += ["", "Triton path not run: set TRITON_INTERPRET=1 to run it on CPU."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "x") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
