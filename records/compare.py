"""Compare batches of runs, typically one optimizer or configuration per folder.

    python records/compare.py runs/muon runs/adam runs/soap
    python records/compare.py runs/muon runs/adam --markdown cmp.md --plot cmp.png --json

For every batch: runs and skipped runs, steps, the final val loss (mean, 99% t-interval, one-sided p
against the target), training time and ms per step, peak memory, and the step at which the batch's mean
val curve reaches the target. For every pair of batches: the differences of final loss and of time
(Welch). For the public optimization track's logs, that track's published rules: per batch
(target - mean) * sqrt(n) >= 0.004, per pair the step-adjusted score with its slope of 0.0045 per 100
steps. For other logs a step-adjusted comparison only with a slope given (--slope) or fitted outside the
cooldown (--fit-slope). Runs are read by records/logs.py. See records/README.md for every column.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from scipy import stats

if __package__ in (None, ""):  # run as a script (python records/compare.py): make `records` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from records import cli, evidence, logs, tracks  # noqa: E402
from records.cli import runs_text  # noqa: E402
from records.evidence import ALPHA, ALPHA_TEXT, CONFIDENCE, CONFIDENCE_TEXT, MS_PER_MINUTE  # noqa: E402
from records.logs import OPTIMIZATION, ToolError  # noqa: E402

REPORT_FORMAT = logs.COMPARE_FORMAT
OPTIMIZER_KEY = "matrix_optimizer"  # the hyperparameter shown beside a batch's name when its runs share it
DRIFT_ORDER = ("embed", "head", "attention", "mlp", "scalars")  # panel order of the weight-drift groups

# Plot: the loss panels zoom on [target - a bit, target + ZOOM_SPAN] when some run gets within ZOOM_SPAN
# of the target, else they show the data range (CPU toy runs end far above it). WINDOW_PAD widens either
# range by this fraction on both sides.
ZOOM_SPAN = 0.25
WINDOW_PAD = 0.05
FIGURE_WIDTH, ROW_HEIGHT = 14.0, 4.3  # inches; 2 rows, 4 with weight drift
FIGURE_DPI = evidence.FIGURE_DPI


@dataclasses.dataclass
class Batch:
    folder: Path
    name: str
    loaded: logs.Loaded

    @property
    def optimizer(self) -> str | None:
        values = {r.hyperparameters.get(OPTIMIZER_KEY) for r in self.loaded.runs}
        value = values.pop() if len(values) == 1 else None
        return value if isinstance(value, str) and value else None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.optimizer})" if self.optimizer else self.name


# ------------------------------------------------------------------------------------ statistics


def mean_curve(runs: list[logs.Run]) -> dict:
    """Mean, std, min and max over runs of the val loss, and the mean train time, at every validation step
    that all runs share (a step only some runs validated at would mix different sets of runs)."""
    shared = set(runs[0].val_steps.tolist())
    for r in runs[1:]:
        shared &= set(r.val_steps.tolist())
    steps = sorted(shared)
    loss = np.empty((len(runs), len(steps)))
    time = np.empty_like(loss)
    for i, r in enumerate(runs):
        row = _by_step(r.val_steps, range(len(r.val_steps)))
        idx = [row[s] for s in steps]
        loss[i], time[i] = r.curve[idx, 1], r.curve[idx, 0]
    few = len(runs) < 2
    return {
        "step": steps,
        "val_loss_mean": loss.mean(axis=0).tolist(),
        "val_loss_std": None if few else loss.std(axis=0, ddof=1).tolist(),
        "val_loss_min": loss.min(axis=0).tolist(),
        "val_loss_max": loss.max(axis=0).tolist(),
        "train_time_ms_mean": time.mean(axis=0).tolist(),
    }


def _by_step(steps: np.ndarray, values) -> dict:
    """{step: value}; a step logged twice counts once, at its first validation."""
    out = {}
    for s, v in zip(steps.tolist(), values):
        out.setdefault(s, v)
    return out


def target_crossing(steps, loss, time_ms, target: float) -> tuple[float | None, float | None]:
    """Step and train time (ms) at which the curve first reaches the target, interpolated linearly between
    the last validation above it and the first at or below it; (None, None) when it never does."""
    loss = np.asarray(loss, dtype=float)
    below = np.flatnonzero(loss <= target)
    if not len(below):
        return None, None
    i = below[0]
    if i == 0:
        return float(steps[0]), float(time_ms[0])
    frac = (loss[i - 1] - target) / (loss[i - 1] - loss[i])
    return (
        float(steps[i - 1] + frac * (steps[i] - steps[i - 1])),
        float(time_ms[i - 1] + frac * (time_ms[i] - time_ms[i - 1])),
    )


def drift_curves(runs: list[logs.Run], steps: list[int]) -> dict | None:
    """Per parameter group, the mean over runs of ||w - w0|| / ||w0|| and cos(w, w0) at every shared step
    where every run reports that group; None when no run carries weight-drift diagnostics."""
    if not any(r.weight_drift for r in runs):
        return None
    at = [_by_step(r.val_steps, r.weight_drift) for r in runs]
    groups = sorted({g for r in runs for d in r.weight_drift if d for g in d}, key=_drift_rank)
    out = {}
    for group in groups:
        points = {"step": [], **{key: [] for key in logs.DRIFT_KEYS}}
        for s in steps:
            values = [(a.get(s) or {}).get(group) for a in at]
            if any(v is None for v in values):
                continue
            points["step"].append(s)
            for key in logs.DRIFT_KEYS:
                points[key].append(float(np.mean([v[key] for v in values])))
        if points["step"]:
            out[group] = points
    return out or None


def _drift_rank(group: str) -> tuple[int, str]:
    return (DRIFT_ORDER.index(group) if group in DRIFT_ORDER else len(DRIFT_ORDER), group)


def fitted_slope(curves: list[tuple[list, list]], start: float, end: float) -> dict | None:
    """Loss lost per step removed, fitted where the learning rate does not cool down: minus the least-squares
    slope of val loss against step over the validations in [start, end] of each mean curve, one common
    slope with an intercept per curve (the pooled within-curve slope), with its 99% t-interval from the
    residuals. None without two points in the range on any curve; the interval None without residual
    degrees of freedom. Validations of one curve are not independent samples, so the interval is a lower
    bound on the slope's real uncertainty."""
    pieces = []
    for steps, loss in curves:
        x, y = np.asarray(steps, dtype=float), np.asarray(loss, dtype=float)
        keep = (x >= start) & (x <= end)
        if keep.sum() >= 2:
            pieces.append((x[keep] - x[keep].mean(), y[keep] - y[keep].mean()))
    den = sum(float(dx @ dx) for dx, _ in pieces)
    if den == 0:
        return None
    raw = sum(float(dx @ dy) for dx, dy in pieces) / den
    dof = sum(len(dx) for dx, _ in pieces) - len(pieces) - 1
    ci = None
    if dof > 0:
        rss = sum(float(np.sum((dy - raw * dx) ** 2)) for dx, dy in pieces)
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, dof) * math.sqrt(rss / dof / den)
        ci = [-raw - half, -raw + half]
    return {"slope": -raw, "ci99": ci, "points": sum(len(dx) for dx, _ in pieces), "steps": [start, end]}


