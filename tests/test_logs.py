"""records/logs.py on real public logs (tests/fixtures/, see its README) and on every format it reads;
records/tracks.py's formulas against hand-computed values; both tools' exit statuses on bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from records import compare, evidence, logs, tracks

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "logs"
TRACK = FIXTURES / "optimization"


def final_lines(folder):
    """The final val losses written in the logs, read with nothing but string splitting."""
    out = []
    for f in sorted(folder.glob("*.txt")):
        for line in f.read_text().splitlines():
            if " val_loss:" in line and line.startswith("step:"):
                step, total = line.split()[0][5:].split("/")
                if step == total:
                    out.append(float(line.split()[1].split(":")[1]))
    return out


# ----------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize(
    "name, steps, n, published_mean",
    [
        ("muonh", 3325, 10, 3.2782),
        ("skylight001", 3250, 8, 3.2771),
        ("contra_muon", 3225, 16, 3.2785),
        ("muloco_normuonh", 3210, 10, 3.2785),
    ],
)
def test_optimization_track_batches_give_the_published_figures(name, steps, n, published_mean):
    loaded = logs.load([str(TRACK / name)])
    assert not loaded.skips and len(loaded.runs) == n
    assert {r.num_iterations for r in loaded.runs} == {steps}
    assert {r.kind for r in loaded.runs} == {logs.OPTIMIZATION}
    mean = np.mean([r.final_val_loss for r in loaded.runs])
    assert mean == pytest.approx(np.mean(final_lines(TRACK / name)), abs=1e-12)
    assert round(mean, 4) == published_mean  # the README table prints four decimals
    run = loaded.runs[0]
    assert run.val_steps[-1] == steps
    assert run.train_time_ms > 60_000  # seconds in the log, milliseconds here
    # every one passes the track's per-batch rule, as published
    assert tracks.batch_rule(mean, n)["passes"]


def test_a_batch_stopped_at_one_step_is_read_with_at_step(capsys):
    folder = FIXTURES / "stopped" / "tailema_2720"
    loaded = logs.load([str(folder)])
    assert not loaded.runs and len(loaded.skips) == 10
    assert loaded.skips[0].reason == (
        "the log ends at step 2720 of 2900, before its final val line (a batch stopped at one step on purpose "
        "is read with --at-step 2720)"
    )
    loaded = logs.load([str(folder)], at_step=2720)
    assert len(loaded.runs) == 10 and {r.num_iterations for r in loaded.runs} == {2720}
    mean = np.mean([r.final_val_loss for r in loaded.runs])
    assert round(mean, 4) == 3.2786  # result #45 as published
    assert tracks.batch_rule(mean, 10)["passes"]
    assert all(r.val_steps[-1] == 2720 and len(r.curve) == len(r.val_steps) for r in loaded.runs)
    # a step without a validation in some run: those runs are skipped and say why
    (skip, *_) = logs.load([str(folder)], at_step=2719).skips
    assert skip.reason == "no val line at step 2719 (the log ends at step 2720 of 2900)"
    assert evidence.main([str(folder), "--at-step", "2720"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("every run's val loss at step 2720 (--at-step), not at its last step")


def test_medium_track_log_gives_the_record_figures():
    (run,) = logs.load([str(FIXTURES / "medium")]).runs
    assert (run.num_iterations, run.final_val_loss, run.train_time_ms) == (5590, 2.919161, 1404459.0)
    assert run.peak_memory_mib == 56556 and run.kind == logs.SPEEDRUN
    assert list(run.val_steps) == [*range(0, 5590, 125), 5590]


def test_short_track_logs_of_two_eras():
    runs = logs.load([str(FIXTURES / "short")]).runs
    assert sorted((r.num_iterations, r.final_val_loss) for r in runs) == [(1750, 3.2745), (6000, 3.2763)]
    assert {r.kind for r in runs} == {logs.SPEEDRUN}


def test_a_log_that_ends_early_says_where():
    (skip,) = logs.load([str(FIXTURES / "truncated")]).skips
    assert skip.kind == logs.UNFINISHED
    assert skip.reason == "the log ends at step 2010 of 3275, before its final val line"


def test_formats_of_val_lines(tmp_path):
    source = 'print(f"step:{step}/{n} val_loss:{v:.4f} train_time:{t:.0f}ms")\n' + "=" * 100 + "\n"
    cases = {
        "ms, no step_avg": ("step:10/10 val_loss:3.5 train_time:1234ms", 3.5, 1234.0),
        "seconds, 5 decimals": ("step:10/10 val_loss:3.27906 train_time:678.200s step_avg:203.97ms", 3.27906, 678200.0),
        "extra fields": (
            "step:10/10 val_loss:3.2779 val_ema_loss:3.2771 train_time:5.5s step_avg:1.00ms ema_beta:0.9",
            3.2779,
            5500.0,
        ),
        "nan step_avg": ("step:10/10 val_loss:3.2 train_time:12ms step_avg:nanms", 3.2, 12.0),
    }
    for name, (line, loss, ms) in cases.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(source + "step:0/10 val_loss:11.0 train_time:0ms\n" + line + "\n")
        run = logs.read_log(path)
        assert (run.final_val_loss, run.train_time_ms, run.num_iterations) == (loss, ms, 10), name
    # Windows line ends
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(
        (source + "step:10/10 val_loss:3.25 train_time:7ms step_avg:0.70ms\n").replace("\n", "\r\n").encode()
    )
    assert logs.read_log(crlf).final_val_loss == 3.25
    # ours: several files in the source part under "# ==== file: <path> ====" lines, then hyperparameters
    ours = tmp_path / "ours.txt"
    ours.write_text(
        "# ==== file: train_gpt.py ====\nx = 1\n# ==== file: speedrun/files.py ====\ny = 2\n"
        + "=" * 100
        + "\nRunning Python 3.12\n"
        + "=" * 100
        + "\nhyperparameters:\n  num_iterations = 10\n"
        "step:10/10 val_loss:4.000000 train_time:10ms step_avg:1.00ms\n"
    )
    assert logs.read_log(ours).kind == logs.OURS
    # a val line of an unknown shape is named, with its line number
    odd = tmp_path / "odd.txt"
    odd.write_text(source + "step:0/10 val_loss:11.0 train_time:0ms\nstep:10/10 val_loss=3.2 time 12ms\nend\n")
    result = logs.read_log(odd)
    assert result.kind == logs.UNKNOWN_FORMAT
    assert result.reason.startswith(
        "line 4 is a val line in a format this reader does not know: 'step:10/10 val_loss=3.2"
    )


# ----------------------------------------------------------------------------------- the track's rules


def test_track_formulas_against_hand_computed_values():
    # per batch: (3.28 - 3.2778) * sqrt(4) = 0.0044 >= 0.004; 3.2781 with 4 runs: 0.0038, fails
    assert tracks.batch_statistic(3.2778, 4) == pytest.approx(0.0044, abs=1e-12)
    assert tracks.batch_rule(3.2778, 4)["passes"] and not tracks.batch_rule(3.2781, 4)["passes"]
    # the README's third calculation: #12 vs #6, loss diff -0.0002, 50 steps, n = 20 each: 0.00648
    score = tracks.pairwise_score(3.2788, 3.2790, 3375, 3325, 20, 20, tracks.SLOPE)
    assert score == pytest.approx((-0.0002 + 50 / 100 * 0.0045) / math.sqrt(2 / 20), abs=1e-12)
    assert round(score, 5) == 0.00648
    assert tracks.SLOPE == pytest.approx(0.000045, rel=1e-12)
    # the example: B 100 steps shorter with a 0.006 higher loss, n = 10 each: -0.0015 / sqrt(0.2)
    score = tracks.pairwise_score(3.2700, 3.2760, 5000, 4900, 10, 10, tracks.SLOPE)
    assert score == pytest.approx(-0.0015 / math.sqrt(0.2), abs=1e-12) and abs(score) < tracks.MARGIN


def test_published_pairwise_verdicts(capsys):
    code = compare.main(
        [str(TRACK / "skylight001"), str(TRACK / "contra_muon"), str(TRACK / "muloco_normuonh"), "--json"]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    report = json.loads(out)
    assert report["target"] == 3.28 and report["track_rules"]
    pairs = {(p["a"], p["b"]): p["step_adjusted"] for p in report["pairs"]}
    # #11 against #9: "not pairwise statsig"
    assert pairs["skylight001", "contra_muon"]["verdict"] == "no significant difference"
    # #13 against #11: 0.00167 from means rounded to 4 decimals; rounding moves the score by at most
    # 2 * 0.00005 / sqrt(1/16 + 1/10)
    adj = pairs["contra_muon", "muloco_normuonh"]
    assert adj["score"] == pytest.approx(0.00167, abs=2 * 0.00005 / math.sqrt(1 / 16 + 1 / 10))
    assert adj["verdict"] == "no significant difference"


# ------------------------------------------------------------------------------ exit statuses


def cli(tool, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "records" / tool), *map(str, args)], capture_output=True, text=True
    )


@pytest.mark.parametrize("tool", ["evidence.py", "compare.py"])
def test_bad_input_exits_2_with_one_paragraph(tool, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "x.txt").write_text("=" * 100 + "\nstep:5/5 val_loss=3.1 time=2s\nend\n")
    results = {
        "empty": cli(tool, empty),
        "unknown format": cli(tool, unknown),
        "--target nan": cli(tool, TRACK / "muonh", "--target", "nan"),
    }
    for name, done in results.items():
        assert done.returncode == 2, (name, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.splitlines()[-1].startswith("error: "), name
    assert "line 2 is a val line in a format this reader does not know" in results["unknown format"].stderr
    assert "--target: expected a number, got 'nan'" in results["--target nan"].stderr
    done = cli(tool, TRACK / "muonh")
    assert done.returncode == 0 and "3.28" in done.stdout


def test_evidence_prints_the_track_rule_and_the_target(capsys):
    assert evidence.main([str(TRACK / "muonh")]) == 0
    out = capsys.readouterr().out
    assert "optimization track rule: (3.28 - mean) * sqrt(10) = 0.00566, >= 0.004: passes" in out
    assert out.rstrip().endswith("target 3.28: the default for public optimization-track logs")


def test_at_step_in_our_summaries(tmp_path):
    vals = [{"step": s, "val_loss": 4.0 - s / 100, "train_time_ms": 10.0 * s} for s in (0, 25, 50, 75, 100)]
    summary = {
        "format": "speedrun-run/1",
        "status": "finished",
        "num_iterations": 100,
        "final_val_loss": 3.0,
        "train_time_ms": 1000.0,
        "val_losses": vals,
    }
    (tmp_path / "r.json").write_text(json.dumps(summary))
    run = logs.read_summary(tmp_path / "r.json", at_step=50)
    assert (run.final_val_loss, run.train_time_ms, run.num_iterations) == (3.5, 500.0, 50)
    assert list(run.val_steps) == [0, 25, 50]
    assert logs.read_summary(tmp_path / "r.json", at_step=60).reason == "no validation at step 60 in the summary"


@pytest.mark.parametrize("tool", [evidence, compare])
def test_an_unreadable_file_exits_2(tool, tmp_path, capsys, monkeypatch):
    """Permissions do not stop root (CI may run as root), so the failure of reading is simulated."""
    folder = tmp_path / "runs"
    folder.mkdir()
    locked = folder / "r.txt"
    locked.write_text("=" * 100 + "\nstep:1/1 val_loss:3.0 train_time:1ms\n")
    real = Path.read_bytes

    def read_bytes(self):
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    assert tool.main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: cannot read {locked}: Permission denied. Check its permissions, or leave it out of the paths.\n"
    )
