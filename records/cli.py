"""What evidence.py and compare.py share around the reader: option parsing and its errors, the checks of
the output files, loading runs with their warnings, the default target per kind of log, writing files
atomically and the exit statuses (0 done, 2 for every usage or input error, as train_gpt.py does)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

# The repository root is on sys.path whenever `records` is importable (the tools put it there when run as
# scripts), so speedrun/ is importable too.
from records import logs
from records.logs import OPTIMIZATION, OURS, SPEEDRUN, ToolError
from speedrun.files import atomic_path

EXIT_OK, EXIT_USAGE = 0, 2

# The target each kind of log was run for. Ours and the medium track: Karpathy's 350M llm.c baseline
# (spec record.md). The optimization track: 3.28, its README's "Rules", item 3 (KellerJordan/modded-nanogpt,
# records/track_3_optimization/README.md). Public ms-unit logs may also come from the short track, whose
# target is 3.28 too: its lines do not say which track they are, so that case needs --target 3.28.
DEFAULT_TARGETS = {OURS: 2.92, SPEEDRUN: 2.92, OPTIMIZATION: 3.28}


class Parser(argparse.ArgumentParser):
    """argparse with one error paragraph instead of its usage block, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}. See python records/{self.prog} --help.\n")


def number(least: float = -math.inf, strict: bool = False, what: str = "a number") -> Callable[[str], float]:
    """An option type: a finite number >= least (> least when strict)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < least or (strict and value == least):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def whole(least: int, what: str) -> Callable[[str], int]:
    """An option type: a whole number >= least."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"expected {what} whole number, got {text!r}")
        return value

    return parse


def add_at_step(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--at-step",
        type=whole(1, "a positive"),
        metavar="STEP",
        help="take every run's val loss at this step instead of its last one (the optimization track lets a "
        "batch stop all its runs at one step chosen alike for all); runs without a validation there are skipped",
    )


def add_output_options(parser: argparse.ArgumentParser, markdown_help: str, plot_help: str) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help=markdown_help)
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help=plot_help)
    parser.add_argument("--force", action="store_true", help="overwrite the --markdown and --plot files")


def check_outputs(markdown: Path | None, plot: Path | None, force: bool) -> None:
    """Before any work: each output is a file name in a writable folder, not yet there unless --force."""
    for path, option in ((markdown, "--markdown"), (plot, "--plot")):
        if path is None:
            continue
        if path.is_dir():
            raise ToolError(f"{option} {path} is a folder; give a file name.")
        if path.exists() and not force:
            raise ToolError(f"{option} {path} already exists; give --force to overwrite it, or another file name.")
        if not path.parent.is_dir():
            raise ToolError(f"{option} {path}: the folder {path.parent} does not exist; create it first.")
        if not os.access(path.parent, os.W_OK):
            raise ToolError(f"{option} {path}: the folder {path.parent} is not writable; choose another place.")
    if markdown is not None and plot is not None and markdown.resolve() == plot.resolve():
        raise ToolError("--markdown and --plot name the same file; give two file names.")


def runs_text(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def load_checked(paths: list[str], what: str, at_step: int | None = None) -> logs.Loaded:
    """The runs among the paths, with a warning on stderr for every skipped input; no finished run is an
    error. Runs of different lengths are a warning."""
    loaded = logs.load(paths, at_step)
    for note in loaded.notes:
        print(note, file=sys.stderr)
    for skip in loaded.skips:
        print(f"warning: skipped {skip.file}: {skip.reason}", file=sys.stderr)
    if not loaded.runs:
        found = (
            ("the only input was skipped" if len(loaded.skips) == 1 else f"all {len(loaded.skips)} inputs were skipped")
            + " (see the warnings above)"
            if loaded.skips
            else "no logs or summaries were found"
        )
        raise ToolError(
            f"no finished runs in the {what} ({' '.join(paths)}): {found}. Give run logs (.txt), the JSON summaries "
            "written by train_gpt.py, or folders holding them."
        )
    counts: dict[int, int] = {}
    for r in loaded.runs:
        counts[r.num_iterations] = counts.get(r.num_iterations, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{steps} steps ({runs_text(k)})" for steps, k in sorted(counts.items()))
        print(f"warning: the {what} runs have different num_iterations: {listed}", file=sys.stderr)
    return loaded


def kind_of(loaded: list[logs.Loaded]) -> str | None:
    """The one kind of log all the runs are, or None when they mix kinds."""
    kinds = set().union(*(x.kinds for x in loaded))
    return kinds.pop() if len(kinds) == 1 else None


def resolve_target(given: float | None, loaded: list[logs.Loaded]) -> tuple[float, str]:
    """--target, or the default of the kind of log all runs are; and a sentence saying where it came from."""
    if given is not None:
        return given, "given with --target"
    kind = kind_of(loaded)
    if kind is None:
        kinds = sorted(set().union(*(x.kinds for x in loaded)))
        raise ToolError(
            "the runs are of different kinds (" + ", ".join(logs.KIND_TEXT[k] for k in kinds) + "), whose targets "
            "differ: give --target (2.92 for the medium track and ours, 3.28 for the short and optimization tracks)."
        )
    note = f"the default for {logs.KIND_TEXT[kind]}"
    if kind == SPEEDRUN:
        note += "; short-track logs need --target 3.28"
    return DEFAULT_TARGETS[kind], note


def write_text(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as temp:
            temp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ToolError(f"cannot write {path}: {e.strerror or e}.") from None


def import_figure(option: str = "--plot"):
    """matplotlib's Figure class, imported only when a figure is asked for.

    Any exception counts, not only ImportError: a broken install (a wrong numpy, a missing shared library)
    fails in other ways, and the message must show the real cause rather than claim it is not installed.
    """
    try:
        from matplotlib.figure import Figure
    except Exception as e:  # noqa: BLE001 (see above)
        raise ToolError(
            f"{option} needs matplotlib, and importing it failed: {type(e).__name__}: {e}. Install it "
            f"(pip install matplotlib) or repair the installation, or leave out {option}."
        ) from None
    return Figure


def save_figure(fig, path: Path, dpi: int) -> None:
    # The format comes from the path's suffix (png when there is none): the temporary file's name ends in .tmp.
    fmt = path.suffix[1:].lower() or "png"
    try:
        with atomic_path(path) as temp:
            fig.savefig(temp, format=fmt, dpi=dpi)
    except OSError as e:
        raise ToolError(f"cannot write {path}: {e.strerror or e}.") from None
    except ValueError as e:  # matplotlib: a file type it cannot write
        raise ToolError(f"cannot write {path}: {e}") from None


def run(main: Callable[[], str]) -> int:
    """Run a tool's work, print what it returns; a ToolError becomes one `error:` paragraph and exit 2."""
    try:
        out = main()
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(out)
    return EXIT_OK