def _slope_for(a: dict, b: dict, given: float | None, fit: tuple[float, float] | None, track: bool) -> dict:
    """The slope of a pair: given, fitted (--fit-slope), the optimization track's published one for that
    track's logs, or none."""
    if given is not None:
        return {"slope": given, "source": "given", "ci99": None}
    if fit is not None:
        curves = [(d["mean_curve"]["step"], d["mean_curve"]["val_loss_mean"]) for d in (a, b)]
        found = fitted_slope(curves, *fit)
        if found is None:
            return {"slope": None, "source": f"fitted over steps {fit[0]:g}-{fit[1]:g}", "ci99": None}
        return {"slope": found["slope"], "source": f"fitted over steps {fit[0]:g}-{fit[1]:g}", "ci99": found["ci99"]}
    if track:
        return {"slope": tracks.SLOPE, "source": "published", "ci99": None}
    return {"slope": None, "source": None, "ci99": None}


def step_adjusted(a: dict, b: dict, slope: dict, threshold: float, track: bool, losses) -> dict:
    """Step counts folded into the loss comparison.

    With slope = loss lost per step removed (> 0 while the loss still falls), A's loss had it stopped at
    B's step count is about loss_A + (steps_A - steps_B) * slope: a batch that ran MORE steps is adjusted
    UP. adjusted = that minus loss_B, > 0 when B is better at equal steps.

    Optimization-track logs: the track's score = adjusted / sqrt(1/n_A + 1/n_B) against the margin (its
    sigma is assumed, so one run per batch is enough). Other logs: Welch's test of A's shifted losses
    against B's, which estimates the spread from the runs and so needs 2 runs per batch.
    """
    steps_diff = a["steps_mean"] - b["steps_mean"]
    out = {
        "steps_diff": steps_diff,
        "slope": slope["slope"],
        "slope_source": slope["source"],
        "slope_ci99": slope["ci99"],
        "rule": "optimization track" if track else "welch",
        "threshold": threshold if track else None,
        "adjusted_diff": None,
        "score": None,
        "verdict": None,
        "welch": None,
        "note": None,
    }
    if steps_diff != 0 and slope["slope"] is None:
        out["note"] = (
            "steps differ and no slope: give --slope, or --fit-slope START:END outside the cooldown"
            if slope["source"] is None
            else "too few validations in the --fit-slope range"
        )
        return out
    shift = steps_diff * slope["slope"] if steps_diff != 0 else 0.0
    loss_a, loss_b = losses
    adjusted = a["val_loss"]["mean"] - b["val_loss"]["mean"] + shift
    out["adjusted_diff"] = adjusted
    both = min(len(loss_a), len(loss_b)) > 1
    if both:
        out["welch"] = evidence.welch(loss_a + shift, loss_b)
    if track:
        used = slope["slope"] if steps_diff != 0 else 0.0
        means = (a["val_loss"]["mean"], b["val_loss"]["mean"], a["steps_mean"], b["steps_mean"])
        score = tracks.pairwise_score(*means, a["n"], b["n"], used)
        out["score"] = score
        out["verdict"] = _verdict(a, b, score >= threshold, score <= -threshold)
    elif not both:
        out["note"] = "Welch's test needs at least 2 runs in each batch (one run shows no spread): no verdict"
    elif out["welch"]["pvalue"] is None:
        out["note"] = "no variation in either batch: Welch's test is undefined"
    else:
        significant = out["welch"]["pvalue"] < ALPHA
        out["verdict"] = _verdict(a, b, significant and adjusted > 0, significant and adjusted < 0)
    return out


