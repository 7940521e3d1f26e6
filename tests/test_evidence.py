"""records/evidence.py: reading runs, every statistic against an independent computation, the text
layout, skipping of broken inputs, the baseline comparison, small batches, --markdown and --plot."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import train_gpt
from records import evidence, logs

REPO = Path(__file__).resolve().parent.parent
TARGET = 2.92

# A public log starts with the training script's source, whose f-strings hold the step formats. The
# docstring holds a complete final val line at column 0: only lines after the separator may count.
PUBLIC_SOURCE = '''import os
"""An example of the last line of a log:
step:{N}/{N} val_loss:1.000000 train_time:1ms step_avg:0.01ms
"""
print0(f"step:{step}/{n} val_loss:{val_loss:.6f} train_time:{ms:.0f}ms step_avg:{ms/max(step, 1):.2f}ms")
print0(f"step:{step+1}/{train_steps} train_time:{approx_time:.0f}ms step_avg:{approx_time/timed_steps:.2f}ms")
print0("DIVERGED" if bad else "fine")
'''


def public_log(path, final_loss, train_ms, steps=100, val_every=25, stop_after=None, extra=()):
    """A log in the public speedrun's format; stop_after cuts it after that many lines of steps."""
    lines = [
        PUBLIC_SOURCE.replace("{N}", str(steps)),
        "=" * 100,
        "Running Python 3.12.7",
        "| NVIDIA-SMI 570 |",
        "=" * 100,
    ]
    for step in range(steps + 1):
        t = train_ms * step / steps
        if step % val_every == 0 or step == steps:
            loss = final_loss + 0.5 * (steps - step) / steps
            lines.append(
                f"step:{step}/{steps} val_loss:{loss:.6f} train_time:{t:.0f}ms step_avg:{t / max(step, 1):.2f}ms"
            )
        if step < steps:
            t1 = train_ms * (step + 1) / steps
            lines.append(f"step:{step + 1}/{steps} train_time:{t1:.0f}ms step_avg:{t1 / (step + 1):.2f}ms")
    lines += list(extra)
    body = "\n".join(lines) + "\n"
    if stop_after is not None:
        head, _, rest = body.partition("=" * 100)
        body = head + "=" * 100 + "\n".join(rest.split("\n")[: stop_after + 4])
    path.write_text(body)
    return path


def our_run(
    folder, run_id, final_loss, train_ms, steps=50, val_every=10, status="finished", stop_at=None, diverge_at=None
):
    """A run logged through train_gpt.py's own RunLog: <run id>.txt and <run id>.json."""
    log = train_gpt.RunLog(folder, run_id, console=False)
    source = Path(train_gpt.__file__).read_text(encoding="utf-8")
    log.set_header(
        source, {"python": "3.11", "nvidia-smi": "GPU 0\nGPU 1"}, {"num_iterations": steps, "val_loss_every": val_every}
    )
    for step in range(steps + 1):
        t = train_ms * step / steps
        if step % val_every == 0 or step == steps:
            log.log_val(step, steps, final_loss + 0.5 * (steps - step) / steps, t)
        if step == steps or step == stop_at:
            break
        if step == diverge_at:
            log.write(f"DIVERGED non-finite train loss nan at step {step}; stopping.")
            log.finish("diverged")
            return
        log.log_train(step + 1, steps, train_ms * (step + 1) / steps)
    if stop_at is not None:  # killed: the summary stays "running"
        log.txt.close()
        return
    log.log_memory(1000, 1200)
    log.finish(status)


def sample(n, mean, seed):
    """Final losses and train times as the logs write them (6 decimals, whole ms), so exact."""
    rng = np.random.default_rng(seed)
    losses = np.round(mean + 0.0008 * rng.standard_normal(n), 6)
    times = np.round(1_400_000 + 8_000 * rng.standard_normal(n))
    return losses, times


@pytest.fixture
def batch(tmp_path):
    """30 public-format logs named so that their sorted order is the order of `losses`."""
    losses, times = sample(30, 2.9197, seed=1)
    folder = tmp_path / "batch"
    folder.mkdir()
    for i, (loss, ms) in enumerate(zip(losses, times)):
        public_log(folder / f"run{i:02d}.txt", loss, ms)
    return folder, losses, times


def run_cli(argv, capsys):
    code = evidence.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(argv, capsys):
    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out), err


# ----------------------------------------------------------------------------------- independent


def mean_sd(x):
    n = len(x)
    m = sum(x) / n
    return m, math.sqrt(sum((v - m) ** 2 for v in x) / (n - 1))


def t_interval(x):
    m, s = mean_sd(x)
    half = stats.t.ppf(0.995, len(x) - 1) * s / math.sqrt(len(x))
    return m - half, m + half


