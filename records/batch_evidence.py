"""Reading a batch folder of records/batch.py and reporting its pre-registered sequential test.

A batch folder holds plan.json (written before the first run, never rewritten), decisions.jsonl (one
line per look, then the result) and the runs by index: attempt/A001/, attempt/A002/, ... and, with a
baseline, baseline/B001/, ... Each index folder is one run's --records_dir/--record, so a restart finds
the run by its index. Used by batch.py and by records/evidence.py, which reports a batch this way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if __package__ in (None, ""):  # run as a script: make `records` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# records.sequential and scipy are imported where they are used: a job process (one per run, through
# submitit) reads run states only, and scipy's import costs it a second or more.
if TYPE_CHECKING:
    from records import sequential

PLAN_FORMAT = "speedrun-batch-plan/1"
PLAN_FILE, DECISIONS_FILE = "plan.json", "decisions.jsonl"
ARMS = {"A": "attempt", "B": "baseline"}
RUN_FORMAT = "speedrun-run/"
FAILED = ("diverged", "failed")  # terminal statuses of a run that did not finish


class BatchError(Exception):
    """A user mistake or an unusable batch folder: one paragraph, exit status 2."""


def run_dir(batch: Path, arm: str, index: int) -> Path:
    """The --records_dir/--record folder of run `index` (1-based) of arm "A" (attempt) or "B" (baseline)."""
    return batch / ARMS[arm] / f"{arm}{index:03d}"


@dataclasses.dataclass(frozen=True)
class RunState:
    """What the folder of one run index holds. status: missing (nothing to resume: start it), resumable
    (an interrupted run with its checkpoint), finished, diverged, failed."""

    name: str  # e.g. A007
    status: str
    summary: Path | None = None
    resume: Path | None = None
    final_val_loss: float | None = None
    train_time_ms: float | None = None


def _summaries(folder: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a summary being written; the run's own log says more
        if isinstance(data, dict) and str(data.get("format", "")).startswith(RUN_FORMAT):
            found.append((path, data))
    return found


def run_state(batch: Path, arm: str, index: int) -> RunState:
    folder = run_dir(batch, arm, index)
    name = folder.name
    summaries = _summaries(folder)
    for path, data in summaries:
        loss, ms = data.get("final_val_loss"), data.get("train_time_ms")
        if data.get("status") == "finished" and isinstance(loss, (int, float)) and math.isfinite(loss):
            return RunState(
                name, "finished", path, None, float(loss), float(ms) if isinstance(ms, (int, float)) else None
            )
    for path, data in summaries:
        if data.get("status") in FAILED:
            return RunState(name, data["status"], path)
    # A run killed before its first checkpoint left nothing to resume: it starts again (a new run id).
    for path, data in reversed(summaries):
        resume = path.with_name(f"{data.get('run_id', path.stem)}.resume.pt")
        if resume.is_file():
            return RunState(name, "resumable", path, resume)
    return RunState(name, "missing")


def read_plan(batch: Path) -> dict | None:
    path = batch / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BatchError(f"{path} is not readable JSON ({e}). It is the batch's pre-registered plan: restore it.")
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise BatchError(f"{path} is not a plan of records/batch.py (expected format {PLAN_FORMAT!r}).")
    return plan


def design_of(plan: dict) -> sequential.Design:
    from records import sequential

    f = plan["futility"]
    return sequential.Design(
        tuple(plan["looks"]), plan["alpha"], plan["target"], f["conditional_power_below"], f["from_look"]
    )


def read_decisions(batch: Path) -> list[dict]:
    path = batch / DECISIONS_FILE
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash while it was appended; the look is made again
    return lines


def timing(batch: Path, plan: dict, upto: int) -> dict:
    """Description of the train times (minutes) of the finished runs of each arm at the look after attempt
    run `upto`: attempt runs 1..upto and baseline runs 1..upto - 1 (in the order A1 B1 A2 B2 ... the look
    comes before B<upto>), so that the figures do not depend on when they are computed."""
    out = {}
    for arm in ("A", "B") if plan.get("baseline") else ("A",):
        minutes = [
            s.train_time_ms / 60_000
            for i in range(1, upto + (arm == "A"))
            if (s := run_state(batch, arm, i)).status == "finished" and s.train_time_ms is not None
        ]
        out[ARMS[arm]] = {
            "n": len(minutes),
            "mean_min": float(np.mean(minutes)) if minutes else None,
            "std_min": float(np.std(minutes, ddof=1)) if len(minutes) > 1 else None,
        }
    return out


def welch_faster(batch: Path, plan: dict) -> dict | None:
    """The batch's one timing test: Welch's t-test that the attempt's train time is below the baseline's."""
    if not plan.get("baseline"):
        return None
    arms = {}
    for arm in ("A", "B"):
        states = [run_state(batch, arm, i) for i in range(1, plan["max_runs"] + 1)]
        arms[arm] = np.array([s.train_time_ms for s in states if s.status == "finished" and s.train_time_ms])
    a, b = arms["A"], arms["B"]
    if len(a) < 2 or len(b) < 2:
        return {"n_attempt": len(a), "n_baseline": len(b), "p": None, "note": "needs 2 finished runs of each"}
    from scipy import stats

    res = stats.ttest_ind(a, b, equal_var=False, alternative="less")
    return {
        "n_attempt": len(a),
        "n_baseline": len(b),
        "attempt_mean_min": float(a.mean() / 60_000),
        "baseline_mean_min": float(b.mean() / 60_000),
        "t": float(res.statistic),
        "p": float(res.pvalue),
    }


def evaluate_look(batch: Path, plan: dict, look: int) -> dict | None:
    """The decision at look `look` (0-based), or None while a run it covers has not ended. A diverged or
    failed attempt run among them decides "not shown" and is named."""
    design = design_of(plan)
    n = design.looks[look]
    states = [run_state(batch, "A", i) for i in range(1, n + 1)]
    bad = [s for s in states if s.status in FAILED]
    entry = {"kind": "look", "look": look + 1, "n": n}
    if bad:
        entry.update(
            decision="not shown",
            failed_runs=[f"{s.name} ({s.status}, {s.summary})" for s in bad],
            timing=timing(batch, plan, n),
        )
        return entry
    if any(s.status != "finished" for s in states):
        return None
    from records import sequential

    d = sequential.decide(design, look, np.array([s.final_val_loss for s in states]))
    entry.update(
        mean=d.mean,
        std=d.std,
        t=d.t,
        boundary=d.boundary,
        nominal_p=d.nominal_p,
        conditional_power=d.conditional_power,
        decision=d.decision,
        p_value=d.p_value,
        timing=timing(batch, plan, n),
    )
    return entry


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def describe_look(entry: dict, plan: dict) -> str:
    """One console line per look."""
    head = f"look {entry['look']} ({entry['n']} attempt runs): "
    if entry.get("failed_runs"):
        return head + "a run did not finish: " + "; ".join(entry["failed_runs"]) + f" -> {entry['decision']}"
    cp = entry["conditional_power"]
    times = "; ".join(
        f"{arm} time {t['mean_min']:.4f} min (std {_num(t['std_min'])}, {t['n']} runs)"
        for arm, t in entry["timing"].items()
        if t["mean_min"] is not None
    )
    return (
        head + f"mean {entry['mean']:.6f}, std {entry['std']:.6f}, t = {entry['t']:.3f}, "
        f"boundary {entry['boundary']:.3f} (nominal p {entry['nominal_p']:.2e})"
        + ("" if cp is None else f", conditional power {cp:.3f}")
        + f" -> {entry['decision']}"
        + (f"; {times}" if times else "")
    )


def result_sentence(entry: dict, plan: dict) -> str:
    """The batch's result from its deciding look."""
    k, n, alpha = entry["look"], entry["n"], plan["alpha"]
    p = entry.get("p_value")
    p_text = "" if p is None else f"; p = {p:.3g} (stagewise ordering)"
    if entry.get("failed_runs"):
        return f"not shown: attempt run {', '.join(entry['failed_runs'])} did not finish (a record must not diverge)"
    if entry["decision"] == "passed":
        return (
            f"passed at look {k} ({n} runs): t = {entry['t']:.3f}, boundary {entry['boundary']:.3f}, "
            f"overall alpha {alpha:g} by the plan{p_text}"
        )
    if entry["decision"] == "futility":
        return (
            f"stopped for futility at look {k} ({n} runs): conditional power {entry['conditional_power']:.3f} "
            f"< {plan['futility']['conditional_power_below']:g}{p_text}"
        )
    return f"not shown at the maximum ({n} runs): t = {entry['t']:.3f} < boundary {entry['boundary']:.3f}{p_text}"


