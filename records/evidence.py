"""Statistical evidence for a speedrun record.

A record is accepted when independent runs show, with p < 0.01, that the mean final validation
loss is below the target, and when its training time is known. This script reads the runs (our
.txt logs and .json summaries, or the public speedrun's logs of any track, through records/logs.py),
prints the statistics in the
speedrun's own format, and adds what a contributor needs to decide and document a submission:
how often a batch of runs would pass (bootstrap), how many runs to pay for (power table), how it
compares with a baseline run on the same machine (Welch), a README section and a figure.

    python records/evidence.py records/NAME
    python records/evidence.py records/NAME --baseline records/PREVIOUS \
        --markdown records/NAME/README.md --plot records/NAME/evidence.png

See records/README.md for the meaning of every number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

if __package__ in (None, ""):  # run as a script (python records/evidence.py): make `records` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from records import cli, tracks  # noqa: E402
from records.cli import runs_text as _runs  # noqa: E402
from records.logs import OPTIMIZATION, REPORT_FORMAT, Loaded, Run  # noqa: E402

ALPHA = 0.01  # the acceptance threshold on the p-value
CONFIDENCE = 0.99
ALPHA_TEXT, CONFIDENCE_TEXT = f"{ALPHA:g}", f"{CONFIDENCE:.0%}"  # "0.01", "99%" in the output
# The record's own pass-probability estimate: 1000 bootstrap samples of 40 runs.
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SAMPLE_SIZE = 40
MS_PER_MINUTE = 60_000
# Power planning estimates the pass probability on this grid of batch sizes; the text table shows
# POWER_SHOWN, the search for the smallest sufficient batch uses the whole grid.
POWER_GRID = tuple(range(5, 81, 5))
POWER_SHOWN = (10, 20, 40, 80)
POWER_GOAL = 0.9
# Below this many runs the t-intervals and the bootstrap rest on too little to decide anything: the outputs
# say so (the numbers stay in the JSON).
FEW_RUNS = 5
ZOOM_ABOVE_TARGET = 0.05  # the plot's zoom panel shows val losses up to target + this
# Figure geometry (inches, dots per inch) and the final-loss panel's layout, as fractions of its x span.
PANEL_WIDTH, PANEL_HEIGHT, FIGURE_DPI = 5.6, 4.8, 110
FINALS_MIN_SPAN = 1e-3  # x span of the final-loss panel when all runs share one value
SINGLE_BIN_FRACTION = 0.05  # width of the one bar of identical values
FINALS_PAD = 0.08
RUG_Y = 0.03  # height of the per-run ticks, in axes coordinates


# ------------------------------------------------------------------------------------ statistics


@contextlib.contextmanager
def _quiet():
    """Degenerate samples (all values equal) make scipy warn; their p-values (0 or 1) are right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _interval(x: np.ndarray) -> list[float] | None:
    if len(x) < 2:
        return None
    with _quiet():
        ci = stats.ttest_1samp(x, 0.0).confidence_interval(CONFIDENCE)
    return [float(ci.low), float(ci.high)]


def describe_val_loss(x: np.ndarray, target: float) -> dict:
    out = {
        "mean": float(np.mean(x)),
        "std": float(np.std(x, ddof=1)) if len(x) > 1 else None,
        "median": float(np.median(x)),
        "min": float(np.min(x)),
        "max": float(np.max(x)),
        "ci99": _interval(x),
        "pvalue": None,
    }
    if len(x) > 1:
        with _quiet():
            out["pvalue"] = _float(stats.ttest_1samp(x, target, alternative="less").pvalue)
    return out


def describe_time(minutes: np.ndarray, ms_per_step: np.ndarray) -> tuple[dict, dict]:
    train = {
        "mean": float(np.mean(minutes)),
        "std": float(np.std(minutes, ddof=1)) if len(minutes) > 1 else None,
        "ci99": _interval(minutes),
    }
    per_step = {"mean": float(np.mean(ms_per_step)), "ci99": _interval(ms_per_step)}
    return train, per_step