def _verdict(a: dict, b: dict, b_better: bool, a_better: bool) -> str:
    return f"{b['label']} better" if b_better else f"{a['label']} better" if a_better else "no significant difference"


def describe_batch(batch: Batch, target: float) -> dict:
    runs = batch.loaded.runs
    loss = np.array([r.final_val_loss for r in runs])
    ms = np.array([r.train_time_ms for r in runs])
    steps = np.array([r.num_iterations for r in runs])
    train, per_step = evidence.describe_time(ms / MS_PER_MINUTE, ms / steps)
    curve = mean_curve(runs)
    cross_step, cross_ms = target_crossing(curve["step"], curve["val_loss_mean"], curve["train_time_ms_mean"], target)
    memory = [r.peak_memory_mib for r in runs if r.peak_memory_mib is not None]
    skipped: dict[str, int] = {}
    for s in batch.loaded.skips:
        skipped[s.kind] = skipped.get(s.kind, 0) + 1
    distinct = sorted(set(steps.tolist()))
    return {
        "label": batch.label,
        "name": batch.name,
        "folder": str(batch.folder),
        OPTIMIZER_KEY: batch.optimizer,
        "n": len(runs),
        "skipped": len(batch.loaded.skips),
        "skipped_by_kind": dict(sorted(skipped.items())),
        "kind": cli.kind_of([batch.loaded]),
        "few_runs": len(runs) < evidence.FEW_RUNS,
        "note": evidence.few_runs_note(len(runs)),
        "steps": distinct[0] if len(distinct) == 1 else distinct,
        "steps_mean": float(steps.mean()),
        "val_loss": evidence.describe_val_loss(loss, target),
        "track_rule": tracks.batch_rule(float(loss.mean()), len(loss), target)
        if cli.kind_of([batch.loaded]) == OPTIMIZATION
        else None,
        "train_time_min": train,
        "ms_per_step": per_step,
        "peak_memory_allocated_mib": (
            {"mean": float(np.mean(memory)), "max": float(np.max(memory)), "runs": len(memory)} if memory else None
        ),
        "target_step": cross_step,
        "target_time_min": None if cross_ms is None else cross_ms / MS_PER_MINUTE,
        "mean_curve": curve,
        "weight_drift": drift_curves(runs, curve["step"]),
        "runs": [
            {
                "file": str(r.file),
                "final_val_loss": r.final_val_loss,
                "train_time_ms": r.train_time_ms,
                "steps": r.num_iterations,
                "peak_memory_allocated_mib": r.peak_memory_mib,
            }
            for r in runs
        ],
        "skipped_files": [{"file": str(s.file), "kind": s.kind, "reason": s.reason} for s in batch.loaded.skips],
    }


