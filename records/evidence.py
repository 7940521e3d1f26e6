"""Statistical evidence for a speedrun record.

A record is accepted when independent runs show, with p < 0.01, that the mean final validation
loss is below the target, and when its training time is known. This script reads the runs (our
.txt logs and .json summaries, or the public speedrun's logs), prints the statistics in the
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
import dataclasses
import json
import math
import os
import re
import secrets
import sys
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
from scipy import stats

DEFAULT_TARGET = 2.92
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

RUN_FORMAT = "speedrun-run/"  # prefix of the "format" field of train_gpt.py's summaries
REPORT_FORMAT = "speedrun-evidence/1"  # this script's --json output, ignored when found in folders
COMPARE_FORMAT = "speedrun-compare/1"  # compare.py's --json output, ignored likewise
LOG_SUFFIXES = (".txt", ".log")
SEPARATOR = b"=" * 100 + b"\n"  # ends the script source at the top of every log

# Only lines that fully match count: the source at the top of a log holds these formats as f-string
# text, which has braces where the numbers go. Logs are parsed as bytes: decoding a whole log costs more
# than reading it. The pattern starts with the newline before the line: a literal prefix lets the regex
# engine skip ahead, about 4x faster than anchoring with ^ in MULTILINE mode.
_NUM = rb"[-+]?(?:\d+(?:\.\d*)?|nan|inf)"
_VAL_LINE = re.compile(
    rb"\nstep:(\d+)/(\d+) val_loss:(" + _NUM + rb") train_time:(\d+(?:\.\d+)?)ms step_avg:" + _NUM + rb"ms(?=\r?\n|\Z)"
)
_STEP_START = re.compile(rb"step:(\d+)/(\d+) ")
_MEMORY_PREFIX = b"\npeak memory allocated: "
_MEMORY_LINE = re.compile(re.escape(_MEMORY_PREFIX) + rb"(\d+(?:\.\d+)?) MiB reserved: (\d+(?:\.\d+)?) MiB(?=\r?\n|\Z)")
DRIFT_KEYS = ("relative_distance", "cosine")  # per parameter group in a val_losses entry's "weight_drift"

# Why a file yields no run (Skip.kind), so that compare.py can count skipped runs by kind. A summary whose
# status is not "finished" gives its status instead ("diverged", "failed", "interrupted").
DIVERGED, UNFINISHED, NOT_FINITE, NOT_A_RUN = "diverged", "unfinished", "not finite", "not a run"


class EvidenceError(Exception):
    """A user mistake or unusable input, reported as one paragraph without a traceback."""


@dataclasses.dataclass(frozen=True)
class Run:
    file: Path  # the log when there is one, else the summary
    final_val_loss: float
    train_time_ms: float
    num_iterations: int
    curve: np.ndarray  # (k, 2): train_time_ms, val_loss of every validation
    val_steps: np.ndarray  # (k,): the step of each validation
    peak_memory_mib: float | None = None  # peak allocated memory; None when not logged (CPU runs)
    hyperparameters: dict = dataclasses.field(default_factory=dict)  # from the summary; empty for a log alone
    # Per validation (aligned with curve): {group: {"relative_distance": x, "cosine": y}} or None; empty
    # when no validation of the run carries weight-drift diagnostics.
    weight_drift: tuple = ()


@dataclasses.dataclass(frozen=True)
class Rejected:
    """Why a file yields no run: its kind (see DIVERGED...) and a sentence for the reader."""

    kind: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Skip:
    file: Path
    reason: str
    kind: str


@dataclasses.dataclass(frozen=True)
class Unusable:
    """A .json that tells nothing about a run (broken, or not a run summary): a log beside it decides."""

    reason: str
    quiet: bool = False  # this script's own report, which is expected in a submission folder


@dataclasses.dataclass
class Loaded:
    runs: list[Run]
    skips: list[Skip]
    notes: list[str]  # warnings about inputs that did not cost a run


# --------------------------------------------------------------------------------------- reading


def _candidate_files(paths: list[str]) -> list[Path]:
    files = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [
                    Path(root) / name
                    for name in sorted(names)
                    if not name.startswith(".") and name.endswith(LOG_SUFFIXES + (".json",))
                ]
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise EvidenceError(f"{arg} is neither a file nor a folder.")
        else:
            raise EvidenceError(
                f"{arg} does not exist. Give run logs (.txt), their JSON summaries, or folders holding them."
            )
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise EvidenceError(f"cannot read {path}: {e.strerror or e}.") from None


def read_log(path: Path) -> Run | Rejected:
    """The run in a text log, or why it does not count."""
    text = _read_bytes(path)
    # Step lines follow the first separator; lines before it are the script's own source.
    sep = text.find(SEPARATOR)
    while sep > 0 and text[sep - 1 : sep] != b"\n":
        sep = text.find(SEPARATOR, sep + 1)
    # body starts with a newline, the one before its first line
    body = b"\n" + text if sep < 0 else text[sep + len(SEPARATOR) - 1 :]

    vals = [m.groups() for m in _VAL_LINE.finditer(body)]
    diverged = body.find(b"\nDIVERGED")
    if diverged >= 0:
        line = body[diverged + 1 :].split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
        return Rejected(DIVERGED, f"run diverged ({line})")
    final = None
    for step, total, loss, ms in reversed(vals):
        if step == total:
            final = (int(total), float(loss), float(ms))
            break
    if final is None:
        last = _last_step(body)
        if last is None:
            return Rejected(NOT_A_RUN, "not a training log (no step lines)")
        return Rejected(
            UNFINISHED, f"no final val line (log ends at step {last[0]}/{last[1]}: unfinished or truncated run)"
        )
    total, loss, ms = final
    if not math.isfinite(loss):
        return Rejected(NOT_FINITE, f"final val loss is {loss}")
    own = [v for v in vals if int(v[1]) == total]
    curve = np.array([(float(v[3]), float(v[2])) for v in own], dtype=float)
    # The memory line ends the log: searching back from the end is far cheaper than a regex over all of it.
    at = body.rfind(_MEMORY_PREFIX)
    memory = _MEMORY_LINE.match(body, at) if at >= 0 else None
    peak = float(memory[1]) if memory else None
    return Run(path, loss, ms, total, curve, np.array([int(v[0]) for v in own]), peak)


def _last_step(body: bytes) -> tuple[int, int] | None:
    pos = len(body)
    while pos > 0:
        pos = body.rfind(b"step:", 0, pos)
        if pos < 0:
            return None
        m = _STEP_START.match(body, pos)
        if m and (pos == 0 or body[pos - 1 : pos] == b"\n"):
            return int(m[1]), int(m[2])
    return None


def read_summary(path: Path) -> Run | Rejected | Unusable:
    """The run in a JSON summary, the reason the run does not count, or why the file is no summary."""
    raw = _read_bytes(path)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return Unusable("empty file" if not raw.strip() else f"truncated or invalid JSON ({e})")
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt in (REPORT_FORMAT, COMPARE_FORMAT):
        return Unusable("a report of records/ tools", quiet=True)
    if not isinstance(fmt, str) or not fmt.startswith(RUN_FORMAT):
        return Unusable(
            "not a run summary (no 'format' field)" if fmt is None else f"not a run summary (format {fmt!r})"
        )
    if fmt != RUN_FORMAT + "1":
        return Unusable(f"unsupported summary format {fmt!r} (this script reads {RUN_FORMAT}1)")
    status = data.get("status")
    if status != "finished":
        # A killed run's summary keeps the status it had while running.
        kind = UNFINISHED if status == "running" else status if isinstance(status, str) and status else NOT_A_RUN
        return Rejected(kind, f"status {status!r}, only finished runs count")
    total = data.get("num_iterations")
    loss = data.get("final_val_loss")
    ms = data.get("train_time_ms")
    if not (isinstance(total, int) and total > 0):
        return Rejected(NOT_A_RUN, f"malformed summary: num_iterations is {total!r}")
    if not isinstance(loss, (int, float)) or not isinstance(ms, (int, float)):
        return Rejected(NOT_A_RUN, f"malformed summary: final_val_loss {loss!r}, train_time_ms {ms!r}")
    if not math.isfinite(loss):
        return Rejected(NOT_FINITE, f"final val loss is {loss}")
    points, steps, drift = [], [], []
    for v in data.get("val_losses") or []:
        if isinstance(v, dict) and _numbers(v, ("val_loss", "train_time_ms")) and type(v.get("step")) is int:
            points.append((float(v["train_time_ms"]), float(v["val_loss"])))
            steps.append(v["step"])
            drift.append(_drift(v.get("weight_drift")))
    curve = np.array(points, dtype=float).reshape(-1, 2)
    memory = data.get("peak_memory_allocated_mib")
    hyperparameters = data.get("hyperparameters")
    return Run(
        path,
        float(loss),
        float(ms),
        total,
        curve,
        np.array(steps, dtype=int),
        float(memory) if _numbers(data, ("peak_memory_allocated_mib",)) else None,
        hyperparameters if isinstance(hyperparameters, dict) else {},
        tuple(drift) if any(drift) else (),
    )


def _numbers(d: dict, keys: tuple[str, ...]) -> bool:
    return all(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool) for k in keys)


def _drift(raw) -> dict | None:
    """The well-formed groups of a validation's weight-drift diagnostics; malformed groups are left out."""
    if not isinstance(raw, dict):
        return None
    groups = {
        str(group): {k: float(values[k]) for k in DRIFT_KEYS}
        for group, values in raw.items()
        if isinstance(values, dict) and _numbers(values, DRIFT_KEYS)
    }
    return groups or None