def bootstrap_pvalues(x: np.ndarray, target: float, size: int, samples: int, seed: int) -> np.ndarray:
    """One-sided t-test p-values of `samples` resamples (with replacement) of `size` runs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(samples, size))
    resamples = x[idx]
    with _quiet():
        p = stats.ttest_1samp(resamples, target, axis=1, alternative="less").pvalue
    # A resample of one repeated run has no variance: rounding in its mean would decide its t statistic,
    # so decide it directly (certainly below the target, or no evidence).
    constant = np.ptp(resamples, axis=1) == 0
    p[constant] = np.where(resamples[constant, 0] < target, 0.0, 1.0)
    return p


def power_table(x: np.ndarray, target: float, samples: int, seed: int) -> dict:
    """Pass probability of a batch of n runs, treating the observed runs as the population.

    Every n reuses the same seed, so the entry for the --sample-size batch equals the bootstrap
    section, and neighbouring n share random numbers, which keeps the curve smooth.
    """
    table = [
        {"n": n, "frac_below_0_01": float(np.mean(bootstrap_pvalues(x, target, n, samples, seed) < ALPHA))}
        for n in POWER_GRID
    ]
    enough = [row["n"] for row in table if row["frac_below_0_01"] >= POWER_GOAL]
    return {
        "samples": samples,
        "seed": seed,
        "goal": POWER_GOAL,
        "table": table,
        "min_n_90": enough[0] if enough else None,
    }


def welch(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a minus mean of b, with Welch's two-sided p-value and 99% interval."""
    with _quiet():
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(CONFIDENCE)
    return {
        "diff": float(np.mean(a) - np.mean(b)),
        "ci99": [_float(ci.low), _float(ci.high)],
        "pvalue": _float(res.pvalue),
    }


