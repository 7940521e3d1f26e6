"""Operating characteristics of records/batch.py's sequential plans, by simulation of whole batches.

    python benchmarks/bench_sequential.py [--batches 100000] [--seed 0]

For each plan: the type I error under the null (true mean exactly at the target, std 0.0008) with
futility ignored (the boundaries' guarantee, since futility is non-binding), also when the first look's
runs have a std 30% lower or higher than the later ones, and when the first look's std estimate happens
to be 30% low or high (conditional on it); the type I error with futility applied; under record 14's
figures (mean 2.919547, std 0.000798 over 160 runs) the power and the expected number of attempt runs,
against a fixed 40-run t-test and the fixed batch whose t-test has the plan's power; the expected runs of
an attempt exactly at the target and at 2.9203. +- is one standard error of the Monte Carlo.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from records import sequential  # noqa: E402

TARGET, NULL_STD = 2.92, 0.0008
RECORD_MEAN, RECORD_STD = 2.919547, 0.000798  # record 14, 160 runs (../shared/spec/record.md)
WORSE_MEAN = 2.9203
FIXED_RUNS = 40
OFF = 0.3  # the std "30% off at the first look"

# (label, looks, futility threshold, first look with futility)
PLANS = (
    ("default: looks 10..50 by 5, futility CP<5% from look 2", tuple(range(10, 51, 5)), 0.05, 2),
    ("looks 10..50 by 5, futility CP<10% from look 2", tuple(range(10, 51, 5)), 0.10, 2),
    ("looks 10..50 by 5, futility CP<10% from look 3", tuple(range(10, 51, 5)), 0.10, 3),
    ("looks 10..55 by 5, futility CP<10% from look 2", tuple(range(10, 56, 5)), 0.10, 2),
    ("looks 10..60 by 5, futility CP<5% from look 2", tuple(range(10, 61, 5)), 0.05, 2),
    ("looks 10..40 by 10, futility CP<5% from look 2", (10, 20, 30, 40), 0.05, 2),
)


def _rate(r: sequential.Simulated) -> str:
    return f"{r.passed:.4f} +- {r.passed_se:.4f}"


def _runs(r: sequential.Simulated) -> str:
    return f"{r.mean_runs:.1f} +- {r.mean_runs_se:.2f}"


def report(label: str, design: sequential.Design, batches: int, seed: int) -> list[str]:
    def sim(mean, std, **kw):
        return sequential.simulate(design, mean, std, batches, seed, **kw)

    null = sim(TARGET, NULL_STD, futility=False)
    scaled = [sim(TARGET, NULL_STD, futility=False, first_look_scale=f) for f in (1 - OFF, 1 + OFF)]
    estimated = [sim(TARGET, NULL_STD, futility=False, first_look_estimate=f) for f in (1 - OFF, 1 + OFF)]
    null_fut = sim(TARGET, NULL_STD)
    record = sim(RECORD_MEAN, RECORD_STD)
    worse = sim(WORSE_MEAN, NULL_STD)
    fixed40 = sequential.fixed_power(FIXED_RUNS, RECORD_MEAN, RECORD_STD, TARGET, design.alpha)
    same_power = sequential.fixed_n_for_power(record.passed, RECORD_MEAN, RECORD_STD, TARGET, design.alpha)
    lines = [
        f"## {label}",
        "t boundaries: " + " ".join(f"{n}:{b:.3f}" for n, b in zip(design.looks, design.t_boundaries())),
        f"type I, futility ignored                      {_rate(null)}  (limit {design.alpha} + 2 SE "
        f"= {design.alpha + 2 * null.passed_se:.4f})",
        f"type I, first look's runs std -{OFF:.0%} / +{OFF:.0%}     {_rate(scaled[0])} / {_rate(scaled[1])}",
        f"type I, given first-look estimate -{OFF:.0%} / +{OFF:.0%} {_rate(estimated[0])} / {_rate(estimated[1])}",
        f"type I, futility applied                      {_rate(null_fut)}, expected runs {_runs(null_fut)}",
        f"record 14 (mean {RECORD_MEAN}, std {RECORD_STD}): power {_rate(record)}, expected runs {_runs(record)}",
        f"  fixed {FIXED_RUNS}-run t-test: power {fixed40:.4f}, {FIXED_RUNS} runs; "
        f"fixed t-test with the plan's power: {same_power} runs",
        f"expected runs at the target {TARGET}: {_runs(null_fut)}; at {WORSE_MEAN}: {_runs(worse)}",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100_000, help="simulated batches per figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plans", type=int, default=len(PLANS), help="how many of the plans to simulate")
    args = parser.parse_args()
    print(f"{args.batches} simulated batches per figure, seed {args.seed}, one-sided alpha 0.01, target {TARGET}")
    for label, looks, threshold, start in PLANS[: args.plans]:
        began = time.perf_counter()
        design = sequential.Design(looks, futility_threshold=threshold, futility_from=start)
        print("\n".join(report(label, design, args.batches, args.seed)))
        print(f"({time.perf_counter() - began:.1f} s)\n")


if __name__ == "__main__":
    main()