def load(paths: list[str]) -> Loaded:
    """Every run among the paths once: a log and its summary (same folder and stem) are one run."""
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for file in _candidate_files(paths):
        kind = "json" if file.suffix == ".json" else "log"
        group = groups.setdefault((file.parent.resolve(), file.stem), {})
        group.setdefault(kind, file)  # the same file reached twice, or x.txt beside x.log

    loaded = Loaded([], [], [])
    for key in sorted(groups, key=lambda k: (str(k[0]), k[1])):
        group = groups[key]
        log, summary = group.get("log"), group.get("json")
        result = read_summary(summary) if summary is not None else None
        # A summary decides about its run; the log decides when there is no usable summary.
        if isinstance(result, Unusable):
            if log is None and result.quiet:
                continue
            if log is None:
                result = Rejected(NOT_A_RUN, result.reason)
            else:
                if not result.quiet:
                    loaded.notes.append(f"warning: ignored {summary}: {result.reason}; using {log}")
                result = None
        if result is None:
            result = read_log(log)
        elif isinstance(result, Run) and log is not None:
            result = dataclasses.replace(result, file=log)  # a run is listed by its log
        if isinstance(result, Run):
            loaded.runs.append(result)
        else:
            loaded.skips.append(Skip(log if log is not None else summary, result.reason, result.kind))
    return loaded


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
    loaded: Loaded, target: float, samples: int, size: int, seed: int, baseline: Loaded | None = None
) -> tuple[dict, np.ndarray]:
    """The report (as written by --json) and the bootstrap p-values behind it."""
    described = _describe_set(loaded, target)
    loss = _arrays(loaded.runs)[0]
    report = {key: described[key] for key in ("n", "skipped", "few_runs", "note")}
    report = {"format": REPORT_FORMAT, **report, "target": target}
    report["val_loss"] = described["val_loss"]
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


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


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
            _too_few(n),
            "",
            "--- Training Time Stats ---",
            f"train time (minutes): mean={t['mean']:.4f}",
            f"avg ms per iteration: {s['mean']:.4f}",
        ]
    if "baseline" in report:
        lines += _render_baseline(report)
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