def _arrays(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    loss = np.array([r.final_val_loss for r in runs])
    ms = np.array([r.train_time_ms for r in runs])
    steps = np.array([r.num_iterations for r in runs])
    return loss, ms / MS_PER_MINUTE, ms / steps


def _steps(runs: list[Run]) -> int | list[int]:
    distinct = sorted({r.num_iterations for r in runs})
    return distinct[0] if len(distinct) == 1 else distinct


def few_runs_note(n: int) -> str | None:
    """The warning that goes with every output of a batch too small to decide on, or None."""
    if n >= FEW_RUNS:
        return None
    return (
        f"only {_runs(n)}: with fewer than {FEW_RUNS} the {CONFIDENCE_TEXT} intervals and p-values, and all that is "
        "resampled from the runs, mean little (a time interval may even reach below zero); run more before deciding"
    )


def time_interval_shown(ci: list[float] | None) -> bool:
    """An interval of a time is printed only when there is one and it stays at or above zero: one reaching
    below zero (a handful of runs with a wide spread) says nothing about a duration."""
    return ci is not None and ci[0] >= 0


def _describe_set(loaded: Loaded, target: float) -> dict:
    loss, minutes, per_step = _arrays(loaded.runs)
    train, step = describe_time(minutes, per_step)
    n = len(loaded.runs)
    return {
        "n": n,
        "skipped": len(loaded.skips),
        "few_runs": n < FEW_RUNS,
        "note": few_runs_note(n),
        "val_loss": describe_val_loss(loss, target),
        "train_time_min": train,
        "ms_per_step": step,
        "steps": _steps(loaded.runs),
        "runs": [
            {
                "file": str(r.file),
                "final_val_loss": r.final_val_loss,
                "train_time_ms": r.train_time_ms,
                "steps": r.num_iterations,
            }
            for r in loaded.runs
        ],
        "skipped_files": [{"file": str(s.file), "reason": s.reason} for s in loaded.skips],
    }


def analyse(
    loaded: Loaded,
    target: float,
    samples: int,
    size: int,
    seed: int,
    baseline: Loaded | None = None,
    target_source: str = "given",
) -> tuple[dict, np.ndarray]:
    """The report (as written by --json) and the bootstrap p-values behind it."""
    described = _describe_set(loaded, target)
    loss = _arrays(loaded.runs)[0]
    report = {key: described[key] for key in ("n", "skipped", "few_runs", "note")}
    report = {"format": REPORT_FORMAT, **report, "target": target, "target_source": target_source}
    report["kind"] = cli.kind_of([loaded])
    report["val_loss"] = described["val_loss"]
    # The optimization track's own per-batch rule, beside the t-test, for that track's logs only.
    track = report["kind"] == OPTIMIZATION
    report["track_rule"] = tracks.batch_rule(float(np.mean(loss)), len(loss), target) if track else None
    pvalues = np.array([])
    boot = {
        "samples": samples,
        "size": size,
        "seed": seed,
        "mean_p": None,
        "max_p": None,
        "var_p": None,
        "frac_below_0_01": None,
    }
    if len(loss) > 1:
        pvalues = bootstrap_pvalues(loss, target, size, samples, seed)
        boot.update(
            mean_p=float(np.mean(pvalues)),
            max_p=float(np.max(pvalues)),
            var_p=float(np.var(pvalues)),
            frac_below_0_01=float(np.mean(pvalues < ALPHA)),
        )
    report["bootstrap"] = boot
    for key in ("train_time_min", "ms_per_step", "steps"):
        report[key] = described[key]
    report["power"] = power_table(loss, target, samples, seed) if len(loss) > 1 else None
    report["runs"] = described["runs"]
    report["skipped_files"] = described["skipped_files"]
    if baseline is not None:
        report["baseline"] = _describe_set(baseline, target)
        if len(loaded.runs) > 1 and len(baseline.runs) > 1:
            base_loss, base_min, _ = _arrays(baseline.runs)
            _, minutes, _ = _arrays(loaded.runs)
            report["comparison"] = {"val_loss": welch(loss, base_loss), "train_time_min": welch(minutes, base_min)}
        else:
            report["comparison"] = None
    return report, pvalues


# ------------------------------------------------------------------------------------- rendering


def format_p(p: float | None) -> str:
    # The speedrun prints six decimals; tiny p-values keep their magnitude instead of reading 0.
    if p is None:
        return "undefined (no variation)"
    return f"{p:.6f}" if p == 0 or p >= 1e-6 else f"{p:.2e}"


def _num(x: float | None, spec: str) -> str:
    return "undefined" if x is None else format(x, spec)


def track_rule_line(rule: dict, target: float, n: int) -> str:
    verdict = "passes" if rule["passes"] else "does not pass"
    return (
        f"optimization track rule: ({target:g} - mean) * sqrt({n}) = {rule['statistic']:.5f}, "
        f"{'>=' if rule['passes'] else '<'} {rule['margin']:g}: {verdict} (one-sided z-test, sigma {rule['sigma']:g} "
        "assumed by the track, p < 0.001)"
    )


def _track_lines(report: dict) -> list[str]:
    rule = report["track_rule"]
    return [] if rule is None else [track_rule_line(rule, report["target"], report["n"])]


def _too_few(n: int) -> str:
    return f"(std, {CONFIDENCE_TEXT} intervals and t-tests need at least 2 runs; there {'is' if n == 1 else 'are'} {n})"


def render_text(report: dict) -> str:
    v, b, t, s = report["val_loss"], report["bootstrap"], report["train_time_min"], report["ms_per_step"]
    n = report["n"]
    lines = [f"Processed {_runs(n)} ({report['skipped']} skipped)."]
    if n > 1 and report["note"]:  # a single run gets its own line below
        lines.append(f"note: {report['note']}.")
    lines += ["--- Val Loss Stats ---", f"mean: \t{v['mean']:.6f}"]
    if n > 1:
        lo, hi = v["ci99"]
        lines += [
            f"std:  \t{v['std']:.6f}",
            f"val loss {CONFIDENCE_TEXT} confidence interval: ({lo:.6f} - {hi:.6f})",
            f"val_loss t-test p={format_p(v['pvalue'])} (small means <{report['target']:g})",
            *_track_lines(report),
            "",
            f"--- Bootstrap p-value analysis ({b['samples']} samples of size {b['size']} each) ---",
            f"Mean p-value: {b['mean_p']:.6f}",
            f"Max p-value: {b['max_p']:.6f}",
            f"Variance of p-values: {b['var_p']:.6f}",
            f"Percentage of p-values below {ALPHA_TEXT}: {100 * b['frac_below_0_01']:.2f}%",
            "",
            "--- Training Time Stats ---",
            f"train time (minutes): mean={t['mean']:.4f}, std={t['std']:.4f}",
            f"train time {CONFIDENCE_TEXT} confidence interval: {_time_interval(t['ci99'], n)}",
            _ms_line(s, n),
        ]
        lines += _render_power(report["power"], n)
    else:
        lines += [
            *_track_lines(report),
            _too_few(n),
            "",
            "--- Training Time Stats ---",
            f"train time (minutes): mean={t['mean']:.4f}",
            f"avg ms per iteration: {s['mean']:.4f}",
        ]
    if "baseline" in report:
        lines += _render_baseline(report)
    lines += ["", f"target {report['target']:g}: {report['target_source']}"]
    if report.get("at_step") is not None:
        lines.append(f"every run's val loss at step {report['at_step']} (--at-step), not at its last step")
    return "\n".join(lines) + "\n"


def _time_interval(ci: list[float], n: int) -> str:
    if time_interval_shown(ci):
        return "({:.4f} - {:.4f})".format(*ci)
    return f"not shown: with {_runs(n)} it reaches below zero"


def _ms_line(s: dict, n: int) -> str:
    interval = _time_interval(s["ci99"], n)
    return f"avg ms per iteration: {s['mean']:.4f}. {CONFIDENCE_TEXT} confidence interval: {interval}"


def _render_power(power: dict, n: int) -> list[str]:
    table = {row["n"]: row["frac_below_0_01"] for row in power["table"]}
    lines = [
        "",
        f"--- Power planning (bootstrap from the {n} observed runs, {power['samples']} samples per size) ---",
        f"runs  P(p < {ALPHA_TEXT})",
    ]
    lines += [f"{k:>4}  {100 * table[k]:>10.2f}%" for k in POWER_SHOWN]
    found = f"{power['min_n_90']} runs" if power["min_n_90"] is not None else f"more than {POWER_GRID[-1]} runs"
    lines.append(
        f"smallest n (multiple of {POWER_GRID[0]}, up to {POWER_GRID[-1]}) "
        f"with P(p < {ALPHA_TEXT}) >= {POWER_GOAL:.0%}: {found}"
    )
    return lines


def _render_baseline(report: dict) -> list[str]:
    base = report["baseline"]
    v, t, s = base["val_loss"], base["train_time_min"], base["ms_per_step"]
    lines = ["", f"--- Baseline: {_runs(base['n'])} ({base['skipped']} skipped) ---"]
    if base["n"] > 1:
        if base["note"]:
            lines.append(f"note: {base['note']}.")
        lines += [
            "val loss: mean={:.6f}, std={:.6f}, {} confidence interval: ({:.6f} - {:.6f})".format(
                v["mean"], v["std"], CONFIDENCE_TEXT, *v["ci99"]
            ),
            f"val_loss t-test p={format_p(v['pvalue'])} (small means <{report['target']:g})",
            f"train time (minutes): mean={t['mean']:.4f}, std={t['std']:.4f}, "
            f"{CONFIDENCE_TEXT} confidence interval: {_time_interval(t['ci99'], base['n'])}",
            _ms_line(s, base["n"]),
        ]
    else:
        lines += [
            f"val loss: mean={v['mean']:.6f}",
            f"train time (minutes): mean={t['mean']:.4f}",
            f"avg ms per iteration: {s['mean']:.4f}",
        ]
    lines += ["", "--- Comparison (submission minus baseline; Welch t-test, two-sided) ---"]
    comp = report["comparison"]
    if comp is None:
        lines.append(f"needs at least 2 runs on each side (submission {report['n']}, baseline {base['n']})")
        return lines
    for label, c, spec in [
        ("val loss difference", comp["val_loss"], "+.6f"),
        ("train time difference (minutes)", comp["train_time_min"], "+.4f"),
    ]:
        lo, hi = (_num(x, spec) for x in c["ci99"])
        lines.append(
            f"{label}: {c['diff']:{spec}}, {CONFIDENCE_TEXT} confidence interval: {lo} to {hi}, "
            f"p={format_p(c['pvalue'])}"
        )
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _rel(file: str, folder: Path) -> str:
    return Path(os.path.relpath(Path(file).resolve(), folder.resolve())).as_posix()


def render_markdown(report: dict, markdown_path: Path, plot_path: Path | None, command: str) -> str:
    folder = markdown_path.parent
    v, t, s, n = report["val_loss"], report["train_time_min"], report["ms_per_step"], report["n"]
    power = {row["n"]: row["frac_below_0_01"] for row in report["power"]["table"]} if report["power"] else {}
    passing = f"{100 * power[DEFAULT_SAMPLE_SIZE]:.1f}%" if DEFAULT_SAMPLE_SIZE in power else "n/a"
    p = format_p(v["pvalue"]) if v["pvalue"] is not None else "n/a"
    lines = [
        "## Evidence",
        "",
        f"Made with `{command}`.",
        "",
        f"| runs | mean val loss | p (mean < {report['target']:g}) | P(p < {ALPHA_TEXT}) at {DEFAULT_SAMPLE_SIZE} runs "
        "| mean time (min) | ms/step |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {n} ({report['skipped']} skipped) | {v['mean']:.6f} | {p} | {passing} "
        f"| {t['mean']:.4f} | {s['mean']:.2f} |",
        "",
    ]
    for who, note in (("", report["note"]), ("Baseline: ", report.get("baseline", {}).get("note"))):
        if note:
            lines += [f"> **Note:** {who}{note}.", ""]
    if plot_path is not None:
        lines += [f"![val loss, final losses and bootstrap p-values]({_rel(str(plot_path), folder)})", ""]
    lines += ["```text", render_text(report).rstrip("\n"), "```", ""]
    lines += _md_runs("Runs", report, folder)
    if "baseline" in report:
        lines += _md_runs("Baseline runs", report["baseline"], folder)
    return "\n".join(lines)


def _md_runs(title: str, described: dict, folder: Path) -> list[str]:
    lines = [f"### {title}", "", "| file | final val loss | train time (min) |", "|---|---:|---:|"]
    for r in described["runs"]:
        rel = _md(_rel(r["file"], folder))
        lines.append(f"| [{rel}]({rel}) | {r['final_val_loss']:.6f} | {r['train_time_ms'] / MS_PER_MINUTE:.4f} |")
    lines.append("")
    if described["skipped_files"]:
        lines += [f"Skipped ({len(described['skipped_files'])}):", ""]
        lines += [f"- `{_rel(s['file'], folder)}`: {_md(s['reason'])}" for s in described["skipped_files"]]
        lines.append("")
    return lines


def final_loss_bins(values: np.ndarray, single_width: float) -> np.ndarray:
    """Histogram edges from the values' own spread, so that distinct values show as distinct bars.

    The width is numpy's "auto" width of the values alone: stretching the range to reach the target put
    small batches into one bar. The bins are centred on the lowest value, so values at least one width
    apart never share a bin, and two values (width = half their distance) get two bars with an empty bin
    between them instead of two touching bars that read as one. All values equal: one bin of
    `single_width` (numpy would make it 1.0 wide). The rug under the histogram shows every run anyway.
    """
    distinct = np.unique(values)
    if len(distinct) == 1:
        return distinct[0] + np.array([-0.5, 0.5]) * single_width
    spread = distinct[-1] - distinct[0]
    width = np.diff(np.histogram_bin_edges(values, bins="auto"))[0]
    count = int(np.floor(spread / width + 0.5)) + 1
    return distinct[0] + width * (np.arange(count + 1) - 0.5)


def degenerate_pvalues_text(pvalues: np.ndarray) -> str | None:
    """What to write in the bootstrap panel when every p-value is the same (a histogram would be empty)."""
    if not len(pvalues) or np.ptp(pvalues) > 0:
        return None
    p = float(pvalues[0])
    verdict = "every sample passes" if p < ALPHA else "no sample passes"
    return f"all {len(pvalues)} bootstrap p-values are {p:g}:\n{verdict} (p < {ALPHA_TEXT})"


def _interval_span(ax, ci_lo: float, ci_hi: float, x_lo: float, x_hi: float) -> None:
    """Shade the interval of the mean within the axis; an end beyond the axis is cut there, marked with an
    arrow at the edge, and the legend gives the whole interval, so a clipped span never reads as the interval."""
    label = f"{CONFIDENCE_TEXT} interval of the mean"
    clipped = ci_lo < x_lo or ci_hi > x_hi
    if clipped:
        label += f" ({ci_lo:.6g} to {ci_hi:.6g}), clipped at the axis (arrows)"
    ax.axvspan(max(ci_lo, x_lo), min(ci_hi, x_hi), color="C1", alpha=0.25, zorder=0, label=label)
    edge = ax.get_xaxis_transform()
    for beyond, x, marker in ((ci_lo < x_lo, x_lo, "<"), (ci_hi > x_hi, x_hi, ">")):
        if beyond:
            ax.plot([x], [0.5], marker=marker, color="C1", ms=12, transform=edge, clip_on=False, ls="none")


def figure(report: dict, runs: list[Run], pvalues: np.ndarray, baseline: list[Run] | None):
    """The --plot figure: val loss curves, a zoom on the end when some run gets near the target, the final
    losses (histogram and one tick per run) and the bootstrap p-values."""
    Figure = cli.import_figure()
    target = report["target"]
    limit = target + ZOOM_ABOVE_TARGET
    sets = [(baseline or [], dict(color="0.6", lw=0.7, alpha=0.5)), (runs, dict(color="C0", lw=0.7, alpha=0.5))]
    # The whole curves span ~11 down to the target: the zoom shows the end, where runs differ. It is its own
    # panel (an inset covers the curves of small or slow batches) and only there when it has points.
    zoomed = any(np.any(r.curve[:, 1] <= limit) for group, _ in sets for r in group)
    # One run has no bootstrap: no panel for it rather than an empty one (the final-loss title says why).
    booted = len(pvalues) > 0
    count = 2 + zoomed + booted
    fig = Figure(figsize=(PANEL_WIDTH * count, PANEL_HEIGHT), layout="constrained")
    axes = list(fig.subplots(1, count))
    curves, zoom = axes[0], axes[1] if zoomed else None
    finals = axes[1 + zoomed]

    for group, style in sets:
        for r in group:
            marker = "." if len(r.curve) == 1 else None
            curves.plot(r.curve[:, 0] / MS_PER_MINUTE, r.curve[:, 1], marker=marker, **style)
            late = r.curve[r.curve[:, 1] <= limit]
            if zoom is not None and len(late):
                zoom.plot(late[:, 0] / MS_PER_MINUTE, late[:, 1], marker="." if len(late) == 1 else None, **style)
    # The target line would squash the curves of runs far from it (CPU toy runs): it is drawn when some run
    # gets near it, or when it lies within the curves' range anyway.
    losses = np.concatenate([r.curve[:, 1] for group, _ in sets for r in group])
    losses = losses[np.isfinite(losses)]
    show_target = zoomed or (len(losses) > 0 and losses.min() <= target <= losses.max())
    for ax in [curves] + ([zoom] if zoom is not None else []):
        if show_target:
            ax.axhline(target, color="C3", ls="--", lw=1, label=f"target {target:g}")
        ax.set(xlabel="training time (min)", ylabel="val loss")
    title = "Val loss of every run" + (" (grey: baseline)" if baseline else "")
    if not zoomed:
        title += f"\nnone below {limit:g}, so no zoom panel" + ("" if show_target else f" (target {target:g})")
    curves.set_title(title)
    if show_target:
        curves.legend(loc="upper right")
    if zoom is not None:
        zoom.set_title(f"Zoom: val loss below {limit:g}")

    loss = np.array([r.final_val_loss for r in runs])
    base_loss = np.array([r.final_val_loss for r in baseline or []])
    every = np.concatenate([loss, base_loss])
    lo, hi = float(every.min()), float(every.max())
    if abs(target - np.clip(target, lo, hi)) <= ZOOM_ABOVE_TARGET:  # the target is near enough to show
        lo, hi = min(lo, target), max(hi, target)
    span = max(hi - lo, FINALS_MIN_SPAN)
    bins = final_loss_bins(every, span * SINGLE_BIN_FRACTION)
    x_lo, x_hi = lo - span * FINALS_PAD, hi + span * FINALS_PAD
    if report["val_loss"]["ci99"] is not None:
        _interval_span(finals, *report["val_loss"]["ci99"], x_lo, x_hi)
    if len(base_loss):
        finals.hist(base_loss, bins=bins, color="0.6", alpha=0.6, ec="white", lw=0.5, label="baseline")
    finals.hist(loss, bins=bins, color="C0", alpha=0.7, ec="white", lw=0.5, label="runs")
    # A tick per run along the bottom (a rug): identical or close values that share a bar still show apart.
    rug = finals.get_xaxis_transform()
    if len(base_loss):
        finals.plot(base_loss, np.full(len(base_loss), RUG_Y), "|", color="0.4", ms=14, transform=rug)
    finals.plot(loss, np.full(len(loss), RUG_Y), "|", color="C0", ms=14, mew=1.5, transform=rug, label="one run")
    if lo <= target <= hi:
        finals.axvline(target, color="C3", ls="--", lw=1.5, label=f"target {target:g}")
    finals.set_xlim(x_lo, x_hi)
    title = f"Final val loss ({_runs(len(loss))})" + ("" if lo <= target <= hi else f"\ntarget {target:g} off the axis")
    if not booted:
        title += "\nno bootstrap panel: resampling needs at least 2 runs"
    finals.set(xlabel="final val loss", ylabel="runs", title=title)
    finals.legend(fontsize="small")

    if booted:
        _bootstrap_panel(axes[-1], report, runs, pvalues)
    return fig


def _bootstrap_panel(boot, report: dict, runs: list[Run], pvalues: np.ndarray) -> None:
    b = report["bootstrap"]
    degenerate = degenerate_pvalues_text(pvalues)
    if degenerate is not None:
        boot.text(0.5, 0.5, degenerate, ha="center", va="center", transform=boot.transAxes)
        boot.set_title(f"Bootstrap p-values ({b['samples']} samples of {b['size']} runs)")
        boot.set(xticks=[], yticks=[])
    else:
        floor = 1e-16  # p-values of 0 (zero-variance resamples) are drawn at the left edge
        clipped = np.clip(pvalues, floor, 1)
        boot.hist(clipped, bins=np.logspace(np.log10(clipped.min()), 0, 40), color="C2")
        boot.set_xscale("log")
        boot.axvline(ALPHA, color="C3", ls="--", lw=1.5, label=f"p = {ALPHA_TEXT}")
        boot.set_title(
            f"Bootstrap p-values ({b['samples']} samples of {b['size']} runs): "
            f"{100 * b['frac_below_0_01']:.1f}% < {ALPHA_TEXT}"
        )
        boot.legend()
    if report["note"]:
        boot.set_title(f"{boot.get_title()}\nonly {_runs(len(runs))}: these figures mean little")
    boot.set(xlabel="p-value", ylabel="samples")


def plot(path: Path, report: dict, runs: list[Run], pvalues: np.ndarray, baseline: list[Run] | None):
    """Write the figure to `path` and return it (tests read its axes)."""
    fig = figure(report, runs, pvalues, baseline)
    cli.save_figure(fig, path, FIGURE_DPI)
    return fig


# ------------------------------------------------------------------------------------------ CLI


def _sample_size(text: str) -> int:
    value = cli.whole(1, "a positive")(text)
    if value < 2:
        raise argparse.ArgumentTypeError("a t-test needs samples of at least 2 runs")
    return value


def parse_args(argv: list[str] | None):
    parser = cli.Parser(
        prog="evidence.py",
        description="Statistics of speedrun runs: is the mean final val loss below the target (p < 0.01), "
        "how often would a batch of runs pass, and how long do runs take.",
        epilog="Paths are run logs (ours, the public speedrun's of every track), JSON summaries written by "
        "train_gpt.py, or folders searched recursively for both; a log and its summary count as one run. Give "
        "--baseline after the submission's paths.",
    )
    parser.add_argument("paths", nargs="+", help="logs, summaries or folders of the submission")
    parser.add_argument(
        "--target",
        type=cli.number(),
        help="val loss to beat (default: 2.92 for our runs and the medium track, 3.28 for the optimization track)",
    )
    parser.add_argument(
        "--bootstrap",
        type=cli.whole(1, "a positive"),
        default=DEFAULT_BOOTSTRAP,
        help="bootstrap samples (default %(default)s)",
    )
    parser.add_argument(
        "--sample-size",
        type=_sample_size,
        default=DEFAULT_SAMPLE_SIZE,
        help="runs per bootstrap sample (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=cli.whole(0, "a non-negative"), default=0, help="seed of the bootstrap (default %(default)s)"
    )
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="PATH",
        help="runs to compare with, e.g. the previous record re-run on the same machine",
    )
    cli.add_at_step(parser)
    cli.add_output_options(
        parser, "write a README section for the submission to FILE", "write a figure of the runs to FILE.png"
    )
    return parser.parse_args(argv)


