"""One reader of run logs for the records/ tools (evidence.py, compare.py).

It reads:
- our runs: train_gpt.py's .txt log (its source part may hold several files, each under a line
  `# ==== file: <path> ====`) and the .json summary beside it;
- the public speedrun's medium and short track logs of every era: the time in ms, the loss with any
  number of decimals, with or without `step_avg`, the source part holding one or several files, or
  starting with its own line of 100 '=';
- the public speedrun's optimization track logs: the time in seconds (`train_time:678.200s`), the loss
  with five decimals, and extra fields on some val lines (`val_ema_loss:...`, `ema_beta:...`);
- folders of them, searched recursively.

Every log is read after its first line of exactly 100 '='; the lines before it are the script's source.
A val line counts only when the whole line has the val-line shape: the source holds the same formats as
f-string text, with braces where the numbers go.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np


class ToolError(Exception):
    """A user mistake or an unusable input, reported as one paragraph without a traceback (exit status 2)."""


# Which kind of log a run came from decides the default target and which track's rules apply.
OURS = "ours"  # train_gpt.py's logs and summaries
SPEEDRUN = "speedrun"  # the public medium or short track (time in ms); the lines do not tell which track
OPTIMIZATION = "optimization"  # the public optimization track (time in seconds)
KIND_TEXT = {
    OURS: "our train_gpt.py runs",
    SPEEDRUN: "public speedrun logs of the medium or short track",
    OPTIMIZATION: "public optimization-track logs",
}

RUN_FORMAT = "speedrun-run/"  # prefix of the "format" field of train_gpt.py's summaries
REPORT_FORMAT = "speedrun-evidence/1"  # evidence.py's --json output, ignored when found in folders
COMPARE_FORMAT = "speedrun-compare/1"  # compare.py's --json output, ignored likewise
LOG_SUFFIXES = (".txt", ".log")
SEPARATOR = b"=" * 100  # ends the script source at the top of every log
DRIFT_KEYS = ("relative_distance", "cosine")  # per parameter group in a val_losses entry's "weight_drift"

# Logs are parsed as bytes: decoding a whole log costs more than reading it. Patterns start with the newline
# before the line: a literal prefix lets the regex engine skip ahead, about 4x faster than ^ in MULTILINE mode.
_NUM = rb"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)"
_FIELD = rb" [A-Za-z_][A-Za-z0-9_]*:[^\s{}]*"  # an extra "name:value" field, never an f-string's braces
_VAL_LINE = re.compile(
    rb"\nstep:(\d+)/(\d+) val_loss:("
    + _NUM
    + rb")(?:"
    + _FIELD
    + rb")*? train_time:(\d+(?:\.\d*)?)(ms|s)(?: step_avg:"
    + _NUM
    + rb"ms)?(?:"
    + _FIELD
    + rb")*\r?(?=\n|\Z)"
)
_VAL_START = b"\nstep:"
_STEP_START = re.compile(rb"step:(\d+)/(\d+) ")
_MEMORY_PREFIX = b"\npeak memory allocated: "
_MEMORY_LINE = re.compile(re.escape(_MEMORY_PREFIX) + rb"(\d+(?:\.\d+)?) MiB reserved: (\d+(?:\.\d+)?) MiB\r?(?=\n|\Z)")
_OURS_MARK = b"\nhyperparameters:\n"  # train_gpt.py writes it after the environment, before the steps

# Why a file yields no run (Skip.kind), so that compare.py can count skipped runs by kind. A summary whose
# status is not "finished" gives its status instead ("diverged", "failed", "interrupted").
DIVERGED, UNFINISHED, NOT_FINITE, NOT_A_RUN, UNKNOWN_FORMAT = (
    "diverged",
    "unfinished",
    "not finite",
    "not a run",
    "unknown format",
)


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
    kind: str = OURS


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
    quiet: bool = False  # a report of the records/ tools, which is expected in a submission folder


@dataclasses.dataclass
class Loaded:
    runs: list[Run]
    skips: list[Skip]
    notes: list[str]  # warnings about inputs that did not cost a run

    @property
    def kinds(self) -> set[str]:
        return {r.kind for r in self.runs}


# --------------------------------------------------------------------------------------- files


def candidate_files(paths: list[str]) -> list[Path]:
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
            raise ToolError(f"{arg} is neither a file nor a folder. Give run logs, their JSON summaries or folders.")
        else:
            raise ToolError(
                f"{arg} does not exist. Give run logs (.txt), their JSON summaries, or folders holding them."
            )
    return files


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ToolError(
            f"cannot read {path}: {e.strerror or e}. Check its permissions, or leave it out of the paths."
        ) from None


# ----------------------------------------------------------------------------------------- logs


def _body_start(text: bytes) -> int:
    """Offset of the newline that ends the first line of exactly 100 '=' (len(text) when there is none
    and the text is not a log with a source part: then the whole file is read)."""
    at = 0
    while True:
        at = text.find(SEPARATOR, at)
        if at < 0:
            return -1
        end = at + len(SEPARATOR)
        line_start = at == 0 or text[at - 1 : at] == b"\n"
        line_end = text[end : end + 1] in (b"\n", b"\r", b"")
        if line_start and line_end:
            return text.find(b"\n", end) if text.find(b"\n", end) >= 0 else len(text)
        at = end


def read_log(path: Path, at_step: int | None = None) -> Run | Rejected:
    """The run in a text log, or why it does not count. With at_step, the run's result is its val line at
    that step instead of the last step: the optimization track lets a batch stop every run at one step
    chosen alike for all (its README, "Rules", item 5), and such logs end at that val line."""
    text = read_bytes(path)
    start = _body_start(text)
    # body starts with a newline, the one before its first line
    body = b"\n" + text if start < 0 else text[start:]
    offset = 0 if start < 0 else text.count(b"\n", 0, start) + 1  # lines before the body's first line

    vals = [m for m in _VAL_LINE.finditer(body)]
    diverged = body.find(b"\nDIVERGED")
    if diverged >= 0:
        line = body[diverged + 1 :].split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
        return Rejected(DIVERGED, f"run diverged ({line})")
    if at_step is None:
        final = next((m for m in reversed(vals) if m[1] == m[2]), None)
        if final is None:
            return _why_no_final(body, vals, offset)
        total = int(final[2])
    else:
        final = next((m for m in vals if int(m[1]) == at_step), None)
        if final is None:
            last = _last_step(body)
            ends = "" if last is None else f" (the log ends at step {last[0]} of {last[1]})"
            return Rejected(UNFINISHED, f"no val line at step {at_step}{ends}")
        total = at_step
    loss = float(final[3])
    if not math.isfinite(loss):
        return Rejected(NOT_FINITE, f"final val loss is {loss}")
    own = [m for m in vals if m[2] == final[2] and int(m[1]) <= total]
    curve = np.array([(_ms(m), float(m[3])) for m in own], dtype=float)
    # The memory line ends the log: searching back from the end is far cheaper than a regex over all of it.
    at = body.rfind(_MEMORY_PREFIX)
    memory = _MEMORY_LINE.match(body, at) if at >= 0 else None
    if final[5] == b"s":
        kind = OPTIMIZATION
    else:
        kind = OURS if _OURS_MARK in body else SPEEDRUN
    return Run(
        path,
        loss,
        _ms(final),
        total,
        curve,
        np.array([int(m[1]) for m in own]),
        float(memory[1]) if memory else None,
        kind=kind,
    )


def _ms(match: re.Match) -> float:
    return float(match[4]) * (1000.0 if match[5] == b"s" else 1.0)


def _why_no_final(body: bytes, vals: list, offset: int) -> Rejected:
    """A log without a final val line: one with a val line this reader cannot read says which line; one
    that ends early says at which step; a file without step lines is no training log."""
    read = {m.start() for m in vals}
    pos = body.find(_VAL_START)
    while pos >= 0:
        end = body.find(b"\n", pos + 1)
        line = body[pos + 1 : end if end >= 0 else len(body)]
        # A last line without its newline was cut off while written: the log ends early, its format is fine.
        if end >= 0 and b" val_loss" in line and pos not in read and _STEP_START.match(line):
            number = offset + body.count(b"\n", 0, pos) + 1
            shown = line.decode("utf-8", errors="replace").strip()
            return Rejected(
                UNKNOWN_FORMAT,
                f"line {number} is a val line in a format this reader does not know: {shown[:120]!r} (expected "
                "'step:S/N val_loss:L train_time:Tms' or 'train_time:Ts', optionally with step_avg and fields)",
            )
        pos = body.find(_VAL_START, pos + 1)
    last = _last_step(body)
    if last is None:
        return Rejected(NOT_A_RUN, "not a training log (no step lines after the line of 100 '=')")
    reason = f"the log ends at step {last[0]} of {last[1]}, before its final val line"
    if vals and int(vals[-1][1]) == last[0] and body.rstrip().endswith(vals[-1][0].strip()):
        # It ends with a val line: a run stopped on purpose at a step chosen for the whole batch, or cut there.
        reason += f" (a batch stopped at one step on purpose is read with --at-step {last[0]})"
    return Rejected(UNFINISHED, reason)


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


# ------------------------------------------------------------------------------------ summaries


def read_summary(path: Path, at_step: int | None = None) -> Run | Rejected | Unusable:
    """The run in a JSON summary, the reason the run does not count, or why the file is no summary. With
    at_step, the run's result is its validation at that step (see read_log)."""
    raw = read_bytes(path)
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
        return Unusable(f"unsupported summary format {fmt!r} (this reader reads {RUN_FORMAT}1)")
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
    if at_step is not None:
        if at_step not in steps:
            return Rejected(UNFINISHED, f"no validation at step {at_step} in the summary")
        keep = [i for i, s in enumerate(steps) if s <= at_step]
        at = steps.index(at_step)
        total, ms, loss = at_step, points[at][0], points[at][1]
        points, steps, drift = [points[i] for i in keep], [steps[i] for i in keep], [drift[i] for i in keep]
        if not math.isfinite(loss):
            return Rejected(NOT_FINITE, f"val loss at step {at_step} is {loss}")
    curve = np.array(points, dtype=float).reshape(-1, 2)
    hyperparameters = data.get("hyperparameters")
    return Run(
        path,
        float(loss),
        float(ms),
        total,
        curve,
        np.array(steps, dtype=int),
        float(data["peak_memory_allocated_mib"]) if _numbers(data, ("peak_memory_allocated_mib",)) else None,
        hyperparameters if isinstance(hyperparameters, dict) else {},
        tuple(drift) if any(drift) else (),
        OURS,
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


# ------------------------------------------------------------------------------------- folders


def load(paths: list[str], at_step: int | None = None) -> Loaded:
    """Every run among the paths once: a log and its summary (same folder and stem) are one run. With
    at_step, each run's result is its validation at that step (see read_log)."""
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for file in candidate_files(paths):
        kind = "json" if file.suffix == ".json" else "log"
        group = groups.setdefault((file.parent.resolve(), file.stem), {})
        group.setdefault(kind, file)  # the same file reached twice, or x.txt beside x.log

    loaded = Loaded([], [], [])
    for key in sorted(groups, key=lambda k: (str(k[0]), k[1])):
        group = groups[key]
        log, summary = group.get("log"), group.get("json")
        result = read_summary(summary, at_step) if summary is not None else None
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
            result = read_log(log, at_step)
        elif isinstance(result, Run) and log is not None:
            result = dataclasses.replace(result, file=log)  # a run is listed by its log
        if isinstance(result, Run):
            loaded.runs.append(result)
        else:
            loaded.skips.append(Skip(log if log is not None else summary, result.reason, result.kind))
    return loaded