def batch_of(path: str) -> Path | None:
    """The batch folder when `path` is one or one of its arm folders."""
    p = Path(path)
    for folder in (p, p.parent):
        if (folder / PLAN_FILE).is_file():
            return folder
    return None


def sequential_report(batch: Path) -> dict:
    """The batch's result recomputed from the plan and its runs by index (not from decisions.jsonl)."""
    plan = read_plan(batch)
    looks = []
    for k in range(len(plan["looks"])):
        entry = evaluate_look(batch, plan, k)
        if entry is None:
            break
        looks.append(entry)
        if entry["decision"] != "continue":
            return {
                "batch": str(batch),
                "looks": looks,
                "result": result_sentence(entry, plan),
                "p_value": entry.get("p_value"),
                "timing_test": welch_faster(batch, plan),
            }
    return {"batch": str(batch), "looks": looks, "result": "undecided: the batch has not reached a decision yet"}


def render(report: dict, plan: dict) -> list[str]:
    lines = [f"--- Sequential batch {report['batch']} (pre-registered plan, decides the record) ---"]
    lines += [describe_look(e, plan) for e in report["looks"]]
    lines.append(f"result: {report['result']}")
    test = report.get("timing_test")
    if test and test.get("p") is not None:
        lines.append(
            f"timing (Welch, attempt faster than baseline, once at the end): attempt {test['attempt_mean_min']:.4f} "
            f"min vs baseline {test['baseline_mean_min']:.4f} min, t = {test['t']:.3f}, p = {test['p']:.3g}"
        )
    return lines


def amend(paths: list[str], text: str, as_json: bool) -> str:
    """records/evidence.py's output for a batch of records/batch.py: the sequential result first; the plain
    t-test over all runs is labelled descriptive (peeking at looks makes its p-value not what it says)."""
    batches = sorted({b for p in paths if (b := batch_of(p)) is not None})
    try:
        reports = [sequential_report(b) for b in batches]
    except BatchError as e:
        print(f"warning: {e} The batch's sequential test is not reported.", file=sys.stderr)
        return text
    if not batches:
        return text
    if as_json:
        data = json.loads(text)
        data["sequential"] = reports
        data["val_loss"]["pvalue_note"] = "descriptive: the sequential test in 'sequential' decides"
        return json.dumps(data, indent=2) + "\n"
    head = [line for r, b in zip(reports, batches) for line in render(r, read_plan(b))]
    text = text.replace("val_loss t-test p=", "val_loss t-test (descriptive, over all runs; not the batch's test) p=")
    return "\n".join(head) + "\n\n" + text