def compare(
    batches: list[Batch],
    target: float,
    slope: float | None = None,
    threshold: float | None = None,
    fit: tuple[float, float] | None = None,
    target_source: str = "given",
) -> dict:
    described = [describe_batch(b, target) for b in batches]
    # The optimization track's constants apply only when every batch is that track's logs.
    track = all(d["kind"] == OPTIMIZATION for d in described)
    margin = threshold if threshold is not None else tracks.MARGIN
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(described), 2):
        runs_a, runs_b = batches[i].loaded.runs, batches[j].loaded.runs
        loss_a = np.array([r.final_val_loss for r in runs_a])
        loss_b = np.array([r.final_val_loss for r in runs_b])
        min_a = np.array([r.train_time_ms for r in runs_a]) / MS_PER_MINUTE
        min_b = np.array([r.train_time_ms for r in runs_b]) / MS_PER_MINUTE
        both = min(len(runs_a), len(runs_b)) > 1
        used = _slope_for(a, b, slope, fit, track)
        pairs.append(
            {
                "a": a["label"],
                "b": b["label"],
                "val_loss": evidence.welch(loss_a, loss_b) if both else None,
                "train_time_min": evidence.welch(min_a, min_b) if both else None,
                "step_adjusted": step_adjusted(a, b, used, margin, track, (loss_a, loss_b)),
            }
        )
    return {
        "format": REPORT_FORMAT,
        "target": target,
        "target_source": target_source,
        "track_rules": track,
        "threshold": margin if track else None,
        "slope_given": slope,
        "fit_slope_steps": list(fit) if fit is not None else None,
        "batches": described,
        "pairs": pairs,
    }


# ------------------------------------------------------------------------------------- rendering


def _ci(ci: list[float] | None, spec: str) -> str:
    return "" if ci is None else f" [{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _time_ci(ci: list[float] | None, spec: str) -> str:
    if ci is None or evidence.time_interval_shown(ci):
        return _ci(ci, spec)
    return " [< 0: too few runs]"


def _skipped(b: dict) -> str:
    if not b["skipped"]:
        return "0"
    return f"{b['skipped']}: " + ", ".join(f"{k} {kind}" for kind, k in b["skipped_by_kind"].items())


def _steps(b: dict) -> str:
    s = b["steps"]
    return str(s) if isinstance(s, int) else f"{s[0]}-{s[-1]} (mixed)"


def _memory(b: dict) -> str:
    m = b["peak_memory_allocated_mib"]
    if m is None:
        return "n/a"
    return f"{m['mean']:.0f}" + ("" if m["runs"] == b["n"] else f" ({m['runs']} of {b['n']})")


def _reached(b: dict) -> str:
    if b["target_step"] is None:
        return "not reached"
    return f"{b['target_step']:.0f} ({b['target_time_min']:.2f} min)"


def _track_cell(b: dict) -> str:
    rule = b["track_rule"]
    if rule is None:
        return "n/a (not track logs)"
    return f"{rule['statistic']:.5f} {'pass' if rule['passes'] else 'fail'}"


def batch_table(report: dict) -> tuple[list[str], str, list[list[str]]]:
    target = report["target"]
    track = any(b["track_rule"] is not None for b in report["batches"])
    header = [
        "batch",
        "runs",
        "skipped",
        "steps",
        f"final val loss [{CONFIDENCE_TEXT} CI]",
        f"p(mean < {target:g})",
        *([f"({target:g} - mean) * sqrt(n) >= {tracks.MARGIN:g}"] if track else []),
        f"train time, min [{CONFIDENCE_TEXT} CI]",
        f"ms/step [{CONFIDENCE_TEXT} CI]",
        "peak MiB",
        f"{target:g} reached at step",
    ]
    rows = []
    for b in report["batches"]:
        v, t, s = b["val_loss"], b["train_time_min"], b["ms_per_step"]
        one = b["n"] < 2
        rows.append(
            [
                b["label"],
                f"{b['n']}{'*' if b['few_runs'] else ''}",
                _skipped(b),
                _steps(b),
                f"{v['mean']:.6f}" + (" [n/a: 1 run]" if one else _ci(v["ci99"], ".6f")),
                "n/a: 1 run" if one else evidence.format_p(v["pvalue"]),
                *([_track_cell(b)] if track else []),
                f"{t['mean']:.3f}{_time_ci(t['ci99'], '.3f')}",
                f"{s['mean']:.2f}{_time_ci(s['ci99'], '.2f')}",
                _memory(b),
                _reached(b),
            ]
        )
    return header, "lrlrrr" + ("r" if track else "") + "rrrr", rows