def import_figure(option: str = "--plot"):
    """matplotlib's Figure class, imported only when a figure is asked for.

    Any exception counts, not only ImportError: a broken install (a wrong numpy, a missing shared library)
    fails in other ways, and the message must show the real cause rather than claim it is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except Exception as e:  # noqa: BLE001 (see above)
        raise EvidenceError(
            f"{option} needs matplotlib, and importing it failed: {type(e).__name__}: {e}. Install it "
            f"(pip install matplotlib) or repair the installation, or leave out {option}."
        ) from None
    return Figure


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file beside `path`, then rename it over `path`: a crash or a full disk never
    leaves half a file where the user expects a whole one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        with open(tmp, "xb") as f:
            created = True
            write(f)
        os.replace(tmp, path)
        created = False
    except OSError as e:
        raise EvidenceError(f"cannot write {path}: {e.strerror or e}.") from None
    except ValueError as e:  # matplotlib: a file type it cannot write
        raise EvidenceError(f"cannot write {path}: {e}") from None
    finally:
        if created:
            tmp.unlink(missing_ok=True)


def save_figure(fig, path: Path) -> None:
    # A file object carries no name, so the format comes from the path's suffix (png when there is none).
    fmt = path.suffix[1:].lower() or "png"
    write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=FIGURE_DPI))


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


def figure(report: dict, runs: list[Run], pvalues: np.ndarray, baseline: list[Run] | None):
    """The --plot figure: val loss curves, a zoom on the end when some run gets near the target, the final
    losses (histogram and one tick per run) and the bootstrap p-values."""
    Figure = import_figure()
    target = report["target"]
    limit = target + ZOOM_ABOVE_TARGET
    sets = [(baseline or [], dict(color="0.6", lw=0.7, alpha=0.5)), (runs, dict(color="C0", lw=0.7, alpha=0.5))]
    # The whole curves span ~11 down to the target: the zoom shows the end, where runs differ. It is its own
    # panel (an inset covers the curves of small or slow batches) and only there when it has points.
    zoomed = any(np.any(r.curve[:, 1] <= limit) for group, _ in sets for r in group)
    fig = Figure(figsize=(PANEL_WIDTH * (4 if zoomed else 3), PANEL_HEIGHT), layout="constrained")
    axes = list(fig.subplots(1, 4 if zoomed else 3))
    curves, zoom = axes[0], axes[1] if zoomed else None
    finals, boot = axes[-2:]

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
    if report["val_loss"]["ci99"] is not None:
        ci_lo, ci_hi = report["val_loss"]["ci99"]
        finals.axvspan(ci_lo, ci_hi, color="C1", alpha=0.25, zorder=0, label=f"{CONFIDENCE_TEXT} interval of the mean")
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
    finals.set_xlim(lo - span * FINALS_PAD, hi + span * FINALS_PAD)
    title = f"Final val loss ({_runs(len(loss))})" + ("" if lo <= target <= hi else f"\ntarget {target:g} off the axis")
    finals.set(xlabel="final val loss", ylabel="runs", title=title)
    finals.legend(fontsize="small")

    b = report["bootstrap"]
    degenerate = degenerate_pvalues_text(pvalues)
    if degenerate is not None:
        boot.text(0.5, 0.5, degenerate, ha="center", va="center", transform=boot.transAxes)
        boot.set_title(f"Bootstrap p-values ({b['samples']} samples of {b['size']} runs)")
        boot.set(xticks=[], yticks=[])
    elif len(pvalues):
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
    else:
        boot.text(0.5, 0.5, "the bootstrap needs at least 2 runs", ha="center", va="center", transform=boot.transAxes)
        boot.set_title("Bootstrap p-values")
        boot.set(xticks=[], yticks=[])
    if report["note"] and len(runs) > 1:
        boot.set_title(f"{boot.get_title()}\nonly {_runs(len(runs))}: these figures mean little")
    boot.set(xlabel="p-value", ylabel="samples")
    return fig


def plot(path: Path, report: dict, runs: list[Run], pvalues: np.ndarray, baseline: list[Run] | None):
    """Write the figure to `path` and return it (tests read its axes)."""
    fig = figure(report, runs, pvalues, baseline)
    save_figure(fig, path)
    return fig


# ------------------------------------------------------------------------------------------ CLI


def _whole(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < least:
        raise argparse.ArgumentTypeError(f"expected a {what} whole number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1, "positive")


def _seed(text: str) -> int:
    return _whole(text, 0, "non-negative")


def _sample_size(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("a t-test needs samples of at least 2 runs")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evidence.py",
        description="Statistics of speedrun runs: is the mean final val loss below the target (p < 0.01), "
        "how often would a batch of runs pass, and how long do runs take.",
        epilog="Paths are run logs (.txt), JSON summaries written by train_gpt.py, or folders searched recursively "
        "for both; a log and its summary count as one run. Give --baseline after the submission's paths.",
    )
    parser.add_argument("paths", nargs="+", help="logs, summaries or folders of the submission")
    parser.add_argument("--target", type=_finite, default=DEFAULT_TARGET, help="val loss to beat (default %(default)s)")
    parser.add_argument(
        "--bootstrap", type=_positive_int, default=DEFAULT_BOOTSTRAP, help="bootstrap samples (default %(default)s)"
    )
    parser.add_argument(
        "--sample-size",
        type=_sample_size,
        default=DEFAULT_SAMPLE_SIZE,
        help="runs per bootstrap sample (default %(default)s)",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the bootstrap (default %(default)s)")
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="PATH",
        help="runs to compare with, e.g. the previous record re-run on the same machine",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="write a README section for the submission to FILE"
    )
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a figure of the runs to FILE.png")
    parser.add_argument("--force", action="store_true", help="overwrite the --markdown and --plot files if they exist")
    return parser.parse_args(argv)


def _check_output(path: Path | None, force: bool, option: str) -> None:
    if path is None:
        return
    if path.exists() and not force:
        raise EvidenceError(f"{option} {path} already exists; give --force to overwrite it, or another file name.")
    if not path.parent.is_dir():
        raise EvidenceError(f"{option} {path}: the folder {path.parent} does not exist.")


def load_checked(paths: list[str], what: str) -> Loaded:
    loaded = load(paths)
    for note in loaded.notes:
        print(note, file=sys.stderr)
    for skip in loaded.skips:
        print(f"warning: skipped {skip.file}: {skip.reason}", file=sys.stderr)
    if not loaded.runs:
        found = (
            f"all {len(loaded.skips)} inputs were skipped (see the warnings above)"
            if loaded.skips
            else "no logs or summaries were found"
        )
        raise EvidenceError(
            f"no finished runs in the {what} ({' '.join(paths)}): {found}. Give run logs (.txt), the JSON summaries "
            "written by train_gpt.py, or folders holding them."
        )
    counts: dict[int, int] = {}
    for r in loaded.runs:
        counts[r.num_iterations] = counts.get(r.num_iterations, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{steps} steps ({_runs(k)})" for steps, k in sorted(counts.items()))
        print(f"warning: the {what} runs have different num_iterations: {listed}", file=sys.stderr)
    return loaded


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _check_output(args.markdown, args.force, "--markdown")
        _check_output(args.plot, args.force, "--plot")
        if args.markdown is not None and args.plot is not None and args.markdown.resolve() == args.plot.resolve():
            raise EvidenceError("--markdown and --plot name the same file.")
        loaded = load_checked(args.paths, "submission")
        baseline = load_checked(args.baseline, "baseline") if args.baseline else None
        report, pvalues = analyse(loaded, args.target, args.bootstrap, args.sample_size, args.seed, baseline)
        if args.plot is not None:
            plot(args.plot, report, loaded.runs, pvalues, baseline.runs if baseline else None)
        if args.markdown is not None:
            command = " ".join(["python records/evidence.py", *(argv if argv is not None else sys.argv[1:])])
            text = render_markdown(report, args.markdown, args.plot, command)
            write_atomically(args.markdown, lambda f: f.write(text.encode()))
    except EvidenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2) + "\n" if args.json else render_text(report)
    # A batch of records/batch.py is decided by its pre-registered sequential test (records/batch_evidence.py).
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from records import batch_evidence

    sys.stdout.write(batch_evidence.amend(args.paths, text, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
