"""records/compare.py: per-batch statistics and pairwise tests against independent computations (numpy,
scipy.stats, hand-worked numbers), the target-crossing step, the step-adjusted rule and its sign, the
slope estimate, skipped runs, weight drift, --json/--markdown/--plot and user errors."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from records import compare

REPO = Path(__file__).resolve().parent.parent
TARGET = 2.92
GROUPS = ("embed", "head", "attention", "mlp", "scalars")


def summary(
    folder,
    run_id,
    final,
    steps=100,
    ms_per_step=10.0,
    val_every=25,
    status="finished",
    memory=1500,
    optimizer="muon",
    curve=None,
    drift=None,
):
    """A run summary in train_gpt.py's documented format (speedrun-run/1), written directly.

    curve: {step: val_loss} (the final step's loss is `final`); by default a line from final + 1 at step 0.
    drift: f(step) -> {group: {"relative_distance": x, "cosine": y}}, stored in every val_losses entry.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if curve is None:
        curve = {s: final + (steps - s) / steps for s in range(0, steps, val_every)}
    curve = {**curve, steps: final}
    vals = []
    for s in sorted(curve):
        entry = {"step": s, "val_loss": curve[s], "train_time_ms": s * ms_per_step}
        if drift is not None:
            entry["weight_drift"] = drift(s)
        vals.append(entry)
    data = {
        "format": "speedrun-run/1",
        "run_id": run_id,
        "record": folder.name,
        "status": status,
        "log_file": f"{run_id}.txt",
        "hyperparameters": {"num_iterations": steps} | ({"matrix_optimizer": optimizer} if optimizer else {}),
        "environment": {},
        "num_iterations": steps,
        "val_losses": vals if status == "finished" else vals[:2],
        "final_val_loss": final if status == "finished" else None,
        "train_time_ms": steps * ms_per_step if status == "finished" else None,
        "step_avg_ms": ms_per_step,
        "steps_done": steps,
        "peak_memory_allocated_mib": memory,
        "peak_memory_reserved_mib": memory,
    }
    (folder / f"{run_id}.json").write_text(json.dumps(data))


def public_log(path, final, steps=100, ms_per_step=10.0, val_every=25, memory=None, stop_at=None):
    """A log in the public speedrun's format (source, a rule, versions, a rule, step lines)."""
    lines = [
        'print0(f"step:{step}/{n} val_loss:{v:.4f} train_time:{t:.0f}ms step_avg:{a:.2f}ms")',
        "=" * 100,
        "Running Python 3.12",
        "=" * 100,
    ]
    for s in range(steps + 1):
        t = s * ms_per_step
        if s % val_every == 0 or s == steps:
            lines.append(
                f"step:{s}/{steps} val_loss:{final + (steps - s) / steps:.4f} train_time:{t:.0f}ms "
                f"step_avg:{t / max(s, 1):.2f}ms"
            )
        if s == stop_at:
            break
    if memory is not None and stop_at is None:
        lines.append(f"peak memory allocated: {memory} MiB reserved: {memory + 100} MiB")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def batch(folder, losses, ms_per_step, steps=100, **kw):
    for i, (loss, ms) in enumerate(zip(losses, ms_per_step)):
        summary(folder, f"r{i}", loss, steps=steps, ms_per_step=ms, **kw)
    return folder


def run(argv, capsys):
    code = compare.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def report_of(argv, capsys):
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def t_interval(x):
    x = np.asarray(x, dtype=float)
    half = stats.t.ppf(0.995, len(x) - 1) * np.std(x, ddof=1) / math.sqrt(len(x))
    return [x.mean() - half, x.mean() + half]


# ----------------------------------------------------------------------------------------- batches


def test_batch_statistics_match_independent_computations(tmp_path, capsys):
    rng = np.random.default_rng(0)
    loss_a = 2.9195 + 0.0008 * rng.standard_normal(8)
    ms_a = 250 + rng.standard_normal(8)
    loss_b = 2.93 + 0.001 * rng.standard_normal(6)
    ms_b = 240 + rng.standard_normal(6)
    a = batch(tmp_path / "muon", loss_a, ms_a, memory=40000)
    b = batch(tmp_path / "adamw", loss_b, ms_b, optimizer="adam", memory=None)
    report = report_of([a, b], capsys)
    assert report["format"] == "speedrun-compare/1" and report["target"] == TARGET
    first, second = report["batches"]
    assert (first["label"], first["matrix_optimizer"], second["label"]) == ("muon (muon)", "muon", "adamw (adam)")
    for got, loss, ms in ((first, loss_a, ms_a), (second, loss_b, ms_b)):
        assert (got["n"], got["skipped"], got["steps"], got["few_runs"]) == (len(loss), 0, 100, False)
        v = got["val_loss"]
        assert v["mean"] == pytest.approx(np.mean(loss), rel=1e-12)
        assert v["ci99"] == pytest.approx(t_interval(loss), rel=1e-10)
        assert v["pvalue"] == pytest.approx(stats.ttest_1samp(loss, TARGET, alternative="less").pvalue, rel=1e-9)
        minutes = ms * 100 / 60_000
        assert got["train_time_min"]["mean"] == pytest.approx(minutes.mean(), rel=1e-12)
        assert got["train_time_min"]["ci99"] == pytest.approx(t_interval(minutes), rel=1e-10)
        assert got["ms_per_step"]["mean"] == pytest.approx(ms.mean(), rel=1e-12)
        assert got["ms_per_step"]["ci99"] == pytest.approx(t_interval(ms), rel=1e-10)
    assert first["peak_memory_allocated_mib"] == {"mean": 40000, "max": 40000, "runs": 8}
    assert second["peak_memory_allocated_mib"] is None

    code, out, _ = run([a, b], capsys)
    row = next(line for line in out.splitlines() if line.startswith("muon (muon)"))
    lo, hi = t_interval(loss_a)
    assert f"{np.mean(loss_a):.6f} [{lo:.6f}, {hi:.6f}]" in row and "40000" in row
    assert re.search(r"\bn/a\b", next(line for line in out.splitlines() if line.startswith("adamw (adam)")))


def test_mean_curve_and_target_crossing_by_hand(tmp_path, capsys):
    # Two runs validated at 0, 100, 200, 300 (one also at 150, not shared); 10 ms per step.
    a = tmp_path / "a"
    summary(a, "r0", 2.91, steps=300, curve={0: 11.0, 100: 3.5, 150: 3.2, 200: 2.95})
    summary(a, "r1", 2.90, steps=300, curve={0: 11.0, 100: 3.3, 200: 2.93})
    # mean curve: 11.0, 3.4, 2.94, 2.905. It reaches 2.92 between steps 200 and 300:
    # 200 + (2.94 - 2.92) / (2.94 - 2.905) * 100 = 257.142857..., at 2571.42857 ms = 0.0428571 min.
    b = tmp_path / "b"
    summary(b, "r0", 2.93, steps=300, curve={0: 11.0, 100: 3.5, 200: 3.0})
    summary(b, "r1", 2.94, steps=300, curve={0: 11.0, 100: 3.5, 200: 3.0})
    first, second = report_of([a, b], capsys)["batches"]
    curve = first["mean_curve"]
    assert curve["step"] == [0, 100, 200, 300]
    assert curve["val_loss_mean"] == pytest.approx([11.0, 3.4, 2.94, 2.905])
    assert curve["val_loss_min"] == pytest.approx([11.0, 3.3, 2.93, 2.90])
    assert curve["val_loss_max"] == pytest.approx([11.0, 3.5, 2.95, 2.91])
    assert curve["train_time_ms_mean"] == pytest.approx([0, 1000, 2000, 3000])
    assert first["target_step"] == pytest.approx(257.142857, abs=1e-6)
    assert first["target_time_min"] == pytest.approx(0.0428571, abs=1e-7)
    assert second["target_step"] is None and second["target_time_min"] is None

    out = run([a, b], capsys)[1]
    assert "257 (0.04 min)" in out and "not reached" in out


def test_skipped_and_unfinished_runs_are_counted(tmp_path, capsys):
    folder = tmp_path / "soap"
    batch(folder, [2.92, 2.921, 2.922], [300, 301, 302], optimizer="soap")
    summary(folder, "dead", 0, status="diverged")
    summary(folder, "killed", 0, status="running")
    summary(folder, "stopped", 0, status="interrupted")
    public_log(folder / "cut.txt", 2.92, stop_at=60)  # a public log that ends early
    b = report_of([folder], capsys)["batches"][0]
    assert (b["n"], b["skipped"]) == (3, 4)
    assert b["skipped_by_kind"] == {"diverged": 1, "interrupted": 1, "unfinished": 2}
    assert b["few_runs"] is True and b["note"].startswith("only 3 runs")
    code, out, err = run([folder], capsys)
    row = next(line for line in out.splitlines() if line.startswith("soap (soap)"))
    assert "3*" in row and "4: 1 diverged, 1 interrupted, 2 unfinished" in row
    assert "soap (soap): only 3 runs: with fewer than 5" in out
    assert err.count("warning: skipped") == 4


def test_public_logs_make_a_batch(tmp_path, capsys):
    folder = tmp_path / "public"
    for i, loss in enumerate([2.9188, 2.9196, 2.9201, 2.9192, 2.9199]):
        public_log(folder / f"run{i}.txt", loss, steps=200, ms_per_step=100 + i, memory=30734 + i)
    b = report_of([folder], capsys)["batches"][0]
    assert (b["label"], b["n"], b["steps"], b["matrix_optimizer"]) == ("public", 5, 200, None)
    assert b["peak_memory_allocated_mib"] == {"mean": 30736, "max": 30738, "runs": 5}
    assert b["mean_curve"]["step"] == [0, 25, 50, 75, 100, 125, 150, 175, 200]
    assert b["weight_drift"] is None


def test_weight_drift_is_averaged_over_runs(tmp_path, capsys):
    def drift(scale):
        return lambda s: {
            g: {"relative_distance": scale * k * s, "cosine": 1 - scale * k * s} for k, g in enumerate(GROUPS, 1)
        }

    folder = tmp_path / "drift"
    summary(folder, "r0", 2.93, drift=drift(1e-3))
    summary(folder, "r1", 2.94, drift=drift(3e-3))
    plain = batch(tmp_path / "plain", [2.95, 2.96], [10, 10])
    with_drift, without = report_of([folder, plain], capsys)["batches"]
    assert without["weight_drift"] is None
    assert list(with_drift["weight_drift"]) == list(GROUPS)
    mlp = with_drift["weight_drift"]["mlp"]  # k = 4; mean of the two scales is 2e-3
    assert mlp["step"] == [0, 25, 50, 75, 100]
    assert mlp["relative_distance"] == pytest.approx([2e-3 * 4 * s for s in mlp["step"]])
    assert mlp["cosine"] == pytest.approx([1 - 2e-3 * 4 * s for s in mlp["step"]])


# ------------------------------------------------------------------------------------------- pairs


def test_welch_differences_match_scipy(tmp_path, capsys):
    rng = np.random.default_rng(1)
    loss_a, loss_b = 2.919 + 0.0008 * rng.standard_normal(7), 2.921 + 0.0012 * rng.standard_normal(5)
    ms_a, ms_b = 250 + 2 * rng.standard_normal(7), 245 + 1 * rng.standard_normal(5)
    a, b = batch(tmp_path / "a", loss_a, ms_a), batch(tmp_path / "b", loss_b, ms_b)
    (pair,) = report_of([a, b], capsys)["pairs"]
    assert (pair["a"], pair["b"]) == ("a (muon)", "b (muon)")
    for key, x, y in (("val_loss", loss_a, loss_b), ("train_time_min", ms_a * 100 / 60_000, ms_b * 100 / 60_000)):
        expected = stats.ttest_ind(x, y, equal_var=False)
        assert pair[key]["diff"] == pytest.approx(x.mean() - y.mean(), rel=1e-10)
        assert pair[key]["pvalue"] == pytest.approx(expected.pvalue, rel=1e-9)
    # our runs, equal steps: no adjustment, no track score; the verdict is Welch's test at p < 0.01
    adj = pair["step_adjusted"]
    assert adj["steps_diff"] == 0 and adj["score"] is None and adj["threshold"] is None
    assert adj["adjusted_diff"] == pytest.approx(loss_a.mean() - loss_b.mean(), rel=1e-10)
    p = stats.ttest_ind(loss_a, loss_b, equal_var=False).pvalue
    assert adj["welch"]["pvalue"] == pytest.approx(p, rel=1e-9)
    assert adj["verdict"] == ("a (muon) better" if p < 0.01 else "no significant difference")


def test_one_run_per_batch_gives_no_test_and_says_why(tmp_path, capsys):
    a, b = batch(tmp_path / "runA", [2.93], [10]), batch(tmp_path / "runB", [2.95], [10])
    report = report_of([a, b], capsys)
    (pair,) = report["pairs"]
    assert pair["val_loss"] is None and pair["train_time_min"] is None
    adj = pair["step_adjusted"]
    assert adj["verdict"] is None and adj["welch"] is None and "at least 2 runs in each batch" in adj["note"]
    out = run([a, b], capsys)[1]
    assert "runA better" not in out and "runB better" not in out
    assert "one run, so no interval, t-test or Welch test" in out
    assert out.startswith("Compared 2 batches:") and "1 runs" not in out
    assert "[n/a: 1 run]" in out


def symmetric(mean, n):
    """n losses with exactly this mean (pairs mean +- 0.0005)."""
    return [mean + 0.0005 * (1 if i % 2 else -1) for i in range(n)]


def track_log(path, final, steps, val_every=125, decimals=5):
    """A log in the optimization track's format: the time in seconds, five decimals."""
    lines = ["# source", "=" * 100, "Running PyTorch 2.11.0", "=" * 100]
    for s in list(range(0, steps, val_every)) + [steps]:
        loss = final + 0.5 * (steps - s) / steps
        lines.append(f"step:{s}/{steps} val_loss:{loss:.{decimals}f} train_time:{s * 0.15:.3f}s step_avg:150.00ms")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def track_batch(folder, losses, steps):
    for i, loss in enumerate(losses):
        track_log(folder / f"r{i}.txt", loss, steps)
    return folder


def test_step_adjusted_rule_worked_example(tmp_path, capsys):
    """The optimization track's rule, for its logs: B beats A when
    (loss_A - loss_B + (steps_A - steps_B) / 100 * 0.0045) / sqrt(1/n_A + 1/n_B) >= 0.004.

    A: 4 runs of 5000 steps, mean 3.2700. B: 4 runs of 4900 steps, mean 3.2680. Published slope 0.000045 per
    step. A ran 100 more steps, so its loss at 4900 steps would be about 3.2700 + 100 * 0.000045 = 3.2745:
    adjusted = 3.2700 - 3.2680 + 0.0045 = 0.0065, score = 0.0065 / sqrt(1/4 + 1/4) = 0.0091924 >= 0.004:
    B is better. (Without the steps, 0.002 / 0.7071 = 0.0028 would not be significant.)
    """
    a = track_batch(tmp_path / "A", symmetric(3.2700, 4), 5000)
    b = track_batch(tmp_path / "B", symmetric(3.2680, 4), 4900)
    report = report_of([a, b], capsys)
    assert report["target"] == 3.28 and report["track_rules"]
    (pair,) = report["pairs"]
    adj = pair["step_adjusted"]
    assert (adj["steps_diff"], adj["slope_source"]) == (100, "published")
    assert adj["slope"] == pytest.approx(0.0045 / 100, rel=1e-12)
    assert adj["adjusted_diff"] == pytest.approx(0.0065, abs=1e-12)
    assert adj["score"] == pytest.approx(0.0091924, abs=1e-7)
    assert adj["verdict"] == "B better"
    shifted = stats.ttest_ind(np.array(symmetric(3.27, 4)) + 0.0045, symmetric(3.268, 4), equal_var=False)
    assert adj["welch"]["pvalue"] == pytest.approx(shifted.pvalue, rel=1e-9)
    # the per-batch rule: (3.28 - 3.2680) * sqrt(4) = 0.024 >= 0.004
    rule = report["batches"][1]["track_rule"]
    assert rule["statistic"] == pytest.approx(0.024, abs=1e-12) and rule["passes"]

    # The other order flips the sign, not the verdict.
    (pair,) = report_of([b, a], capsys)["pairs"]
    assert pair["step_adjusted"]["score"] == pytest.approx(-0.0091924, abs=1e-7)
    assert pair["step_adjusted"]["verdict"] == "B better"

    # B 100 steps fewer but 0.0030 worse: adjusted = 3.2700 - 3.2730 + 0.0045 = 0.0015, score 0.0021213: no verdict.
    worse = track_batch(tmp_path / "C", symmetric(3.2730, 4), 4900)
    (pair,) = report_of([a, worse], capsys)["pairs"]
    assert pair["step_adjusted"]["score"] == pytest.approx(0.0021213, abs=1e-7)
    assert pair["step_adjusted"]["verdict"] == "no significant difference"
    # A stricter threshold takes the verdict of the first example away.
    (pair,) = report_of([a, b, "--threshold", "0.01"], capsys)["pairs"]
    assert pair["step_adjusted"]["verdict"] == "no significant difference"
    out = run([a, b], capsys)[1]
    row = r"A\s+B\s+.*\+100\s+4\.5e-05 \(published\)\s+\+0\.006500\s+\+0\.00919\s+B better"
    assert re.search(row, out)


def test_our_runs_get_no_track_constant(tmp_path, capsys):
    """The issue's example: B 100 steps shorter with a 0.006 higher loss, n = 10 each. Our runs: no slope by
    default, so no adjusted comparison; with --slope 0.000045 Welch's test of the shifted losses decides."""
    a = batch(tmp_path / "A", symmetric(2.9200, 10), [10] * 10, steps=5000, val_every=1000)
    b = batch(tmp_path / "B", symmetric(2.9260, 10), [10] * 10, steps=4900, val_every=980)
    report = report_of([a, b], capsys)
    assert report["target"] == 2.92 and not report["track_rules"]
    adj = report["pairs"][0]["step_adjusted"]
    assert adj["adjusted_diff"] is None and adj["verdict"] is None and "give --slope" in adj["note"]
    adj = report_of([a, b, "--slope", "0.000045"], capsys)["pairs"][0]["step_adjusted"]
    assert adj["adjusted_diff"] == pytest.approx(-0.0015, abs=1e-12) and adj["score"] is None
    p = stats.ttest_ind(np.array(symmetric(2.92, 10)) + 0.0045, symmetric(2.926, 10), equal_var=False).pvalue
    assert adj["welch"]["pvalue"] == pytest.approx(p, rel=1e-9)
    assert adj["verdict"] == ("A (muon) better" if p < 0.01 else "no significant difference")


def test_slope_fitted_over_a_range_with_its_interval(tmp_path, capsys):
    a_curve = {0: 11.0, 100: 3.2, 200: 3.05, 300: 2.99, 400: 2.95}  # final (500): 2.93
    b_curve = {0: 11.0, 90: 3.3, 180: 3.1, 270: 3.0, 360: 2.96, 450: 2.945}  # final (540): 2.925
    for folder, curve, final, steps in ((tmp_path / "A", a_curve, 2.93, 500), (tmp_path / "B", b_curve, 2.925, 540)):
        for i in range(2):
            summary(folder, f"r{i}", final, steps=steps, curve=curve)
    # Independent: least squares of loss on step with one intercept per batch over the steps 150-460.
    xa, ya = [200, 300, 400], [3.05, 2.99, 2.95]
    xb, yb = [180, 270, 360, 450], [3.1, 3.0, 2.96, 2.945]
    design = np.array([[x, 1, 0] for x in xa] + [[x, 0, 1] for x in xb], dtype=float)
    y = np.array(ya + yb)
    coef, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    se = math.sqrt(rss[0] / (7 - 3) * np.linalg.inv(design.T @ design)[0, 0])
    half = stats.t.ppf(0.995, 4) * se
    (pair,) = report_of([tmp_path / "A", tmp_path / "B", "--fit-slope", "150:460"], capsys)["pairs"]
    adj = pair["step_adjusted"]
    assert adj["slope_source"] == "fitted over steps 150-460"
    assert adj["slope"] == pytest.approx(-coef[0], rel=1e-10)
    assert adj["slope_ci99"] == pytest.approx([-coef[0] - half, -coef[0] + half], rel=1e-9)
    assert adj["adjusted_diff"] == pytest.approx(2.93 - 2.925 + (500 - 540) * -coef[0], rel=1e-10)
    out = run([tmp_path / "A", tmp_path / "B", "--fit-slope", "150:460"], capsys)[1]
    assert f"{-coef[0]:.3g} [{-coef[0] - half:.3g}, {-coef[0] + half:.3g}] (fitted over steps 150-460)" in out
    # a range without two validations per curve gives no slope, and says so
    adj = report_of([tmp_path / "A", tmp_path / "B", "--fit-slope", "410:420"], capsys)["pairs"][0]["step_adjusted"]
    assert adj["slope"] is None and adj["note"] == "too few validations in the --fit-slope range"
    # a given slope of 0 asks for no adjustment
    adj = report_of([tmp_path / "A", tmp_path / "B", "--slope", "0"], capsys)["pairs"][0]["step_adjusted"]
    assert adj["adjusted_diff"] == pytest.approx(2.93 - 2.925, rel=1e-10)


# ------------------------------------------------------------------------------------------ outputs


def test_markdown_and_json_outputs(tmp_path, capsys):
    a = batch(tmp_path / "muon", [2.919, 2.9195, 2.9188, 2.9201, 2.9193], [250, 251, 249, 250, 252])
    b = batch(tmp_path / "adam", [2.93, 2.931, 2.929, 2.9305, 2.9298], [240, 241, 239, 240, 242], optimizer="adam")
    md, png = tmp_path / "cmp.md", tmp_path / "cmp.png"
    code, out, _ = run([a, b, "--markdown", md, "--plot", png], capsys)
    assert code == 0
    text = md.read_text()
    report = report_of([a, b], capsys)
    v = report["batches"][1]["val_loss"]
    assert text.startswith("## Optimizer comparison\n")
    assert f"| adam (adam) | 5 | 0 | 100 | {v['mean']:.6f} [{v['ci99'][0]:.6f}, {v['ci99'][1]:.6f}] |" in text
    assert "| muon (muon) | adam (adam) |" in text and "](cmp.png)" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # never overwritten without --force; --force rewrites
    code, _, err = run([a, b, "--markdown", md], capsys)
    assert code == 2 and "already exists; give --force" in err and md.read_text() == text
    assert run([b, a, "--markdown", md, "--force"], capsys)[0] == 0
    assert md.read_text() != text
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    json.loads(run([a, b, "--json"], capsys)[1])  # --json prints valid JSON alone


def test_plot_zooms_near_the_target_and_falls_back_for_toy_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    near = batch(tmp_path / "near", [2.919, 2.921, 2.918], [250, 251, 252], memory=None)
    toy = batch(tmp_path / "toy", [6.51, 6.53], [900, 950], memory=None, optimizer=None)

    fig = compare.figure(report_of([near], capsys))
    by_step, by_time, speed = fig.axes  # no memory logged: no memory panel
    # near the target: from the lowest run (2.918, below 2.92) to 2.92 + 0.25, widened by 5% of 0.252 each side
    assert by_step.get_ylim() == pytest.approx((2.918 - 0.0126, 3.17 + 0.0126), abs=1e-9)
    assert [p.get_height() for p in speed.patches] == pytest.approx([251.0])
    assert len(speed.lines) == 3  # the error bar and its two caps

    report = report_of([toy], capsys)
    fig = compare.figure(report)
    lo, hi = fig.axes[0].get_ylim()
    lows, highs = report["batches"][0]["mean_curve"]["val_loss_min"], report["batches"][0]["mean_curve"]["val_loss_max"]
    assert lo < min(lows) and hi > max(highs) and lo > TARGET  # the data range, not the target
    assert "whole range" in fig.axes[0].get_title()
    speed = fig.axes[2]  # two runs: the ms-per-step interval reaches below zero, so no error bar and no cap
    assert len(speed.lines) == 0 and "no interval for toy: too few runs" in speed.get_title()

    def drift(s):
        return {g: {"relative_distance": 1e-3 * s, "cosine": 1 - 1e-3 * s} for g in GROUPS[:3]}

    summary(tmp_path / "drift", "r0", 2.93, drift=drift)
    fig = compare.figure(report_of([near, tmp_path / "drift"], capsys))
    assert len(fig.axes) == 4 + 2 * 3  # the drift batch logged its memory: the memory panel is back
    assert fig.axes[4].get_title() == "embed: ||w - w0|| / ||w0||"
    assert fig.axes[-1].get_title() == "attention: cos(w, w0)"


# ------------------------------------------------------------------------------------------- errors


def test_user_errors_exit_2_with_one_paragraph(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    skipped = tmp_path / "skipped"
    summary(skipped, "dead", 0, status="diverged")
    good = batch(tmp_path / "good", [2.92, 2.93], [10, 10])
    (tmp_path / "file.txt").write_text("x")
    cases = [
        ([tmp_path / "nope"], r"error: .*nope does not exist\. Give one folder of runs"),
        ([tmp_path / "file.txt"], r"error: .*file\.txt is not a folder\."),
        ([empty], r"error: no finished runs in the batch empty \(.*\): no logs or summaries were found\."),
        ([skipped], r"error: no finished runs in the batch skipped \(.*\): the only input was skipped"),
        ([good, good], r"error: .*good is given twice"),
        ([good, "--markdown", tmp_path / "no" / "x.md"], r"error: --markdown .*: the folder .*no does not exist"),
        ([good, "--plot", good], r"error: --plot .*good is a folder"),
    ]
    for argv, expected in cases:
        code, out, err = run(argv, capsys)
        assert (code, out) == (2, ""), argv
        assert re.search(expected, err.splitlines()[-1]), err
        assert "Traceback" not in err
    for argv, expected in [
        ([], "the following arguments are required: FOLDER"),
        ([good, "--slope", "-1"], "argument --slope: expected a loss per step, a number >= 0, got '-1'"),
        ([good, "--threshold", "0"], "argument --threshold: expected a number > 0, got '0'"),
        ([good, "--target", "nan"], "argument --target: expected a number, got 'nan'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            compare.main([str(a) for a in argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err == f"error: {expected}. See python records/compare.py --help.\n"

    # as a script: no traceback, one line
    done = subprocess.run(
        [sys.executable, str(REPO / "records" / "compare.py"), str(empty)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_folders_of_one_name_are_told_apart(tmp_path, capsys):
    a = batch(tmp_path / "x" / "muon", [2.92, 2.921], [10, 10], optimizer=None)
    b = batch(tmp_path / "y" / "muon", [2.93, 2.931], [10, 10], optimizer=None)
    labels = [x["label"] for x in report_of([a, b], capsys)["batches"]]
    assert labels == [str(a), str(b)]