def _welch_cells(w: dict | None, spec: str) -> list[str]:
    if w is None:
        return ["n/a", "n/a"]
    return [f"{w['diff']:{spec}}", evidence.format_p(w["pvalue"])]


def _slope_cell(adj: dict) -> str:
    if adj["slope"] is None:
        return "n/a"
    ci = adj["slope_ci99"]
    interval = "" if ci is None else f" [{ci[0]:.3g}, {ci[1]:.3g}]"
    return f"{adj['slope']:.3g}{interval} ({adj['slope_source']})"


def pair_table(report: dict) -> tuple[list[str], str, list[list[str]]]:
    track = report["track_rules"]
    verdict = (
        f"verdict (track rule: |score| >= {report['threshold']:g})" if track else f"verdict (Welch, p < {ALPHA_TEXT})"
    )
    header = [
        "A",
        "B",
        "loss A-B",
        "p",
        "time A-B, min",
        "p",
        "steps A-B",
        "slope/step",
        "adjusted A-B",
        "score" if track else "p (adjusted)",
        verdict,
    ]
    rows = []
    for p in report["pairs"]:
        adj = p["step_adjusted"]
        if adj["adjusted_diff"] is None:
            tail = ["n/a", "n/a", adj["note"]]
        else:
            if track:
                middle = f"{adj['score']:+.5f}"
            else:
                middle = "n/a" if adj["welch"] is None else evidence.format_p(adj["welch"]["pvalue"])
            tail = [f"{adj['adjusted_diff']:+.6f}", middle, adj["verdict"] or adj["note"]]
        rows.append(
            [
                p["a"],
                p["b"],
                *_welch_cells(p["val_loss"], "+.6f"),
                *_welch_cells(p["train_time_min"], "+.3f"),
                f"{adj['steps_diff']:+g}",
                _slope_cell(adj),
                *tail,
            ]
        )
    return header, "llrrrrrrrrl", rows


def notes(report: dict) -> list[str]:
    out = [f"{b['label']}: {b['note']}." for b in report["batches"] if b["note"]]
    if any(b["few_runs"] for b in report["batches"]):
        out.append(f"* fewer than {evidence.FEW_RUNS} runs.")
    single = [b["label"] for b in report["batches"] if b["n"] < 2]
    if single:
        out.append(
            f"{', '.join(single)}: one run, so no interval, t-test or Welch test: they estimate the spread of the "
            "runs, which one run does not show. Run at least 2 (better 5 or more)."
        )
    for b in report["batches"]:
        if isinstance(b["steps"], list):
            out.append(
                f"{b['label']}: runs of different lengths; the step-adjusted comparison uses their mean steps, "
                f"{b['steps_mean']:g}, and the mean curve only the validations all of them share."
            )
    if report.get("at_step") is not None:
        out.append(f"every run's val loss at step {report['at_step']} (--at-step), not at its last step.")
    if not report["pairs"]:
        return out
    out.append("loss A-B, time A-B: differences of the means, Welch t-test, two-sided p.")
    out.append(
        "adjusted A-B = loss_A - loss_B + (steps_A - steps_B) * slope, slope = val loss lost per step removed: a "
        "batch that ran more steps is adjusted up; > 0 means B is ahead at equal steps."
    )
    if report["track_rules"]:
        out.append(
            "optimization-track logs: the track's published rules (records/tracks.py). Per batch (target - mean) * "
            f"sqrt(n) >= {tracks.MARGIN:g}; per pair score = adjusted / sqrt(1/n_A + 1/n_B), B better when score >= "
            f"{report['threshold']:g}, A when <= -{report['threshold']:g}; the track's sigma {tracks.SIGMA:g} is "
            f"assumed, and its slope {tracks.SLOPE_PER_100_STEPS:g} per 100 steps unless --slope or --fit-slope."
        )
    else:
        out.append(
            "no track constant applies to these logs: the verdict is Welch's test of the (adjusted) losses at "
            f"p < {ALPHA_TEXT}; steps that differ need --slope, or --fit-slope START:END over steps outside the "
            "learning-rate cooldown (printed with its 99% interval, which treats the validations as independent)."
        )
    return out