def report_folder(args, argv: list[str] | None) -> str:
    """The whole tool on parsed options: the text (or JSON) to print; --markdown and --plot written."""
    cli.check_outputs(args.markdown, args.plot, args.force)
    loaded = cli.load_checked(args.paths, "submission", args.at_step)
    baseline = cli.load_checked(args.baseline, "baseline", args.at_step) if args.baseline else None
    target, source = cli.resolve_target(args.target, [loaded] + ([baseline] if baseline else []))
    report, pvalues = analyse(loaded, target, args.bootstrap, args.sample_size, args.seed, baseline, source)
    report["at_step"] = args.at_step
    if args.plot is not None:
        plot(args.plot, report, loaded.runs, pvalues, baseline.runs if baseline else None)
    if args.markdown is not None:
        command = " ".join(["python records/evidence.py", *(argv if argv is not None else sys.argv[1:])])
        cli.write_text(args.markdown, render_markdown(report, args.markdown, args.plot, command))
    return json.dumps(report, indent=2) + "\n" if args.json else render_text(report)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A batch of records/batch.py is decided by its pre-registered sequential test (records/batch_evidence.py).
    from records import batch_evidence

    return cli.run(lambda: batch_evidence.amend(args.paths, report_folder(args, argv), args.json))


if __name__ == "__main__":
    sys.exit(main())
