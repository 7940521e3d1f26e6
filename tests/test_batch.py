"""records/batch.py: the plan, the decisions at each look (against hand computations), restarts that neither
lose nor duplicate a run, the submitit path over 2 local workers, train_gpt.py's tiny preset end to end,
bad input, and the report of records/evidence.py on a batch folder."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL, cpu_env
from scipy import stats

from records import batch, batch_evidence, evidence, logs

REPO = Path(__file__).resolve().parent.parent
BATCH = [sys.executable, str(REPO / "records" / "batch.py")]

# A stand-in for train_gpt.py with its command-line contract (--records_dir/--record, --checkpoint_every,
# --resume, the summary's keys, the exit statuses) and no training: the final loss of run A007 is
# losses["A007"] from --fake_losses=FILE ("diverge" makes it diverge); each run sleeps --fake_sleep seconds
# (losses["sleep"]["A007"] for that run; a resumed run does not sleep),
# during which SIGTERM/SIGINT interrupts it like train_gpt.py (status, checkpoint, exit 143/130).
STAND_IN = r"""
import json, os, secrets, signal, sys, time
from pathlib import Path
opts = dict(a[2:].split("=", 1) for a in sys.argv[1:])
folder = Path(opts["records_dir"]) / opts["record"]
folder.mkdir(parents=True, exist_ok=True)
losses = json.loads(Path(opts["fake_losses"]).read_text())
if "resume" in opts:
    run_id = Path(opts["resume"]).name[: -len(".resume.pt")]
else:
    run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)
summary = {"format": "speedrun-run/1", "run_id": run_id, "record": opts["record"], "status": "running",
           "num_iterations": 10, "steps_done": 0, "val_losses": []}
js, txt, ckpt = folder / f"{run_id}.json", folder / f"{run_id}.txt", folder / f"{run_id}.resume.pt"
def write():
    js.write_text(json.dumps(summary))