def p_below(x, target):
    m, s = mean_sd(x)
    return stats.t.cdf((m - target) / (s / math.sqrt(len(x))), len(x) - 1)


def bootstrap_ps(x, target, size, samples, seed):
    """Resample like the issue says, test each resample through the t distribution by hand."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(samples, size))
    s = x[idx]
    m = s.mean(axis=1)
    sd = np.sqrt(((s - m[:, None]) ** 2).sum(axis=1) / (size - 1))
    return stats.t.cdf((m - target) / (sd / np.sqrt(size)), size - 1)


def welch_by_hand(a, b):
    ma, sa = mean_sd(a)
    mb, sb = mean_sd(b)
    va, vb = sa**2 / len(a), sb**2 / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    se = math.sqrt(va + vb)
    t = (ma - mb) / se
    half = stats.t.ppf(0.995, df) * se
    return ma - mb, (ma - mb - half, ma - mb + half), 2 * stats.t.sf(abs(t), df)


# ----------------------------------------------------------------------------------------- stats


def test_every_statistic_matches_an_independent_computation(batch, capsys):
    folder, losses, times = batch
    report, err = run_json([folder], capsys)
    assert err == ""
    assert (report["n"], report["skipped"], report["target"], report["steps"]) == (30, 0, TARGET, 100)

    v = report["val_loss"]
    m, s = mean_sd(list(losses))
    assert v["mean"] == pytest.approx(m, rel=1e-12)
    assert v["std"] == pytest.approx(s, rel=1e-9)
    assert v["median"] == pytest.approx(sorted(losses)[14] / 2 + sorted(losses)[15] / 2, rel=1e-12)
    assert (v["min"], v["max"]) == (min(losses), max(losses))
    assert v["ci99"] == pytest.approx(t_interval(list(losses)), rel=1e-10)
    assert v["pvalue"] == pytest.approx(p_below(list(losses), TARGET), rel=1e-8)

    minutes = [t / 60_000 for t in times]
    t = report["train_time_min"]
    tm, ts = mean_sd(minutes)
    assert (t["mean"], t["std"]) == (pytest.approx(tm, rel=1e-12), pytest.approx(ts, rel=1e-9))
    assert t["ci99"] == pytest.approx(t_interval(minutes), rel=1e-10)
    per_step = [ms / 100 for ms in times]
    assert report["ms_per_step"]["mean"] == pytest.approx(mean_sd(per_step)[0], rel=1e-12)
    assert report["ms_per_step"]["ci99"] == pytest.approx(t_interval(per_step), rel=1e-10)
    assert [r["final_val_loss"] for r in report["runs"]] == list(losses)


def test_bootstrap_and_power_recomputed_with_the_same_seed(batch, capsys):
    folder, losses, _ = batch
    report, _ = run_json([folder, "--bootstrap", "500", "--sample-size", "25", "--seed", "7"], capsys)
    b = report["bootstrap"]
    assert (b["samples"], b["size"], b["seed"]) == (500, 25, 7)
    ps = bootstrap_ps(losses, TARGET, 25, 500, 7)
    assert b["mean_p"] == pytest.approx(ps.mean(), rel=1e-9)
    assert b["max_p"] == pytest.approx(ps.max(), rel=1e-9)
    assert b["var_p"] == pytest.approx(((ps - ps.mean()) ** 2).mean(), rel=1e-8)
    assert b["frac_below_0_01"] == np.mean(ps < 0.01)

    power = report["power"]
    expected = {n: float(np.mean(bootstrap_ps(losses, TARGET, n, 500, 7) < 0.01)) for n in range(5, 81, 5)}
    assert {row["n"]: row["frac_below_0_01"] for row in power["table"]} == expected
    reaching = [n for n, frac in expected.items() if frac >= 0.9]
    assert power["min_n_90"] == (reaching[0] if reaching else None)
    # the n=25 row is the bootstrap section itself: same seed, same draws
    assert expected[25] == b["frac_below_0_01"]


def test_results_do_not_depend_on_argument_order(batch, capsys):
    folder, _, _ = batch
    files = sorted(folder.iterdir())
    forward, _ = run_json(files, capsys)
    backward, _ = run_json(files[::-1], capsys)
    assert forward == backward


def test_text_output_keeps_the_speedrun_layout(batch, capsys):
    folder, losses, times = batch
    (folder / "broken.txt").write_text("not a log\n")
    code, out, err = run_cli([folder], capsys)
    assert code == 0
    x = list(losses)
    m, s = mean_sd(x)
    lo, hi = t_interval(x)
    ps = bootstrap_ps(losses, TARGET, 40, 1000, 0)
    minutes = [t / 60_000 for t in times]
    tm, ts = mean_sd(minutes)
    tlo, thi = t_interval(minutes)
    per = [t / 100 for t in times]
    plo, phi = t_interval(per)
    expected = (
        "Processed 30 runs (1 skipped).\n"
        "--- Val Loss Stats ---\n"
        f"mean: \t{m:.6f}\n"
        f"std:  \t{s:.6f}\n"
        f"val loss 99% confidence interval: ({lo:.6f} - {hi:.6f})\n"
        f"val_loss t-test p={p_below(x, TARGET):.6f} (small means <2.92)\n"
        "\n"
        "--- Bootstrap p-value analysis (1000 samples of size 40 each) ---\n"
        f"Mean p-value: {ps.mean():.6f}\n"
        f"Max p-value: {ps.max():.6f}\n"
        f"Variance of p-values: {ps.var():.6f}\n"
        f"Percentage of p-values below 0.01: {100 * np.mean(ps < 0.01):.2f}%\n"
        "\n"
        "--- Training Time Stats ---\n"
        f"train time (minutes): mean={tm:.4f}, std={ts:.4f}\n"
        f"train time 99% confidence interval: ({tlo:.4f} - {thi:.4f})\n"
        f"avg ms per iteration: {mean_sd(per)[0]:.4f}. 99% confidence interval: ({plo:.4f} - {phi:.4f})\n"
        "\n"
    )
    assert out.startswith(expected)
    power = out[len(expected) :].splitlines()
    assert re.fullmatch(
        r"--- Power planning \(bootstrap from the 30 observed runs, 1000 samples per size\) ---", power[0]
    )
    assert power[1] == "runs  P(p < 0.01)"
    for line, n in zip(power[2:6], (10, 20, 40, 80)):
        frac = np.mean(bootstrap_ps(losses, TARGET, n, 1000, 0) < 0.01)
        assert line == f"{n:>4}  {100 * frac:>10.2f}%"
    assert re.fullmatch(
        r"smallest n \(multiple of 5, up to 80\) with P\(p < 0\.01\) >= 90%: (\d+ runs|more than 80 runs)", power[6]
    )
    assert len(power) == 9 and power[7] == ""
    assert (
        power[8] == "target 2.92: the default for public speedrun logs of the medium or short track; short-track logs "
        "need --target 3.28"
    )
    assert (
        err
        == f"warning: skipped {folder / 'broken.txt'}: not a training log (no step lines after the line of 100 '=')\n"
    )


def test_tiny_p_values_keep_their_magnitude(tmp_path, capsys):
    losses = [2.90, 2.9001, 2.8999, 2.90005, 2.89995]
    for i, loss in enumerate(losses):
        public_log(tmp_path / f"r{i}.txt", loss, 1_000_000)
    code, out, _ = run_cli([tmp_path], capsys)
    assert code == 0
    p = p_below(losses, TARGET)
    assert p < 1e-6
    assert f"val_loss t-test p={p:.2e} (small means <2.92)" in out


def test_fewer_than_two_runs_prints_what_it_can(tmp_path, capsys):
    public_log(tmp_path / "only.txt", 2.9191, 1_200_000)
    code, out, err = run_cli([tmp_path], capsys)
    assert code == 0
    assert out.splitlines()[:4] == [
        "Processed 1 run (0 skipped).",
        "--- Val Loss Stats ---",
        "mean: \t2.919100",
        "(std, 99% intervals and t-tests need at least 2 runs; there is 1)",
    ]
    assert "train time (minutes): mean=20.0000" in out
    assert "nan" not in out.lower()
    report, _ = run_json([tmp_path], capsys)
    assert report["val_loss"]["std"] is None and report["val_loss"]["pvalue"] is None
    assert report["bootstrap"]["mean_p"] is None and report["power"] is None


def test_one_run_draws_no_empty_bootstrap_panel(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    public_log(tmp_path / "only.txt", 6.5, 1_200_000)  # far from the target: no zoom panel either
    loaded = logs.load([str(tmp_path)])
    report, pvalues = evidence.analyse(loaded, TARGET, 100, 40, 0)
    fig = evidence.figure(report, loaded.runs, pvalues, None)
    assert len(fig.axes) == 2
    assert not [ax for ax in fig.axes if ax.get_title().startswith("Bootstrap")]
    assert fig.axes[1].get_title().endswith("no bootstrap panel: resampling needs at least 2 runs")


def test_runs_without_variation_give_no_garbage(tmp_path, capsys):
    for i in range(3):
        public_log(tmp_path / f"r{i}.txt", 2.92, 1_000_000)
    code, out, _ = run_cli([tmp_path, "--baseline", tmp_path], capsys)
    assert code == 0 and "nan" not in out.lower()
    assert "val_loss t-test p=undefined (no variation) (small means <2.92)" in out
    assert "Percentage of p-values below 0.01: 0.00%" in out
    assert out.count("p=undefined (no variation)") == 4  # submission, baseline, both differences
    assert "with P(p < 0.01) >= 90%: more than 80 runs" in out
    code, out, _ = run_cli([tmp_path, "--json"], capsys)
    assert code == 0

    def no_nan(name):
        raise AssertionError(f"{name} in the JSON output")

    report = json.loads(out, parse_constant=no_nan)
    assert report["val_loss"]["pvalue"] is None and report["bootstrap"]["mean_p"] == 1.0


# --------------------------------------------------------------------------------------- reading


def test_logs_and_summaries_written_by_train_gpt(tmp_path, capsys):
    losses, times = sample(6, 2.9195, seed=3)
    folder = tmp_path / "records" / "demo"
    for i, (loss, ms) in enumerate(zip(losses, times)):
        our_run(folder, f"run{i}", loss + 1.23e-8, ms + 0.4)  # digits that only the JSON keeps
    both, err = run_json([folder], capsys)
    assert err == "" and both["n"] == 6 and both["steps"] == 50
    assert [Path(r["file"]).suffix for r in both["runs"]] == [".txt"] * 6  # listed by their log
    # the summary is authoritative: full precision
    assert [r["final_val_loss"] for r in both["runs"]] == pytest.approx(list(losses + 1.23e-8), abs=1e-12)
    assert [r["train_time_ms"] for r in both["runs"]] == pytest.approx(list(times + 0.4), abs=1e-9)
    # the log alone gives the printed values
    log_only, _ = run_json(sorted(folder.glob("*.txt")), capsys)
    assert [r["final_val_loss"] for r in log_only["runs"]] == list(losses)
    assert [r["train_time_ms"] for r in log_only["runs"]] == list(times)
    summaries, _ = run_json(sorted(folder.glob("*.json")), capsys)
    assert summaries["runs"] == [dict(r, file=r["file"][:-4] + ".json") for r in both["runs"]]

    # the log's curve is read too: the header (train_gpt.py's own source) adds nothing to it
    run = logs.read_log(folder / "run0.txt")
    assert run.curve[:, 1] == pytest.approx(np.round(losses[0] + 1.23e-8 + 0.5 * (50 - np.arange(0, 51, 10)) / 50, 6))
    # with the step of each validation and the peak memory (our_run logs 1000 MiB allocated), from either file;
    # train_gpt.py's source in the header holds the memory line as an f-string, which must not count
    summary = logs.read_summary(folder / "run0.json")
    for r in (run, summary):
        assert r.val_steps.tolist() == [0, 10, 20, 30, 40, 50]
        assert r.peak_memory_mib == 1000
    assert summary.hyperparameters == {"num_iterations": 50, "val_loss_every": 10}
    assert run.hyperparameters == {} and run.weight_drift == summary.weight_drift == ()


def test_peak_memory_of_public_logs(tmp_path):
    memory = "peak memory allocated: 30734 MiB reserved: 31890 MiB"
    with_memory = logs.read_log(public_log(tmp_path / "a.txt", 2.919, 1_000_000, extra=[memory]))
    assert with_memory.peak_memory_mib == 30734
    assert with_memory.val_steps.tolist() == [0, 25, 50, 75, 100]
    assert logs.read_log(public_log(tmp_path / "b.txt", 2.919, 1_000_000)).peak_memory_mib is None


def test_windows_line_endings(tmp_path, capsys):
    text = public_log(tmp_path / "a.txt", 2.9187, 1_000_000).read_text()
    (tmp_path / "a.txt").write_bytes(text.replace("\n", "\r\n").encode())
    report, err = run_json([tmp_path], capsys)
    assert (report["n"], report["runs"][0]["final_val_loss"], err) == (1, 2.9187, "")


def test_a_log_and_its_summary_count_once(tmp_path, capsys):
    for i in range(3):
        our_run(tmp_path, f"r{i}", 2.919 + i * 1e-4, 1_000_000)
    files = sorted(tmp_path.iterdir())
    report, err = run_json([tmp_path, *files, files[0]], capsys)
    assert (report["n"], report["skipped"], err) == (3, 0, "")


def test_each_kind_of_broken_input_is_skipped_with_one_warning(tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        public_log(good / f"ok{i}.txt", 2.919 + 1e-4 * i, 1_000_000)
    bad = tmp_path / "bad"
    bad.mkdir()
    public_log(bad / "unfinished.txt", 2.919, 1_000_000, stop_after=60)
    full = public_log(bad / "cut.txt", 2.919, 1_000_000).read_text()
    (bad / "cut.txt").write_text(full[: full.rindex("val_loss:") + 13])  # cut inside the final val line
    public_log(bad / "nan.txt", math.nan, 1_000_000)
    public_log(bad / "public_diverged.txt", 2.919, 1_000_000, stop_after=30)
    with open(bad / "public_diverged.txt", "a") as f:
        f.write("\nDIVERGED at step 17: non-finite train loss nan\n")
    our_run(bad, "ours_diverged", 2.919, 1_000_000, diverge_at=17)  # .txt + .json: one run
    our_run(bad, "ours_killed", 2.919, 1_000_000, stop_at=30)
    our_run(bad, "json_cut", 2.919, 1_000_000)
    (bad / "json_cut.txt").unlink()
    (bad / "json_cut.json").write_text((bad / "json_cut.json").read_text()[:200])
    (bad / "notes.txt").write_text("remember to buy GPUs\n")
    (bad / "binary.log").write_bytes(bytes(range(256)) * 40)
    (bad / "config.json").write_text('{"lr": 0.1}')
    (bad / "README.md").write_text("step:1/1 val_loss:1.0 train_time:1ms step_avg:1.00ms\n")  # not searched

    report, err = run_json([good, bad], capsys)
    assert (report["n"], report["skipped"]) == (3, 10)
    reasons = {
        "unfinished.txt": r"the log ends at step 5\d of 100, before its final val line",
        "cut.txt": r"the log ends at step 100 of 100, before its final val line",
        "nan.txt": r"final val loss is nan",
        "public_diverged.txt": r"run diverged \(DIVERGED at step 17: non-finite train loss nan\)",
        "ours_diverged.txt": r"status 'diverged', only finished runs count",
        "ours_killed.txt": r"status 'running', only finished runs count",
        "json_cut.json": r"truncated or invalid JSON \(.+\)",
        "notes.txt": r"not a training log \(no step lines after the line of 100 '='\)",
        "binary.log": r"not a training log \(no step lines after the line of 100 '='\)",
        "config.json": r"not a run summary \(no 'format' field\)",
    }
    kinds = {
        "unfinished.txt": "unfinished",
        "cut.txt": "unfinished",
        "nan.txt": "not finite",
        "public_diverged.txt": "diverged",
        "ours_diverged.txt": "diverged",
        "ours_killed.txt": "unfinished",
    }
    loaded = logs.load([str(bad)])
    assert {s.file.name: s.kind for s in loaded.skips} == {n: kinds.get(n, "not a run") for n in reasons}
    lines = err.splitlines()
    assert len(lines) == len(reasons)
    for line in lines:
        m = re.fullmatch(r"warning: skipped (.+?): (.+)", line)
        assert m, line
        name = Path(m[1]).name
        assert Path(m[1]).parent == bad
        assert re.fullmatch(reasons.pop(name), m[2]), line
    assert {s["file"].split("/")[-1] for s in report["skipped_files"]} >= {"notes.txt", "cut.txt"}


def test_a_broken_summary_falls_back_to_its_log(tmp_path, capsys):
    our_run(tmp_path, "a", 2.9188, 1_000_000)
    our_run(tmp_path, "b", 2.9192, 1_000_000)
    (tmp_path / "a.json").write_text('{"format": "speedrun-run/1", "sta')
    report, err = run_json([tmp_path], capsys)
    assert (report["n"], report["skipped"]) == (2, 0)
    assert report["runs"][0]["final_val_loss"] == 2.9188
    assert re.fullmatch(r"warning: ignored .*a\.json: truncated or invalid JSON \(.+\); using .*a\.txt\n", err)


def test_different_num_iterations_warns(tmp_path, capsys):
    public_log(tmp_path / "a.txt", 2.919, 1_000_000, steps=100)
    public_log(tmp_path / "b.txt", 2.919, 1_000_000, steps=100)
    public_log(tmp_path / "c.txt", 2.918, 1_000_000, steps=120, val_every=40)
    report, err = run_json([tmp_path], capsys)
    assert err == "warning: the submission runs have different num_iterations: 100 steps (2 runs), 120 steps (1 run)\n"
    assert report["steps"] == [100, 120]
    assert report["ms_per_step"]["mean"] == pytest.approx((10_000 + 10_000 + 1_000_000 / 120) / 3)


def test_own_json_report_in_a_folder_is_ignored(batch, capsys):
    folder, _, _ = batch
    report, _ = run_json([folder], capsys)
    (folder / "evidence.json").write_text(json.dumps(report))
    again, err = run_json([folder], capsys)
    assert (again, err) == (report, "")


# ----------------------------------------------------------------------------------------- errors


def test_no_runs_is_an_error(tmp_path, capsys):
    code, out, err = run_cli([tmp_path], capsys)
    assert (code, out) == (2, "")
    assert re.fullmatch(
        r"error: no finished runs in the submission \(.+\): no logs or summaries were found\. .+\n", err
    )
    (tmp_path / "x.txt").write_text("hello\n")
    code, _, err = run_cli([tmp_path], capsys)
    assert code == 2
    assert err.splitlines()[-1].startswith("error: no finished runs in the submission")
    assert "the only input was skipped (see the warnings above)" in err


def test_user_errors_are_one_paragraph_without_traceback(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, str(REPO / "records" / "evidence.py"), *map(str, args)], capture_output=True, text=True
        )

    missing = cli(tmp_path / "nope")
    assert missing.returncode == 2
    assert (
        missing.stderr == f"error: {tmp_path / 'nope'} does not exist. "
        "Give run logs (.txt), their JSON summaries, or folders holding them.\n"
    )
    public_log(tmp_path / "a.txt", 2.919, 1_000_000)
    bad_option = cli(tmp_path, "--bootstrap", "0")
    assert bad_option.returncode == 2 and "Traceback" not in bad_option.stderr
    assert "--bootstrap: expected a positive whole number, got '0'" in bad_option.stderr
    small = cli(tmp_path, "--sample-size", "1")
    assert small.returncode == 2 and "Traceback" not in small.stderr
    assert "--sample-size: a t-test needs samples of at least 2 runs" in small.stderr


# --------------------------------------------------------------------------------------- baseline


def test_baseline_comparison(batch, tmp_path, capsys):
    folder, losses, times = batch
    base_losses, base_times = sample(12, 2.9203, seed=2)
    base_times = base_times + 30_000
    base = tmp_path / "base"
    base.mkdir()
    for i, (loss, ms) in enumerate(zip(base_losses, base_times)):
        public_log(base / f"b{i:02d}.txt", loss, ms)
    report, _ = run_json([folder, "--baseline", base], capsys)
    b = report["baseline"]
    assert (b["n"], b["skipped"], b["steps"]) == (12, 0, 100)
    assert b["val_loss"]["mean"] == pytest.approx(mean_sd(list(base_losses))[0], rel=1e-12)
    assert b["val_loss"]["ci99"] == pytest.approx(t_interval(list(base_losses)), rel=1e-10)
    assert b["train_time_min"]["mean"] == pytest.approx(mean_sd(list(base_times / 60_000))[0], rel=1e-12)

    for key, a, c in [("val_loss", losses, base_losses), ("train_time_min", times / 60_000, base_times / 60_000)]:
        diff, ci, p = welch_by_hand(list(a), list(c))
        got = report["comparison"][key]
        assert got["diff"] == pytest.approx(diff, rel=1e-9)
        assert got["ci99"] == pytest.approx(ci, rel=1e-8)
        assert got["pvalue"] == pytest.approx(p, rel=1e-7)

    code, out, _ = run_cli([folder, "--baseline", base], capsys)
    section = out[out.index("--- Baseline") :].splitlines()
    assert section[0] == "--- Baseline: 12 runs (0 skipped) ---"
    assert section[6] == "--- Comparison (submission minus baseline; Welch t-test, two-sided) ---"
    diff, (lo, hi), p = welch_by_hand(list(losses), list(base_losses))
    assert section[7] == f"val loss difference: {diff:+.6f}, 99% confidence interval: {lo:+.6f} to {hi:+.6f}, p={p:.6f}"
    assert section[8].startswith("train time difference (minutes): -0.5")


# ------------------------------------------------------------------------------ markdown and plot


def test_markdown_section(batch, tmp_path, capsys):
    folder, losses, times = batch
    readme = folder / "README.md"
    code, out, _ = run_cli([folder, "--markdown", readme, "--plot", folder / "evidence.png"], capsys)
    assert code == 0
    text = readme.read_text()
    report, _ = run_json([folder], capsys)
    v = report["val_loss"]
    pass40 = next(r["frac_below_0_01"] for r in report["power"]["table"] if r["n"] == 40)
    row = (
        f"| 30 (0 skipped) | {v['mean']:.6f} | {v['pvalue']:.6f} | {100 * pass40:.1f}% | "
        f"{report['train_time_min']['mean']:.4f} | {report['ms_per_step']['mean']:.2f} |"
    )
    assert row in text.splitlines()
    assert "![val loss, final losses and bootstrap p-values](evidence.png)" in text
    assert "```text\n" + out.rstrip("\n") + "\n```" in text
    for i, (loss, ms) in enumerate(zip(losses, times)):
        assert f"| [run{i:02d}.txt](run{i:02d}.txt) | {loss:.6f} | {ms / 60_000:.4f} |" in text

    # an existing file is never overwritten silently
    code, _, err = run_cli([folder, "--markdown", readme], capsys)
    assert code == 2 and "already exists; give --force" in err
    assert readme.read_text() == text
    assert run_cli([folder, "--markdown", readme, "--force", "--seed", "3"], capsys)[0] == 0
    assert readme.read_text() != text


def test_plot_is_a_png(batch, tmp_path, capsys):
    folder, _, _ = batch
    out = tmp_path / "runs.png"
    code, _, err = run_cli([folder, "--plot", out, "--baseline", folder], capsys)
    assert code == 0, err
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    code, _, err = run_cli([folder, "--plot", out], capsys)
    assert code == 2 and "already exists" in err


def test_plot_without_matplotlib_says_so(batch, tmp_path, capsys, monkeypatch):
    folder, _, _ = batch
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    code, _, err = run_cli([folder, "--plot", tmp_path / "x.png"], capsys)
    assert code == 2
    assert err == (
        "error: --plot needs matplotlib, and importing it failed: ModuleNotFoundError: import of matplotlib.figure "
        "halted; None in sys.modules. Install it (pip install matplotlib) or repair the installation, or leave "
        "out --plot.\n"
    )
    assert not (tmp_path / "x.png").exists()


def test_a_broken_matplotlib_shows_the_real_error(batch, tmp_path, capsys, monkeypatch):
    """An installed matplotlib that fails to import for another reason must not be called missing."""
    folder, _, _ = batch
    why = "module compiled against ABI version 0x1000009 but this version of numpy is 0x2000000"

    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib.figure":
                raise RuntimeError(why)
            return None

    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    code, _, err = run_cli([folder, "--plot", tmp_path / "x.png"], capsys)
    assert code == 2
    assert f"importing it failed: RuntimeError: {why}." in err and "not installed" not in err
    assert len(err.splitlines()) == 1


# ------------------------------------------------------------------------------ small batches, figure


def figure_of(folders, tmp_path, baseline=None):
    """The --plot figure of the runs in `folders`, written to a PNG too; with the runs and the report."""
    loaded = logs.load([str(f) for f in folders])
    base = logs.load([str(baseline)]) if baseline is not None else None
    report, pvalues = evidence.analyse(loaded, TARGET, 1000, 40, 0, base)
    png = tmp_path / "fig.png"
    fig = evidence.plot(png, report, loaded.runs, pvalues, base.runs if base else None)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return fig, report, loaded.runs


def panel(fig, title_start):
    found = [ax for ax in fig.axes if ax.get_title().startswith(title_start)]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def bars(ax):
    """(left, right, height) of the histogram bars that hold runs."""
    patches = [p for container in ax.containers for p in container.patches]  # not the interval's span
    return sorted((p.get_x(), p.get_x() + p.get_width(), p.get_height()) for p in patches if p.get_height() > 0)


def test_zoom_panel_only_when_runs_get_near_the_target(batch, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    far = tmp_path / "far"
    far.mkdir()
    for i, loss in enumerate([7.12, 7.13, 7.15]):  # a CPU toy batch: nowhere near 2.92
        public_log(far / f"r{i}.txt", loss, 60_000)
    fig, _, _ = figure_of([far], tmp_path)
    assert len(fig.axes) == 3
    assert not [ax for ax in fig.axes if ax.get_title().startswith("Zoom")]
    curves = panel(fig, "Val loss of every run")
    assert "no zoom panel" in curves.get_title()
    assert curves.get_ylim()[0] > 6  # no target line squashing the curves

    folder, _, _ = batch
    fig, _, runs = figure_of([folder], tmp_path)
    assert len(fig.axes) == 4
    zoom = panel(fig, "Zoom: val loss below 2.97")
    drawn = np.concatenate([line.get_ydata() for line in zoom.lines if line.get_label().startswith("_child")])
    expected = np.concatenate([r.curve[r.curve[:, 1] <= TARGET + 0.05, 1] for r in runs])
    assert sorted(drawn) == sorted(expected) and len(expected) >= len(runs)
    # a panel of its own: it covers no other panel
    fig.canvas.draw()
    boxes = [ax.get_position() for ax in fig.axes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0


def test_two_runs_show_as_two_bars(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Close together, with the target further off: bins stretched to reach the target held both in one bar.
    for i, loss in enumerate([2.9191, 2.9193]):
        public_log(tmp_path / f"r{i}.txt", loss, 1_000_000)
    fig, _, _ = figure_of([tmp_path], tmp_path)
    finals = panel(fig, "Final val loss (2 runs)")
    (l1, r1, h1), (l2, r2, h2) = bars(finals)  # exactly two bars...
    assert (h1, h2) == (1, 1) and r1 < l2  # ...with a gap between them
    assert l1 <= 2.9191 <= r1 and l2 <= 2.9193 <= r2
    rug = [line for line in finals.lines if line.get_label() == "one run"]
    assert len(rug) == 1 and sorted(rug[0].get_xdata()) == [2.9191, 2.9193]


def test_final_loss_bins_keep_distinct_values_apart():
    """Values at least one bin width apart never share a bin; every value falls inside the edges."""
    rng = np.random.default_rng(5)
    for n in (2, 3, 7, 40, 160):
        values = np.round(2.9195 + 0.0008 * rng.standard_normal(n), 6)
        edges = evidence.final_loss_bins(values, 1e-4)
        width = edges[1] - edges[0]
        assert np.allclose(np.diff(edges), width)
        assert edges[0] < values.min() and values.max() < edges[-1]
        index = np.searchsorted(edges, values, side="right") - 1
        for i in range(n):
            for j in range(n):
                if abs(values[i] - values[j]) >= width * (1 + 1e-9):
                    assert index[i] != index[j]
    one = evidence.final_loss_bins(np.array([2.95, 2.95, 2.95]), 1e-4)
    assert one == pytest.approx([2.95 - 5e-5, 2.95 + 5e-5])


@pytest.mark.parametrize("loss, p, verdict", [(2.95, 1, "no sample passes"), (2.90, 0, "every sample passes")])
def test_identical_runs_say_so_in_the_bootstrap_panel(tmp_path, monkeypatch, loss, p, verdict):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for i in range(3):
        public_log(tmp_path / f"r{i}.txt", loss, 1_000_000)
    fig, _, _ = figure_of([tmp_path], tmp_path)
    boot = panel(fig, "Bootstrap p-values")
    assert not boot.patches  # no empty histogram
    texts = [t.get_text() for t in boot.texts]
    assert texts == [f"all 1000 bootstrap p-values are {p}:\n{verdict} (p < 0.01)"]
    assert "only 3 runs: these figures mean little" in boot.get_title()
    ((left, right, height),) = bars(panel(fig, "Final val loss (3 runs)"))
    assert height == 3 and left < loss < right


def test_few_runs_say_the_intervals_mean_little(tmp_path, capsys):
    times = [1_000_000, 1_300_000, 700_000]  # a spread that puts the 99% time interval below zero
    for i, (loss, ms) in enumerate(zip([2.9191, 2.9193, 2.9199], times)):
        public_log(tmp_path / f"r{i}.txt", loss, ms)
    minutes = [t / 60_000 for t in times]
    lo, hi = t_interval(minutes)
    assert lo < 0
    per_step = [t / 100 for t in times]

    code, out, _ = run_cli([tmp_path], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[1].startswith("note: only 3 runs: with fewer than 5 the 99% intervals and p-values")
    assert "train time 99% confidence interval: not shown: with 3 runs it reaches below zero" in lines
    assert (
        f"avg ms per iteration: {mean_sd(per_step)[0]:.4f}. 99% confidence interval: not shown: with 3 runs it "
        "reaches below zero" in lines
    )
    assert not re.search(r"\(-\d", out)  # no interval starting below zero anywhere

    report, _ = run_json([tmp_path], capsys)
    assert report["few_runs"] is True and report["note"].startswith("only 3 runs")
    assert report["train_time_min"]["ci99"] == pytest.approx([lo, hi], rel=1e-9)  # the numbers stay

    readme = tmp_path / "README.md"
    assert run_cli([tmp_path, "--markdown", readme], capsys)[0] == 0
    assert "> **Note:** only 3 runs: with fewer than 5" in readme.read_text()


def test_enough_runs_carry_no_note(batch, capsys):
    folder, _, _ = batch
    report, _ = run_json([folder], capsys)
    assert report["few_runs"] is False and report["note"] is None


def test_an_interval_wider_than_the_axis_is_shown_clipped(tmp_path, capsys, monkeypatch):
    """Two runs far apart relative to their distance from each other: the 99% interval (t with 1 degree of
    freedom) is about 90 times wider than the axis, which spans the runs. The span is cut at the axis, each
    cut end gets an arrow, and the legend gives the whole interval."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    public_log(tmp_path / "a.txt", 5.30, 1_000_000)
    public_log(tmp_path / "b.txt", 5.31, 1_000_000)
    loaded = logs.load([str(tmp_path)])
    report, pvalues = evidence.analyse(loaded, TARGET, 100, 40, 0)
    lo, hi = report["val_loss"]["ci99"]
    fig = evidence.figure(report, loaded.runs, pvalues, None)
    finals = next(ax for ax in fig.axes if ax.get_title().startswith("Final val loss"))
    x_lo, x_hi = finals.get_xlim()
    assert lo < x_lo and hi > x_hi
    (span,) = [p for p in finals.patches if p.get_label().startswith("99% interval")]
    assert span.get_x() == pytest.approx(x_lo) and span.get_x() + span.get_width() == pytest.approx(x_hi)
    assert f"({lo:.6g} to {hi:.6g}), clipped at the axis (arrows)" in span.get_label()
    markers = sorted(line.get_marker() for line in finals.lines if line.get_marker() in ("<", ">"))
    assert markers == ["<", ">"]
