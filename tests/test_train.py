"""End to end: the script as a user runs it, on CPU, one and two processes. Expected figures come
from the script (the tiny preset, its model, its constants), not from the record."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    REPO,
    SMALL,
    TINY_TRAIN_SHARD_TOKENS,
    TINY_TRAIN_SHARDS,
    cpu_env,
    synthetic_tokens,
    write_test_shard,
)

import train_gpt as tg
from speedrun import checkpoints as ck
from speedrun import matrix_optimizers as mo

TINY = tg.parse_args(["--preset=tiny"])
TINY_STEP_TOKENS = TINY.seqs_per_step * TINY.train_seq_len
# steps one tiny_data train shard holds: one at pos = 0, step, 2 step, ... while pos + step + 1 < length
STEPS_PER_TINY_SHARD = sum(
    1
    for pos in range(0, TINY_TRAIN_SHARD_TOKENS, TINY_STEP_TOKENS)
    if pos + TINY_STEP_TOKENS + 1 < TINY_TRAIN_SHARD_TOKENS
)

VAL_LINE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{6}) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")
TRAIN_LINE = re.compile(r"^step:(\d+)/(\d+) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")


def train_command(tmp_path, data, *argv, nproc=1):
    train, val = data
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "train_gpt.py")]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(REPO / "train_gpt.py"),
        ]
    return [
        *cmd,
        "--preset=tiny",
        f"--train_files={train}",
        f"--val_files={val}",
        f"--records_dir={tmp_path / 'records'}",
        *argv,
    ]


def run_train(tmp_path, data, *argv, nproc=1, timeout=300):
    return subprocess.run(
        train_command(tmp_path, data, *argv, nproc=nproc),
        cwd=tmp_path,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_resume(tmp_path, checkpoint, *argv, timeout=300):
    return subprocess.run(
        [sys.executable, str(REPO / "train_gpt.py"), f"--resume={checkpoint}", *argv],
        cwd=tmp_path,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_line(path, pattern, proc, timeout=240):
    """Poll a growing log until a line matches (the run is then where the test wants to signal it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {pattern!r}: {proc.communicate()[1][-3000:]}")
        files = list(path.parent.glob(path.name)) if "*" in path.name else [path] if path.exists() else []
        if files and re.search(pattern, files[0].read_text(), re.M):
            return files[0]
        time.sleep(0.2)
    raise AssertionError(f"no line {pattern!r} in {path} after {timeout} s")


def run_files(tmp_path, record=TINY.record):
    folder = tmp_path / "records" / record
    (txt,) = folder.glob("*.txt")
    return txt, json.loads(txt.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One small run of 8 steps, validating every 4, shared by the tests that read its files; run by a copy of
    train_gpt.py alone in an empty folder (no speedrun/ beside it), as a speedrunner's copy runs."""
    tmp_path = tmp_path_factory.mktemp("tiny_run")
    train, val = "train_*.bin", "val_*.bin"
    write_test_shard(tmp_path / "val_000000.bin", synthetic_tokens(20_000, seed=1))
    for i in range(1, TINY_TRAIN_SHARDS + 1):
        write_test_shard(tmp_path / f"train_{i:06d}.bin", synthetic_tokens(TINY_TRAIN_SHARD_TOKENS, seed=10 + i))
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "train_gpt.py").write_bytes((REPO / "train_gpt.py").read_bytes())
    command = train_command(tmp_path, (tmp_path / train, tmp_path / val), *SMALL, "--num_iterations=8")
    command[1] = "train_gpt.py"
    out = subprocess.run(
        [*command, "--val_loss_every=4", "--record=e2e"], cwd=alone, env=cpu_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path, out


def test_tiny_run_end_to_end(tiny_run):
    tmp_path, out = tiny_run
    txt, summary = run_files(tmp_path, "e2e")
    text = txt.read_text()
    source, _, rest = text.partition("\n" + tg.LOG_RULE + "\n")
    assert source == (REPO / "train_gpt.py").read_text()  # the log's code is the script itself, alone
    header = rest.splitlines()
    assert header[0].startswith("Running Python 3.") and header[1].startswith("Running PyTorch 2.")
    assert header[2] == tg.LOG_RULE  # no nvidia-smi on CPU
    assert "world_size: 1" in rest and "newton_schulz: torch" in rest and "PYTORCH_ALLOC_CONF" in rest
    assert "  num_iterations = 8" in rest and f"  seed = {summary['hyperparameters']['seed']}" in rest
    with torch.device("meta"):
        tiny_model = tg.build_model(tg.parse_args(["--preset=tiny", *SMALL]), attention="dense")
    assert f"parameters: {sum(p.numel() for p in tiny_model.parameters()):,}" in rest
    lines = rest.splitlines()
    vals = [VAL_LINE.match(line) for line in lines if VAL_LINE.match(line)]
    trains = [TRAIN_LINE.match(line) for line in lines if TRAIN_LINE.match(line)]
    assert [int(m[1]) for m in vals] == [0, 4, 8] and all(int(m[2]) == 8 for m in vals)
    assert [int(m[1]) for m in trains] == list(range(1, 9))
    losses = [float(m[3]) for m in vals]
    # the head starts at zero: uniform over the padded vocabulary
    padded_vocab = math.ceil(TINY.vocab_size / tg.VOCAB_MULTIPLE) * tg.VOCAB_MULTIPLE
    assert losses[0] == pytest.approx(math.log(padded_vocab), abs=1e-5)
    assert losses[0] > losses[1] > losses[2] and losses[2] < losses[0] - 0.5
    assert summary["status"] == "finished" and summary["final_val_loss"] == pytest.approx(losses[2], abs=1e-6)
    assert summary["train_time_ms"] == pytest.approx(int(vals[2][4]), abs=1)
    assert [v["step"] for v in summary["val_losses"]] == [0, 4, 8] and summary["steps_done"] == 8
    assert summary["peak_memory_allocated_mib"] is None  # CPU: no CUDA allocator figures
    assert "logging to" in out.stdout and lines[-1] == vals[2][0]
    # on CPU the model runs eagerly and Muon's update is compiled
    did = re.escape(tg.warmup_description(compiled_model=False, compiled_update=TINY.compile, ns_impl="torch"))
    assert re.search(rf"^kernel warmup: {TINY.warmup_steps} steps in \d+\.\ds \({did}; not on the clock\)$", rest, re.M)


def test_bench_train_reads_the_log(tiny_run):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_train

    txt, summary = run_files(tiny_run[0], "e2e")
    rows = dict(bench_train.rows_from_log(txt.read_text().splitlines(), steps=8, skip=3))
    times = [int(m[3]) for m in map(TRAIN_LINE.match, txt.read_text().splitlines()) if m]
    assert rows["ms per step, steps 4-8"] == f"{(times[7] - times[2]) / 5:.1f}"
    assert rows["step_avg at step 8 (as logged)"] == f"{times[7] / 8:.1f}"
    assert rows["final val loss (random tokens: only finiteness matters)"] == f"{summary['final_val_loss']:.4f}"
    assert rows["peak memory allocated / reserved (MiB)"] == "not logged"  # CPU
    assert rows["kernel warmup (compile, autotune; untimed)"].endswith(" s")
    assert rows["Newton-Schulz (what --ns_impl timed and chose)"] == "torch (--ns_impl=auto)"


def test_bad_shard_fails_before_training(tmp_path, tiny_data):
    train, _ = tiny_data
    bad = tmp_path / "train_000002.bin"
    bad.write_bytes(bad.read_bytes()[:-7])
    # one step more than the first shard holds needs the second; shards the run never reads are not checked
    out = run_train(tmp_path, tiny_data, f"--num_iterations={STEPS_PER_TINY_SHARD + 1}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"error: {bad}: header says {TINY_TRAIN_SHARD_TOKENS} tokens" in out.stderr
    assert "truncated or corrupt" in out.stderr
    assert not (tmp_path / "records").exists()  # nothing started


def test_too_few_tokens_fails_before_training(tmp_path, tiny_data):
    available = TINY_TRAIN_SHARDS * STEPS_PER_TINY_SHARD
    n = available + 1
    out = run_train(tmp_path, tiny_data, f"--num_iterations={n}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"has {TINY_TRAIN_SHARDS} shard(s) with tokens for {available} steps" in out.stderr
    assert f"--num_iterations={n} needs {n} x {TINY_STEP_TOKENS:,} = {n * TINY_STEP_TOKENS:,} tokens" in out.stderr
    assert not (tmp_path / "records").exists()


def test_divergence_stops_the_run(tmp_path, tiny_data):
    out = run_train(
        tmp_path,
        tiny_data,
        *SMALL,
        "--num_iterations=30",
        "--val_loss_every=0",
        "--warmup_steps=0",
        "--seed=1",
        "--adam_scalar_lr=1e30",
        "--compile=false",
    )
    assert out.returncode == 3
    txt, summary = run_files(tmp_path)
    last = txt.read_text().splitlines()[-1]
    assert re.fullmatch(r"DIVERGED at step \d+: non-finite train loss nan; run stopped\.", last)
    assert summary["status"] == "diverged" and summary["final_val_loss"] is None
    assert summary["steps_done"] < 10  # stopped at once, not after 30 steps


def write_hellaswag(path):
    """Four tokenized HellaSwag examples (the format evals/hellaswag.py writes)."""
    examples = [
        dict(context=[5, 6, 7], endings=[[1, 2], [3], [4, 4, 4], [9]], label=1),
        dict(context=[8] * 40, endings=[[1] * 20, [2], [3, 3], [4]], label=0),
        dict(context=[11, 12], endings=[[13], [14], [15], [16, 17]], label=3),
        dict(context=[21] * 9, endings=[[22], [23, 24], [25], [26]], label=2),
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def weights(pt):
    return torch.load(pt, weights_only=True)["model"]


def final_weights(tmp_path, record=TINY.record):
    (pt,) = [p for p in (tmp_path / "records" / record).glob("*.pt") if not p.name.endswith(".resume.pt")]
    return weights(pt)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def stop_with_sigterm(cmd, cwd, log_glob, pattern):
    """Start a run, send SIGTERM when its log has a line matching pattern, wait for it to end."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_line(log_glob, pattern, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    """Runs of the same 8 steps (seed, data, options; Snoo every 2 steps, so that its outer step falls
    in the kernel warmup of a resumed run too): straight through (A); stopped by SIGTERM after a few
    steps with --checkpoint_every, then resumed (B); on 2 processes under torchrun, stopped the same way
    after its checkpoint at step 4 (C); and C's last checkpoint resumed on 1 process (D). A and B also
    log the weight drift and score HellaSwag, so their resumption is checked too."""
    root = tmp_path_factory.mktemp("resume")
    write_test_shard(root / "val_000000.bin", synthetic_tokens(20_000, seed=1))
    for i in range(1, TINY_TRAIN_SHARDS + 1):
        write_test_shard(root / f"train_{i:06d}.bin", synthetic_tokens(TINY_TRAIN_SHARD_TOKENS, seed=10 + i))
    data = (root / "train_*.bin", root / "val_*.bin")
    hellaswag = write_hellaswag(root / "hellaswag.tokens.jsonl")
    common = [
        *SMALL,
        "--num_iterations=8",
        "--val_loss_every=2",
        "--warmup_steps=2",
        "--snoo_k=2",
        "--seed=3",
        "--save_checkpoint=true",
        "--compile=false",  # what is saved and restored is the same eager or compiled; compiling costs seconds a run
    ]
    extras = ["--log_weight_drift=true", "--hellaswag=true", f"--hellaswag_file={hellaswag}"]
    runs = dict(root=root, data=data)
    runs["A"] = run_train(root / "A", data, *common, *extras)
    folder = root / "B" / "records" / TINY.record
    runs["B_stopped"] = stop_with_sigterm(
        train_command(root / "B", data, *common, *extras, "--checkpoint_every=3"),
        root,
        folder / "*.txt",
        r"^step:4/8 train_time",
    )
    (checkpoint,) = folder.glob("*.resume.pt")
    runs["B_checkpoint"] = root / "B.resume.pt"  # a copy: a finished run removes its own
    runs["B_checkpoint"].write_bytes(checkpoint.read_bytes())
    runs["B_summary_at_stop"] = json.loads(next(folder.glob("*.json")).read_text())
    runs["B_left_at_stop"] = [str(p) for p in folder.iterdir()]
    runs["B_log_at_stop"] = next(folder.glob("*.txt")).read_text()
    runs["B"] = run_resume(root / "B", checkpoint)
    runs["B_left"] = sorted(p.name for p in folder.iterdir())
    folder = root / "C" / "records" / TINY.record
    runs["C_stopped"] = stop_with_sigterm(
        train_command(root / "C", data, *common, "--checkpoint_every=4", nproc=2),
        root,
        folder / "*.txt",
        r"^checkpoint at step 4: ",
    )
    (runs["C_checkpoint"],) = folder.glob("*.resume.pt")
    runs["D"] = run_resume(root / "C", runs["C_checkpoint"], f"--records_dir={root / 'D' / 'records'}")
    for name in ("A", "B", "D"):
        assert runs[name].returncode == 0, (name, runs[name].stderr[-3000:])
    return runs


def val_losses(txt):
    return [(int(m[1]), m[3]) for m in map(VAL_LINE.match, txt.read_text().splitlines()) if m]


def test_sigterm_stops_after_a_whole_step_and_saves_a_last_checkpoint(resume_runs):
    stopped = resume_runs["B_stopped"]
    assert stopped.returncode == 128 + signal.SIGTERM and "Traceback" not in stopped.stderr
    lines = resume_runs["B_log_at_stop"].splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("INTERRUPTED"))
    m = re.fullmatch(r"INTERRUPTED by SIGTERM after step (\d+); run stopped; resume it with: (.*)\.", lines[stop])
    step = int(m[1])
    (checkpoint,) = [p for p in resume_runs["B_left_at_stop"] if p.endswith(".resume.pt")]
    assert m[2] == f"python train_gpt.py --resume={checkpoint}"  # the command that continues it
    assert 4 <= step < 8 and TRAIN_LINE.match(lines[stop - 1])[1] == str(step)
    # the record says "interrupted" first; then the last checkpoint, off the clock
    assert re.fullmatch(
        rf"checkpoint at step {step}: .*\.resume\.pt \([\d.]+ GiB in [\d.]+s; not on the clock\)", lines[stop + 1]
    ) and stop + 2 == len(lines)
    summary = resume_runs["B_summary_at_stop"]
    assert summary["status"] == "interrupted" and summary["steps_done"] == step
    ckpt = torch.load(resume_runs["B_checkpoint"], weights_only=True)
    assert ckpt["step"] == step and ckpt["world_size"] == 1
    assert {
        "model",
        "optimizers",
        "snoo",
        "rng",
        "data_position",
        "train_time_ms",
        "hyperparameters",
        "run_id",
    } <= ckpt.keys()


def test_resumed_run_equals_the_uninterrupted_run(resume_runs):
    root = resume_runs["root"]
    (txt_a, summary_a), (txt_b, summary_b) = run_files(root / "A"), run_files(root / "B")
    assert val_losses(txt_b)[-4:] == val_losses(txt_a)[-4:]  # the resumed part's validations, to the digit
    assert [v["val_loss"] for v in summary_b["val_losses"]] == [v["val_loss"] for v in summary_a["val_losses"]]
    assert_same_weights(final_weights(root / "A"), final_weights(root / "B"))
    # one log, appended (the part before the stop is still there) and one summary, updated
    assert summary_b["run_id"] == summary_a["run_id"] or summary_b["run_id"] == txt_b.stem
    text = txt_b.read_text()
    assert text.count(tg.LOG_RULE) == 2 and "INTERRUPTED by SIGTERM" in text
    assert re.search(r"^RESUMED from .*\.resume\.pt at step \d+/8 \(world size 1, ", text, re.M)
    assert summary_b["status"] == "finished" and len(summary_b["resumed"]) == 1
    # a finished run removes its resume checkpoint: the logs and the final weights stay
    assert [n.rsplit(".", 1)[1] for n in resume_runs["B_left"]] == ["json", "pt", "txt"]
    # the diagnostics resumed too
    assert summary_b["hellaswag"]["acc"] == summary_a["hellaswag"]["acc"]
    assert summary_b["hellaswag"]["acc_norm"] == summary_a["hellaswag"]["acc_norm"]
    drift_a = [v["weight_drift"] for v in summary_a["val_losses"]]
    drift_b = [v["weight_drift"] for v in summary_b["val_losses"]]
    assert drift_b == drift_a


def test_two_processes_stop_together_and_resume_on_one(resume_runs):
    """Two ranks under torchrun stop after the same step on SIGTERM and save one checkpoint with Muon's
    state of both; one process resumes it. With two sequences per step, averaging bf16 gradients over
    two ranks or two micro-batches halves the same sum (exact in binary), so here world sizes agree bit
    for bit with the 1-process run; in general they agree to bf16 rounding."""
    root = resume_runs["root"]
    txt_c = next((root / "C" / "records" / TINY.record).glob("*.txt"))
    text = txt_c.read_text()
    assert "world_size: 2" in text and "torch_threads: 1" in text
    m = re.search(r"^INTERRUPTED by SIGTERM after step (\d+); run stopped; resume it with: (.*)\.$", text, re.M)
    step = int(m[1])
    assert m[2].startswith("torchrun --standalone --nproc_per_node=2 train_gpt.py --resume=")
    ckpt = torch.load(resume_runs["C_checkpoint"], weights_only=True)
    assert ckpt["step"] == step > 4 and ckpt["world_size"] == 2
    # Muon's state of both ranks is in the one file: every hidden matrix has its momentum
    muon_state = ckpt["optimizers"][1]["state"]
    hidden = sum(len(g["params"]) for g in ckpt["optimizers"][1]["param_groups"])
    assert sorted(muon_state) == list(range(hidden)) and all("momentum_buffer" in s for s in muon_state.values())
    assert_same_weights(final_weights(root / "D"), final_weights(root / "A"))
    txt_d, summary_d = run_files(root / "D")
    assert val_losses(txt_d) == [v for v in val_losses(run_files(root / "A")[0]) if v[0] > step]
    assert summary_d["resumed"][0]["world_size"] == 1 and summary_d["status"] == "finished"


def test_diagnostics_reach_the_log_and_the_summary(resume_runs):
    txt, summary = run_files(resume_runs["root"] / "A")
    text = txt.read_text()
    kinds = ["embed", "head", "attention", "mlp", "scalars"]
    for entry in summary["val_losses"]:
        assert list(entry["weight_drift"]) == kinds
    first, last = summary["val_losses"][0]["weight_drift"], summary["val_losses"][-1]["weight_drift"]
    assert first["embed"]["relative_distance"] == 0 and first["embed"]["cosine"] == pytest.approx(1)
    assert last["embed"]["relative_distance"] > 0 and last["head"]["relative_distance"] is None  # w0 = 0
    assert len(re.findall(r"^weight drift at step \d+: embed rel ", text, re.M)) == len(summary["val_losses"])
    hs = summary["hellaswag"]
    assert hs["n"] == 4 and 0 <= hs["acc"] <= 1 and 0 <= hs["acc_norm"] <= 1
    assert re.search(r"^hellaswag: acc \d\.\d{4} acc_norm \d\.\d{4} \(n=4, ", text, re.M)
    # the record's log has none of these lines
    after_source = (
        next((resume_runs["root"] / "C" / "records" / TINY.record).glob("*.txt")).read_text().split(tg.LOG_RULE, 1)[1]
    )
    assert "weight drift" not in after_source and "hellaswag:" not in after_source


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--model_dim=128"], "--model_dim=128 (the checkpoint's run: 64)"),
        (["--muon_lr=0.05"], f"--muon_lr=0.05 (the checkpoint's run: {tg.format_value(TINY.muon_lr)})"),
        (["--num_iterations=9"], "--num_iterations=9 (the checkpoint's run: 8)"),
        (["--matrix_optimizer=adam"], "--matrix_optimizer=adam (the checkpoint's run: muon)"),
    ],
)
def test_resume_refuses_other_math(resume_runs, argv, field):
    with pytest.raises(tg.UserError, match="the checkpoint's run has other settings") as e:
        tg.parse_args([f"--resume={resume_runs['B_checkpoint']}", *argv])
    assert field in str(e.value)


def test_resume_allows_what_does_not_change_the_math_and_checks_data_and_script(resume_runs, tmp_path, monkeypatch):
    ckpt = resume_runs["B_checkpoint"]
    args = tg.parse_args([f"--resume={ckpt}", "--record=elsewhere", "--checkpoint_every=5", "--compile=false"])
    assert (args.record, args.checkpoint_every, args.num_iterations, args.model_dim) == ("elsewhere", 5, 8, 64)
    saved = ck.read_checkpoint(ckpt)
    ck.check_resumable(saved, args, tg.read_sources())  # the same data and script
    # the same shards elsewhere are fine; other shards are not
    train, val = resume_runs["data"]
    for f in list(train.parent.glob(train.name)) + list(val.parent.glob(val.name)):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    args.train_files, args.val_files = str(tmp_path / train.name), str(tmp_path / val.name)
    ck.check_resumable(saved, args, tg.read_sources())
    last = sorted(tmp_path.glob(train.name))[0]
    write_test_shard(last, synthetic_tokens(TINY_TRAIN_SHARD_TOKENS - 5, seed=99))
    with pytest.raises(tg.UserError, match=r"the train shards differ from the checkpoint's run"):
        ck.check_resumable(saved, args, tg.read_sources())
    edited = {**tg.read_sources(), "train_gpt.py": "# another script"}
    with pytest.raises(tg.UserError, match=r"written by other code \(train_gpt.py differs\)"):
        ck.check_resumable(saved, tg.parse_args([f"--resume={ckpt}", "--record=elsewhere"]), edited)
    weights_only = next((resume_runs["root"] / "B" / "records" / TINY.record).glob("*.pt"))
    with pytest.raises(tg.UserError, match="holds the final weights only"):
        tg.parse_args([f"--resume={weights_only}"])
    # B finished: its checkpoint (a copy) cannot reopen it where it logs (the checkpoint's records_dir)
    args = tg.parse_args([f"--resume={ckpt}"])
    with pytest.raises(tg.UserError, match=r"has finished \(.*\.json says so\)"):
        ck.check_resumable(saved, args, tg.read_sources())


def test_checkpoints_are_written_atomically_and_loaded_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "run.resume.pt"
    ck.save(dict(format=ck.CHECKPOINT_FORMAT, step=1, x=torch.ones(3)), path)
    before = path.read_bytes()

    def killed_midway(payload, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ck.save(dict(format=ck.CHECKPOINT_FORMAT, step=2), path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    assert ck.read_checkpoint(path)["step"] == 1
    # a pickle that needs code to load is refused, not run
    evil = tmp_path / "evil.pt"
    torch.save(dict(format=ck.CHECKPOINT_FORMAT, payload=tg.Stopper()), evil)
    with pytest.raises(tg.UserError, match="is not a readable checkpoint"):
        ck.read_checkpoint(evil)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(tg.UserError, match="is not a readable checkpoint"):
        ck.read_checkpoint(tmp_path / "junk.pt")


def test_ctrl_c_ends_the_run_with_a_true_record(tmp_path, tiny_data):
    proc = subprocess.Popen(
        train_command(
            tmp_path,
            tiny_data,
            *SMALL,
            "--num_iterations=60",
            "--val_loss_every=0",
            "--warmup_steps=0",
            "--compile=false",
        ),
        cwd=tmp_path,
        env=cpu_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    txt = wait_for_line(tmp_path / "records" / TINY.record / "*.txt", r"^step:2/60 train_time", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = txt.read_text().splitlines()
    step = int(
        re.fullmatch(r"INTERRUPTED by SIGINT after step (\d+); run stopped; it cannot be resumed .*", lines[-1])[1]
    )
    assert TRAIN_LINE.match(lines[-2])[1] == str(step) and step < 10  # after a whole step, soon
    summary = json.loads(txt.with_suffix(".json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] == step
    assert not list(txt.parent.glob("*.pt"))  # no --checkpoint_every: nothing saved


def test_sigterm_during_startup_and_on_every_rank(tmp_path, tiny_data):
    """Two ranks started by hand (no torchrun, no OMP_NUM_THREADS: train_gpt.py gives each one thread),
    stopped by SIGTERM during the long kernel warmup: both exit 143, and rank 0's record says why."""
    env = {k: v for k, v in cpu_env().items() if k != "OMP_NUM_THREADS"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), WORLD_SIZE="2")
    cmd = train_command(tmp_path, tiny_data, *SMALL, "--num_iterations=4", "--warmup_steps=200")
    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    txt = wait_for_line(tmp_path / "records" / TINY.record / "*.txt", r"^newton_schulz: ", procs[0])
    time.sleep(1)  # into the warmup
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], [o[1][-2000:] for o in outputs]
    assert all("Traceback" not in err for _, err in outputs)
    text = txt.read_text()
    assert "torch_threads: 1" in text and "world_size: 2" in text
    assert text.splitlines()[-1].startswith("INTERRUPTED by SIGTERM after step 0; run stopped")
    assert json.loads(txt.with_suffix(".json").read_text())["status"] == "interrupted"


def test_startup_errors_come_before_any_file(tmp_path, tiny_data):
    for argv, message in [
        (["--ns_impl=triton"], "--ns_impl=triton needs a CUDA GPU"),
        (["--hellaswag=true", f"--hellaswag_file={tmp_path / 'none.jsonl'}"], "python evals/hellaswag.py --prepare"),
        (["--resume=" + str(tmp_path / "none.pt")], "does not exist"),
    ]:
        out = run_train(tmp_path, tiny_data, *SMALL, "--num_iterations=4", *argv)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("name", list(mo.REGISTRY))
def test_every_matrix_optimizer_trains_and_is_logged(tmp_path, tiny_data, name):
    out = run_train(
        tmp_path,
        tiny_data,
        *SMALL,
        f"--matrix_optimizer={name}",
        "--matrix_lr=0.01",
        "--num_iterations=4",
        "--val_loss_every=2",
        "--warmup_steps=0",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    txt, summary = run_files(tmp_path)
    losses = [float(v) for _, v in val_losses(txt)]
    assert losses[0] > losses[1] > losses[2]
    info = tg.matrix_optimizer_info(tg.parse_args(["--preset=tiny", f"--matrix_optimizer={name}", "--matrix_lr=0.01"]))
    assert summary["matrix_optimizer"] == json.loads(json.dumps(info))
    assert tg.matrix_optimizer_line(info) in txt.read_text().splitlines()
    assert "newton_schulz" not in txt.read_text().split(tg.LOG_RULE)[-1].split("parameters:")[1]
    if name == "soap":
        assert re.search(r"; pytorch-optimizer \d+\.\d+", tg.matrix_optimizer_line(info))
    # the log holds all the code that ran: the script, then the research module under its header
    code = txt.read_text().split(tg.LOG_RULE)[0]
    script, *parts = re.split(r"^# ==== file: (\S+) ====\n", code, flags=re.M)
    modules = dict(zip(parts[0::2], parts[1::2]))
    assert script == (REPO / "train_gpt.py").read_text()
    assert set(modules) == {"speedrun/matrix_optimizers.py"}  # what the option imported, nothing else
    for path, text in modules.items():
        assert text.rstrip("\n") == (REPO / path).read_text().rstrip("\n"), path


def test_an_option_whose_module_is_missing_is_an_error(tmp_path, tiny_data):
    """train_gpt.py alone (tiny_run shows that it runs): an option whose module of speedrun/ is not beside it
    is a one-paragraph error before any file."""
    (tmp_path / "train_gpt.py").write_bytes((REPO / "train_gpt.py").read_bytes())
    command = train_command(tmp_path, tiny_data, *SMALL, "--matrix_optimizer=shampoo")
    command[1] = "train_gpt.py"
    out = subprocess.run(command, cwd=tmp_path, env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--matrix_optimizer and --matrix_* needs speedrun/matrix_optimizers.py beside train_gpt.py" in out.stderr
    assert not (tmp_path / "records").exists()


@pytest.mark.gpu
def test_record_configuration_on_one_gpu(tmp_path):
    """The default configuration at world size 1 (all sequences of a step accumulated) for a few steps
    on synthetic shards with documents of ~1000 tokens: it compiles, trains, and logs a finite loss and
    peak memory. Takes minutes (torch.compile); benchmarks/bench_train.py is the timed version."""
    defaults = tg.Hyperparameters()
    steps = 3
    step_tokens = defaults.seqs_per_step * defaults.train_seq_len
    val_tokens = defaults.seqs_per_step * defaults.val_seq_len  # one validation step
    vocab = defaults.vocab_size
    write_test_shard(tmp_path / "val_000000.bin", synthetic_tokens(val_tokens + 2, seed=1, doc_len=1000, vocab=vocab))
    write_test_shard(
        tmp_path / "train_000001.bin", synthetic_tokens(steps * step_tokens + 2, seed=2, doc_len=1000, vocab=vocab)
    )
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "train_gpt.py"),
            f"--train_files={tmp_path}/train_*.bin",
            f"--val_files={tmp_path}/val_*.bin",
            f"--val_tokens={val_tokens}",
            f"--num_iterations={steps}",
            "--val_loss_every=0",
            "--warmup_steps=2",
            f"--records_dir={tmp_path / 'records'}",
        ],
        cwd=tmp_path,
        env=cpu_env(gpu=True),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    txt, summary = run_files(tmp_path, defaults.record)
    assert summary["status"] == "finished" and 0 < summary["final_val_loss"] < 12
    assert summary["peak_memory_allocated_mib"] > 0
    text = txt.read_text()
    # --ns_impl=auto times both Newton-Schulz paths on a GPU and takes the faster
    assert re.search(
        r"^newton_schulz: (triton|torch) \(--ns_impl=auto; one pass over the run's matrix shapes: "
        r"compiled torch [\d.]+ ms, triton [\d.]+ ms\)$",
        text,
        re.M,
    ), text[-3000:]
    assert "kernel warmup: 2 steps" in text