def stop(signum, frame):
    summary["status"] = "interrupted"
    write()
    ckpt.write_text("checkpoint")
    with open(txt, "a") as f:
        f.write("INTERRUPTED\n")
    sys.exit(130 if signum == signal.SIGINT else 143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
with open(txt, "a") as f:
    f.write("RESUMED\n" if "resume" in opts else "stand-in log\n" + "=" * 100 + "\n")
write()
with open(folder.parent.parent / "starts.txt", "a") as f:
    f.write(f"{opts['record']} {'resume' if 'resume' in opts else 'start'}\n")
if "resume" not in opts:
    time.sleep(losses.get("sleep", {}).get(opts["record"], float(opts.get("fake_sleep", "0"))))
loss = losses[opts["record"]]
if loss == "diverge":
    summary["status"] = "diverged"
    write()
    with open(txt, "a") as f:
        f.write("DIVERGED at step 3\n")
    sys.exit(3)
ms = 60000.0 * (1.0 if opts["record"].startswith("A") else 1.1) + 100 * int(opts["record"][1:])
summary.update(status="finished", final_val_loss=loss, train_time_ms=ms, steps_done=10,
               val_losses=[{"step": 10, "val_loss": loss, "train_time_ms": ms}])
with open(txt, "a") as f:
    f.write(f"step:10/10 val_loss:{loss:.6f} train_time:{ms:.0f}ms step_avg:{ms / 10:.2f}ms\n")
ckpt.unlink(missing_ok=True)
write()
"""


def stand_in(tmp_path: Path, losses: dict) -> tuple[Path, Path]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    table = tmp_path / "losses.json"
    table.write_text(json.dumps(losses))
    return script, table


def run_batch(args: list[str], capsys) -> subprocess.CompletedProcess:
    """batch.py's main in this process (an interpreter start and scipy's import cost more than the runs)."""
    code = batch.main(args)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def decisions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]


def hand_decisions(values: list[float], plan: dict) -> list[tuple[str, float]]:
    """The looks' decisions computed here from the plan's boundaries: scipy's one-sample t-test, the
    conditional power written out from its definition."""
    looks, bounds = plan["looks"], plan["efficacy"]["t_boundaries"]
    big_n, final = looks[-1], bounds[-1]
    out = []
    for k, n in enumerate(looks):
        x = np.array(values[:n])
        t = stats.ttest_1samp(x, plan["target"]).statistic * -1
        if t >= bounds[k]:
            out.append(("passed", t))
            break
        if k == len(looks) - 1:
            out.append(("not shown", t))
            break
        if k + 1 >= plan["futility"]["from_look"]:
            drift = t / np.sqrt(n)  # std units per run, current estimate
            cp = stats.norm.sf((final * np.sqrt(big_n) - t * np.sqrt(n) - drift * (big_n - n)) / np.sqrt(big_n - n))
            if cp < plan["futility"]["conditional_power_below"]:
                out.append(("futility", t))
                break
        out.append(("continue", t))
    return out


PLAN = ["--first-look=4", "--look-every=2", "--max-runs=8"]
# Attempt losses of the 8 runs: tight and below the target at look 2; above it; scattered around 2.9195.
PASSES = [2.9188, 2.9194, 2.9190, 2.9192, 2.9191, 2.9191, 2.9191, 2.9192]
FUTILE = [2.9205, 2.9195, 2.9210, 2.9200, 2.9208, 2.9203, 2.9201, 2.9199]
NOT_SHOWN = [2.9190, 2.9200, 2.9188, 2.9198, 2.9192, 2.9194, 2.9203, 2.9201]


def losses_for(values: list[float], prefix: str = "A") -> dict:
    return {f"{prefix}{i + 1:03d}": v for i, v in enumerate(values)}


@pytest.mark.parametrize(
    "values, expected",
    [
        # spread-out runs at look 1, then runs right below the target: passes at look 2 (6 runs)
        (PASSES, ["continue", "passed"]),
        # runs above the target: conditional power collapses at look 2
        (FUTILE, ["continue", "futility"]),
        # slightly below the target throughout: never crosses, not shown at the maximum
        (NOT_SHOWN, ["continue", "continue", "not shown"]),
    ],
)
def test_decisions_equal_hand_computed(tmp_path, values, expected, capsys):
    script, table = stand_in(tmp_path, losses_for(values))
    folder = tmp_path / "b"
    r = run_batch(
        [str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}", "--checkpoint_every=5"], capsys
    )
    assert r.returncode == (0 if expected[-1] == "passed" else 1), r.stderr
    plan = json.loads((folder / "plan.json").read_text())
    hand = hand_decisions(values, plan)
    assert [d for d, _ in hand] == expected  # the case tests what it says
    looks = [d for d in decisions(folder) if d["kind"] == "look"]
    assert [d["decision"] for d in looks] == expected
    for d, (_, t) in zip(looks, hand):
        assert d["t"] == pytest.approx(t, rel=1e-9)
    result = decisions(folder)[-1]
    assert result["kind"] == "result" and result["p_value"] is not None
    # only the runs up to the deciding look were made, each once
    n = looks[-1]["n"]
    assert sorted((folder / "starts.txt").read_text().split("\n")[:-1]) == [f"A{i:03d} start" for i in range(1, n + 1)]
    assert f"result: {result['result']}" in r.stdout


def test_diverged_run_ends_batch_not_shown(tmp_path, capsys):
    values = [2.9190, 2.9191, "diverge", 2.9190, 2.9190, 2.9190, 2.9190, 2.9190]
    script, table = stand_in(tmp_path, losses_for(values))
    folder = tmp_path / "b"
    r = run_batch(
        [str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}", "--checkpoint_every=5"], capsys
    )
    assert r.returncode == 1
    last = decisions(folder)[-1]
    assert last["decision"] == "not shown" and "A003 (diverged" in last["result"]
    assert "A004" not in (folder / "starts.txt").read_text()


def test_baseline_alternates_and_timing_test_once(tmp_path, capsys):
    values = PASSES
    losses = {**losses_for(values), **losses_for([2.9195] * 8, "B")}
    script, table = stand_in(tmp_path, losses)
    folder = tmp_path / "b"
    args = [str(folder), f"--script={script}", f"--baseline={script}", *PLAN, "--", f"--fake_losses={table}"]
    r = run_batch(args + ["--checkpoint_every=5"], capsys)
    assert r.returncode == 0, r.stderr
    starts = (folder / "starts.txt").read_text().split()[::2]
    # ABAB up to the deciding look (6 attempt runs), which comes right after A006
    assert starts == ["A001", "B001", "A002", "B002", "A003", "B003", "A004", "B004", "A005", "B005", "A006"]
    result = decisions(folder)[-1]
    test = result["timing_test"]
    a = [60000.0 + 100 * i for i in range(1, 7)]
    b = [66000.0 + 100 * i for i in range(1, 6)]
    assert test["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    assert sum(d["kind"] == "result" for d in decisions(folder)) == 1
    looks = [d for d in decisions(folder) if d["kind"] == "look"]
    assert looks[0]["timing"]["baseline"]["n"] == 3  # described at every look: B001-B003 before A004 decided it


def test_killed_and_restarted_neither_loses_nor_duplicates(tmp_path, capsys):
    values = NOT_SHOWN
    script, table = stand_in(tmp_path, losses_for(values))
    folder = tmp_path / "b"
    args = [str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}", "--checkpoint_every=5"]
    proc = subprocess.Popen(
        BATCH + args + ["--fake_sleep=0.4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    starts = folder / "starts.txt"
    deadline = time.time() + 60
    while not (starts.exists() and starts.read_text().count("start") >= 3):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # passed on to the running run, which checkpoints and exits 143
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    # the plan is kept: continuing needs only the folder
    r = run_batch([str(folder)], capsys)
    assert r.returncode == 1, r.stderr
    lines = starts.read_text().split("\n")[:-1]
    assert lines.count("A003 start") == 1 and lines.count("A003 resume") == 1
    assert sorted(x.split()[0] for x in lines if x.endswith("start")) == [f"A{i:03d}" for i in range(1, 9)]
    assert [d["decision"] for d in decisions(folder) if d["kind"] == "look"] == ["continue", "continue", "not shown"]
    # a third start finds the result and runs nothing
    again = run_batch([str(folder)], capsys)
    assert again.returncode == 1 and len(starts.read_text().split("\n")) == len(lines) + 1
    assert "not shown at the maximum" in again.stdout


def test_ctrl_c_once_stops_after_the_current_run(tmp_path):
    script, table = stand_in(tmp_path, losses_for([2.9190] * 8))
    folder = tmp_path / "b"
    args = [str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}", "--checkpoint_every=5"]
    proc = subprocess.Popen(
        BATCH + args + ["--fake_sleep=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    starts = folder / "starts.txt"
    deadline = time.time() + 60
    while not starts.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "stops after the current run" in out
    assert starts.read_text() == "A001 start\n"
    assert batch_evidence.run_state(folder, "A", 1).status == "finished"


def test_local_executor_two_workers(tmp_path, capsys):
    """submitit's local executor runs the jobs as processes, 2 at a time. The coordinator is killed (SIGKILL)
    while A004, a slow run, is running, and started again: it waits for that job instead of submitting it
    again. A005 (and A006) start before look 2 can be made; they finish and are reported, and the decision
    stays futility."""
    losses = {**losses_for(FUTILE[:6]), "sleep": {"A004": 4.0}}
    script, table = stand_in(tmp_path, losses)
    folder = tmp_path / "b"
    args = [str(folder), f"--script={script}", "--first-look=2", "--look-every=2", "--max-runs=6", "--local-workers=2"]
    args += ["--", f"--fake_losses={table}", "--checkpoint_every=5"]
    coordinator = subprocess.Popen(BATCH + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    starts = folder / "starts.txt"
    deadline = time.time() + 60
    while not (starts.exists() and "A004 start" in starts.read_text()):
        assert time.time() < deadline and coordinator.poll() is None
        time.sleep(0.05)
    coordinator.kill()
    coordinator.wait()
    refused = run_batch([str(folder)], capsys)  # on this node, while A004's job runs: refused
    assert refused.returncode == 2 and "A004 (job" in refused.stderr
    r = run_batch([str(folder), "--local-workers=2"], capsys)
    assert r.returncode == 1, r.stderr + r.stdout
    plan = json.loads((folder / "plan.json").read_text())
    expected = [d for d, _ in hand_decisions(FUTILE[:6], plan)]
    assert expected == ["continue", "futility"]
    assert [d["decision"] for d in decisions(folder) if d["kind"] == "look"] == expected
    lines = (folder / "starts.txt").read_text().split("\n")[:-1]
    assert sorted(set(lines)) == sorted(lines) and {f"A{i:03d} start" for i in range(1, 6)} <= set(lines)
    assert "submitted A004" not in r.stdout  # waited for, not submitted again
    result = decisions(folder)[-1]
    assert result["kind"] == "result" and result["decision"] == "futility" and result["look"] == 2
    assert any(x.startswith("A005: finished") for x in result["runs_after_decision"])
    assert "reported, not counted" in r.stdout


def test_contradicting_plan_refused_before_anything_runs(tmp_path, capsys):
    script, table = stand_in(tmp_path, losses_for([2.9190] * 8))
    folder = tmp_path / "b"
    folder.mkdir()
    plan = batch.build_plan(_args(folder, script), [f"--fake_losses={table}", "--checkpoint_every=5"])
    (folder / "plan.json").write_text(json.dumps(plan))
    before = (folder / "plan.json").read_bytes()
    r = run_batch([str(folder), f"--script={script}", *PLAN, "--alpha=0.02"], capsys)
    assert r.returncode == 2 and "alpha" in r.stderr and "Traceback" not in r.stderr
    r = run_batch(
        [str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}", "--checkpoint_every=7"], capsys
    )
    assert r.returncode == 2 and "--checkpoint_every=7" in r.stderr
    script.write_text(STAND_IN + "\n# changed\n")
    r = run_batch([str(folder)], capsys)
    assert r.returncode == 2 and "script.sha256" in r.stderr
    assert (folder / "plan.json").read_bytes() == before and not (folder / "attempt").exists()


def _args(folder, script):
    args, _ = batch.parse_args([str(folder), f"--script={script}", *PLAN])
    for key, value in batch.DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def test_missing_checkpoint_interval_and_slurm_unavailable(tmp_path, capsys, monkeypatch):
    script, table = stand_in(tmp_path, losses_for([2.9190] * 8))
    folder = tmp_path / "b"
    r = run_batch([str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}"], capsys)
    assert r.returncode == 2 and "checkpoint interval" in r.stderr and not folder.exists()
    r = run_batch([str(folder), f"--script={script}", *PLAN], capsys)  # no training options at all
    assert r.returncode == 2 and "checkpoint interval" in r.stderr and not folder.exists()
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    r = run_batch([str(folder), "--slurm", "--time-min=10", "--", "--checkpoint_every=5"], capsys)
    assert r.returncode == 2 and "SLURM is not available" in r.stderr and not folder.exists()
    assert len(r.stderr.strip().split("\n")) == 1
    r = run_batch([str(folder), "--partition=gpu", "--", "--checkpoint_every=5"], capsys)
    assert r.returncode == 2 and "--partition set up SLURM jobs and need --slurm" in r.stderr and not folder.exists()


def test_plan_only_prints_expectations_and_writes_nothing(tmp_path, capsys):
    pilot = tmp_path / "pilot"
    pilot.mkdir()
    for i, loss in enumerate([2.9194, 2.9198, 2.9190, 2.9201]):
        run = {"format": "speedrun-run/1", "status": "finished", "final_val_loss": loss, "train_time_ms": 1.38e6}
        (pilot / f"r{i}.json").write_text(json.dumps(run))
    folder = tmp_path / "b"
    r = run_batch([str(folder), "--plan-only", f"--pilot={pilot}", "--nproc=8", "--", "--checkpoint_every=500"], capsys)
    assert r.returncode == 0, r.stderr
    assert not folder.exists()
    assert "as good as the pilot (mean 2.919575" in r.stdout and "no better than the target" in r.stdout
    assert "GPU-hours" in r.stdout and '"sha256"' in r.stdout


def test_evidence_reports_the_sequential_batch(tmp_path, capsys):
    values = PASSES
    script, table = stand_in(tmp_path, losses_for(values))
    folder = tmp_path / "b"
    r = run_batch(
        [str(folder), f"--script={script}", *PLAN, "--", f"--fake_losses={table}", "--checkpoint_every=5"], capsys
    )
    assert r.returncode == 0
    assert evidence.main([str(folder / "attempt")]) == 0
    out = capsys.readouterr().out
    assert "passed at look 2 (6 runs)" in out
    assert "val_loss t-test (descriptive" in out
    loaded = logs.load([str(folder / "attempt")])
    assert len(loaded.runs) == 6


# train_gpt.py's tiny preset made smaller still (conftest.SMALL), no compile, 3 steps per run with
# a rolling checkpoint after step 2.
TINY_RUN = [
    "--preset=tiny",
    "--num_iterations=3",
    "--warmup_steps=0",
    "--val_loss_every=0",
    "--compile=false",
    *SMALL,
    "--checkpoint_every=2",
]


def test_tiny_preset_killed_and_resumed(tmp_path, tiny_data):
    """train_gpt.py end to end: looks every 2 runs, futility from the first look (the tiny model's loss is
    far above 2.92, so look 1 stops the batch). The batch is stopped during run 1 after its checkpoint
    (SIGTERM, passed on to the run, then SIGINT, which train_gpt.py obeys at once) and started again: run
    1 resumes from its checkpoint with the same run id, and no run is lost or made twice."""
    train, val = tiny_data
    folder = tmp_path / "b"
    args = [str(folder), "--first-look=2", "--look-every=2", "--max-runs=4", "--futility-from=1", "--"]
    args += TINY_RUN + [f"--train_files={train}", f"--val_files={val}"]
    env = cpu_env()
    proc = subprocess.Popen(BATCH + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = folder / "attempt" / "A001"
    deadline = time.time() + 120
    while not any("checkpoint at step 2" in p.read_text() for p in first.glob("*.txt")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    (summary,) = first.glob("*.json")
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert (first / f"{summary.stem}.resume.pt").is_file() and not (folder / "attempt" / "A002").exists()
    again = subprocess.run(BATCH + [str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "run A001 (resuming" in again.stdout and "stopped for futility at look 1 (2 runs)" in again.stdout
    for index in (1, 2):
        (run,) = (folder / "attempt" / f"A{index:03d}").glob("*.json")  # one run per index
        assert json.loads(run.read_text())["status"] == "finished"
    assert "RESUMED" in (first / f"{summary.stem}.txt").read_text()
    assert not (folder / "attempt" / "A003").exists()
    looks = [d for d in decisions(folder) if d["kind"] == "look"]
    assert [(d["look"], d["n"], d["decision"]) for d in looks] == [(1, 2, "futility")]
    report = subprocess.run(
        [sys.executable, str(REPO / "records" / "evidence.py"), str(folder / "attempt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0 and "Processed 2 runs (0 skipped)" in report.stdout
    assert "stopped for futility at look 1" in report.stdout


def test_preempted_job_is_requeued_and_resumes(tmp_path):
    """A job signalled before its time limit (submitit's local executor sends the same signal as SLURM,
    signal_delay_s before the limit) is checkpointed and requeued: the run gets SIGTERM, writes its
    checkpoint, and the requeued job resumes it with the same run id."""
    import submitit

    script, table = stand_in(tmp_path, {"A001": 2.9191, "sleep": {"A001": 30.0}})
    folder = tmp_path / "b"
    plan = batch.build_plan(_args(folder, script), [f"--fake_losses={table}", "--checkpoint_every=5"])
    folder.mkdir()
    (folder / "plan.json").write_text(json.dumps(plan))
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=1, signal_delay_s=56)  # the signal comes after 4 s
    job = executor.submit(batch.RunJob(str(folder), "A", 1))
    job.wait()
    assert (folder / "starts.txt").read_text() == "A001 start\nA001 resume\n"
    (summary,) = (folder / "attempt" / "A001").glob("*.json")
    assert json.loads(summary.read_text())["status"] == "finished"
    assert "INTERRUPTED" in (folder / "attempt" / "A001" / f"{summary.stem}.txt").read_text()