def _text_table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"


def render_text(report: dict) -> str:
    lines = [
        f"Compared {_batches(len(report['batches']))}: target {report['target']:g} ({report['target_source']}), "
        f"{CONFIDENCE_TEXT} t-intervals, p of a one-sided t-test that the mean final val loss is below the target.",
        "",
        *_text_table(*batch_table(report)),
    ]
    for b in report["batches"]:
        if b["skipped_files"]:
            lines.append(
                f"skipped in {b['label']}: "
                + "; ".join(f"{Path(s['file']).name} ({s['reason']})" for s in b["skipped_files"])
            )
    if report["pairs"]:
        lines += ["", *_text_table(*pair_table(report))]
    lines += ["", *notes(report)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _md_table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|", *map(line, rows)]


def render_markdown(report: dict, markdown: Path, plot: Path | None, command: str) -> str:
    lines = ["## Optimizer comparison", "", f"Made with `{command}`.", "", *_md_table(*batch_table(report)), ""]
    if report["pairs"]:
        lines += [*_md_table(*pair_table(report)), ""]
    if plot is not None:
        rel = Path(os.path.relpath(plot.resolve(), markdown.resolve().parent)).as_posix()
        lines += [f"![mean val loss against step and time, ms per step, peak memory]({rel})", ""]
    lines += [f"- {n}" for n in notes(report)]
    for b in report["batches"]:
        for s in b["skipped_files"]:
            rel = Path(os.path.relpath(Path(s["file"]).resolve(), markdown.resolve().parent)).as_posix()
            lines.append(f"- skipped in {b['label']}: `{rel}`: {s['reason']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plot


def loss_window(batches: list[dict], target: float) -> tuple[float, float, bool]:
    """y range of the loss panels and whether it is the zoom near the target.

    Near the target (some run's curve comes within ZOOM_SPAN of it): from the target or the lowest loss,
    whichever is lower, up to target + ZOOM_SPAN or the highest final loss, whichever is higher. Otherwise
    (e.g. CPU toy runs) the whole range of the curves' bands. Both widened by WINDOW_PAD on each side.
    """
    lows = np.concatenate([b["mean_curve"]["val_loss_min"] for b in batches] + [[np.inf]])
    highs = np.concatenate([b["mean_curve"]["val_loss_max"] for b in batches] + [[-np.inf]])
    finals = [b["mean_curve"]["val_loss_max"][-1] for b in batches if b["mean_curve"]["step"]]
    lows, highs = lows[np.isfinite(lows)], highs[np.isfinite(highs)]
    if not len(lows):  # no validation shared by the runs of any batch: the final losses are all there is
        lows = highs = np.array([b["val_loss"]["mean"] for b in batches])
    near = lows.min() <= target + ZOOM_SPAN
    if near:
        lo, hi = min(lows.min(), target), max([target + ZOOM_SPAN, *finals])
    else:
        lo, hi = lows.min(), highs.max()
    pad = WINDOW_PAD * (hi - lo) if hi > lo else WINDOW_PAD * max(abs(lo), 1.0)
    return float(lo - pad), float(hi + pad), near


def _entry(x, low, hi: float) -> float | None:
    """x of the validation before a curve's band first drops into the window, so a zoomed panel starts
    where the curves enter it."""
    inside = np.flatnonzero(np.asarray(low) <= hi)
    return None if not len(inside) else float(x[max(inside[0] - 1, 0)])


def figure(report: dict):
    Figure = cli.import_figure()
    batches, target = report["batches"], report["target"]
    drift_groups = sorted({g for b in batches for g in (b["weight_drift"] or {})}, key=_drift_rank)
    mem = [b["peak_memory_allocated_mib"] for b in batches]
    has_memory = any(m is not None for m in mem)  # CPU runs log none: no empty panel for it
    rows = 2 + (2 if drift_groups else 0)
    fig = Figure(figsize=(FIGURE_WIDTH, ROW_HEIGHT * rows), layout="constrained")
    top, drift_fig = fig.subfigures(2, 1) if drift_groups else (fig, None)
    mosaic = [["step", "time"], ["speed", "memory"]] if has_memory else [["step", "time"], ["speed", "speed"]]
    panels = top.subplot_mosaic(mosaic)
    by_step, by_time, speed = panels["step"], panels["time"], panels["speed"]
    lo, hi, near = loss_window(batches, target)
    starts = {"step": [], "time": []}
    for k, b in enumerate(batches):
        c, color = b["mean_curve"], f"C{k}"
        if not c["step"]:
            continue
        steps, minutes = np.array(c["step"]), np.array(c["train_time_ms_mean"]) / MS_PER_MINUTE
        reached = b["target_step"] is not None
        for ax, x, cross, what in (
            (by_step, steps, b["target_step"], "step"),
            (by_time, minutes, b["target_time_min"], "time"),
        ):
            at = (f"at step {cross:.0f}" if what == "step" else f"at {cross:.2f} min") if reached else "not reached"
            marker = "." if len(x) < 2 else None
            label = f"{b['label']}, {runs_text(b['n'])}: {target:g} {at}"
            ax.plot(x, c["val_loss_mean"], color=color, marker=marker, label=label)
            ax.fill_between(x, c["val_loss_min"], c["val_loss_max"], color=color, alpha=0.2, lw=0)
            if reached:
                ax.axvline(cross, color=color, ls=":", lw=1)
                ax.plot([cross], [target], "o", color=color, ms=5)
            if near:
                entry = _entry(x, c["val_loss_min"], hi)
                if entry is not None:
                    starts[what].append(entry)
    for ax, what, xlabel in ((by_step, "step", "step"), (by_time, "time", "training time (min)")):
        ax.axhline(target, color="C3", ls="--", lw=1)
        ax.set_ylim(lo, hi)
        if starts[what]:
            ax.set_xlim(left=min(starts[what]))
        ax.set(xlabel=xlabel, ylabel="val loss")
        ax.legend(fontsize="small", loc="upper right")
    window = (
        f"zoom near the target {target:g}" if near else f"whole range: no run gets within {ZOOM_SPAN:g} of {target:g}"
    )
    by_step.set_title(f"Mean val loss by step (band: min to max of the runs; {window})", fontsize="medium")
    by_time.set_title("Mean val loss by training time: who is ahead in time", fontsize="medium")

    labels = [b["label"] for b in batches]
    colors = [f"C{k}" for k in range(len(batches))]
    means = [b["ms_per_step"]["mean"] for b in batches]
    bars = speed.bar(labels, means, color=colors)
    speed.bar_label(bars, fmt="%.1f", label_type="center")
    # Error bars (with caps) only on the bars whose interval is shown: none is drawn where it was left out.
    left_out = []
    for x, (m, b) in enumerate(zip(means, batches)):
        ci = b["ms_per_step"]["ci99"]
        if evidence.time_interval_shown(ci):
            speed.errorbar([x], [m], yerr=[[m - ci[0]], [ci[1] - m]], color="k", capsize=4, ls="none")
        else:
            left_out.append(b["label"])
    title = f"ms per step (error bars: {CONFIDENCE_TEXT} interval of the mean)"
    if left_out:
        title += f"\nno interval for {', '.join(left_out)}: too few runs"
    speed.set(ylabel="ms per step", title=title)
    speed.tick_params(axis="x", labelrotation=15)
    if has_memory:
        memory = panels["memory"]
        memory.bar(labels, [0.0 if m is None else m["mean"] for m in mem], color=colors)
        memory.bar_label(memory.containers[-1], labels=["n/a" if m is None else f"{m['mean']:.0f}" for m in mem])
        memory.set_ylim(bottom=0)
        memory.set(ylabel="MiB", title="peak memory allocated (n/a: not logged, e.g. CPU runs)")
        memory.tick_params(axis="x", labelrotation=15)

    if drift_groups:
        axes = drift_fig.subplots(2, len(drift_groups), squeeze=False)
        for col, group in enumerate(drift_groups):
            for k, b in enumerate(batches):
                d = (b["weight_drift"] or {}).get(group)
                if d is None:
                    continue
                axes[0, col].plot(d["step"], d["relative_distance"], color=f"C{k}", label=b["label"])
                axes[1, col].plot(d["step"], d["cosine"], color=f"C{k}", label=b["label"])
            axes[0, col].set(title=f"{group}: ||w - w0|| / ||w0||", xlabel="step")
            axes[1, col].set(title=f"{group}: cos(w, w0)", xlabel="step")
        axes[0, 0].legend(fontsize="small")
        drift_fig.suptitle("Weight drift from the initial weights (mean over runs)")
    return fig


# ------------------------------------------------------------------------------------------ CLI


def _step_range(text: str) -> tuple[float, float]:
    start, sep, end = text.partition(":")
    try:
        lo, hi = float(start), float(end)
    except ValueError:
        lo = hi = math.nan
    if not sep or not (math.isfinite(lo) and math.isfinite(hi)) or not 0 <= lo < hi:
        raise argparse.ArgumentTypeError(f"expected START:END, two steps with 0 <= START < END, got {text!r}")
    return lo, hi


def parse_args(argv: list[str] | None):
    parser = cli.Parser(
        prog="compare.py",
        description="Compare batches of speedrun runs (one folder per batch, e.g. one optimizer each): final "
        "val loss, time, memory, the step where the mean curve reaches the target, and pairwise tests.",
        epilog="Each FOLDER is searched recursively for run logs (ours, the public speedrun's of every track) and "
        "the JSON summaries written by train_gpt.py, as records/evidence.py does. See records/README.md.",
    )
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="one folder of runs per batch")
    parser.add_argument(
        "--target",
        type=cli.number(),
        help="val loss to reach (default: 2.92 for our runs and the medium track, 3.28 for the optimization track)",
    )
    slope = parser.add_mutually_exclusive_group()
    slope.add_argument(
        "--slope",
        type=cli.number(0.0, False, "a loss per step, a number >= 0"),
        metavar="LOSS_PER_STEP",
        help="val loss lost per step removed, for the step-adjusted comparison (default: none, except the "
        "optimization track's published 0.000045 for its logs)",
    )
    slope.add_argument(
        "--fit-slope",
        type=_step_range,
        metavar="START:END",
        help="fit the slope per pair over the mean curves' validations between these steps: choose steps "
        "outside the learning-rate cooldown",
    )
    parser.add_argument(
        "--threshold",
        type=cli.number(0.0, True, "a number > 0"),
        help=f"score needed for a verdict under the optimization track's rule (default {tracks.MARGIN:g}, "
        f"derived there for sigma {tracks.SIGMA:g})",
    )
    cli.add_at_step(parser)
    cli.add_output_options(parser, "write the tables as markdown to FILE", "write a figure to FILE.png")
    return parser.parse_args(argv)


def load_batches(folders: list[str], at_step: int | None = None) -> list[Batch]:
    seen: dict[Path, str] = {}
    for arg in folders:
        path = Path(arg)
        if not path.exists():
            raise ToolError(f"{arg} does not exist. Give one folder of runs (logs and JSON summaries) per batch.")
        if not path.is_dir():
            raise ToolError(
                f"{arg} is not a folder. compare.py takes one folder of runs per batch; to look "
                "at single runs use records/evidence.py."
            )
        if path.resolve() in seen:
            raise ToolError(f"{arg} is given twice (also as {seen[path.resolve()]}); give each batch once.")
        seen[path.resolve()] = arg
    names = [Path(arg).resolve().name for arg in folders]
    batches = []
    for arg, name in zip(folders, names):
        label = name if names.count(name) == 1 else arg  # two folders of one name: tell them apart by path
        batches.append(Batch(Path(arg), label, cli.load_checked([arg], f"batch {label}", at_step)))
    return batches


def run(args, argv: list[str] | None) -> str:
    """The whole tool on parsed options: the text (or JSON) to print; --markdown and --plot written."""
    cli.check_outputs(args.markdown, args.plot, args.force)
    batches = load_batches(args.folders, args.at_step)
    target, source = cli.resolve_target(args.target, [b.loaded for b in batches])
    report = compare(batches, target, args.slope, args.threshold, args.fit_slope, source)
    report["at_step"] = args.at_step
    if args.plot is not None:
        cli.save_figure(figure(report), args.plot, FIGURE_DPI)
    if args.markdown is not None:
        command = " ".join(["python records/compare.py", *(argv if argv is not None else sys.argv[1:])])
        cli.write_text(args.markdown, render_markdown(report, args.markdown, args.plot, command))
    return json.dumps(report, indent=2) + "\n" if args.json else render_text(report)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())
