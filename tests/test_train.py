"""End to end: the script as a user runs it, on CPU, one and two processes. Expected figures come
from the script (the tiny preset, its model, its constants), not from the record."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch

import train_gpt as tg

from conftest import REPO, TINY_TRAIN_SHARD_TOKENS, TINY_TRAIN_SHARDS, cpu_env, synthetic_tokens, write_test_shard

TINY = tg.parse_args(["--preset=tiny"])
TINY_STEP_TOKENS = TINY.seqs_per_step * TINY.train_seq_len
# steps one tiny_data train shard holds: one at pos = 0, step, 2 step, ... while pos + step + 1 < length
STEPS_PER_TINY_SHARD = sum(1 for pos in range(0, TINY_TRAIN_SHARD_TOKENS, TINY_STEP_TOKENS)
                           if pos + TINY_STEP_TOKENS + 1 < TINY_TRAIN_SHARD_TOKENS)

VAL_LINE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{6}) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")
TRAIN_LINE = re.compile(r"^step:(\d+)/(\d+) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")


def run_train(tmp_path, data, *argv, nproc=1, timeout=300):
    train, val = data
    tmp_path.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "train_gpt.py")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(REPO / "train_gpt.py")]
    out = subprocess.run([*cmd, "--preset=tiny", f"--train_files={train}", f"--val_files={val}",
                          f"--records_dir={tmp_path / 'records'}", *argv],
                         cwd=tmp_path, env=cpu_env(), capture_output=True, text=True, timeout=timeout)
    return out


def run_files(tmp_path, record=TINY.record):
    folder = tmp_path / "records" / record
    (txt,) = folder.glob("*.txt")
    return txt, json.loads(txt.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run of 16 steps, validating every 8, shared by the tests that read its files."""
    tmp_path = tmp_path_factory.mktemp("tiny_run")
    train, val = "train_*.bin", "val_*.bin"
    write_test_shard(tmp_path / "val_000000.bin", synthetic_tokens(20_000, seed=1))
    for i in range(1, TINY_TRAIN_SHARDS + 1):
        write_test_shard(tmp_path / f"train_{i:06d}.bin", synthetic_tokens(TINY_TRAIN_SHARD_TOKENS, seed=10 + i))
    out = run_train(tmp_path, (tmp_path / train, tmp_path / val), "--num_iterations=16", "--val_loss_every=8",
                    "--record=e2e")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path, out


def test_tiny_run_end_to_end(tiny_run):
    tmp_path, out = tiny_run
    txt, summary = run_files(tmp_path, "e2e")
    text = txt.read_text()
    source, _, rest = text.partition("\n" + tg.LOG_RULE + "\n")
    assert source == (REPO / "train_gpt.py").read_text()  # the log starts with the script itself
    header = rest.splitlines()
    assert header[0].startswith("Running Python 3.") and header[1].startswith("Running PyTorch 2.")
    assert header[2] == tg.LOG_RULE  # no nvidia-smi on CPU
    assert "world_size: 1" in rest and "newton_schulz: torch" in rest and "PYTORCH_ALLOC_CONF" in rest
    assert "  num_iterations = 16" in rest and f"  seed = {summary['hyperparameters']['seed']}" in rest
    with torch.device("meta"):
        tiny_model = tg.build_model(TINY, attention="dense")
    assert f"parameters: {sum(p.numel() for p in tiny_model.parameters()):,}" in rest
    lines = rest.splitlines()
    vals = [VAL_LINE.match(l) for l in lines if VAL_LINE.match(l)]
    trains = [TRAIN_LINE.match(l) for l in lines if TRAIN_LINE.match(l)]
    assert [int(m[1]) for m in vals] == [0, 8, 16] and all(int(m[2]) == 16 for m in vals)
    assert [int(m[1]) for m in trains] == list(range(1, 17))
    losses = [float(m[3]) for m in vals]
    # the head starts at zero: uniform over the padded vocabulary
    padded_vocab = math.ceil(TINY.vocab_size / tg.VOCAB_MULTIPLE) * tg.VOCAB_MULTIPLE
    assert losses[0] == pytest.approx(math.log(padded_vocab), abs=1e-5)
    assert losses[0] > losses[1] > losses[2] and losses[2] < 9.0
    assert summary["status"] == "finished" and summary["final_val_loss"] == pytest.approx(losses[2], abs=1e-6)
    assert summary["train_time_ms"] == pytest.approx(int(vals[2][4]), abs=1)
    assert [v["step"] for v in summary["val_losses"]] == [0, 8, 16] and summary["steps_done"] == 16
    assert summary["peak_memory_allocated_mib"] is None  # CPU: no CUDA allocator figures
    assert "logging to" in out.stdout and lines[-1] == vals[2][0]
    # on CPU the model runs eagerly and Muon's update is compiled
    did = re.escape(tg.warmup_description(compiled_model=False, compiled_update=TINY.compile, ns_impl="torch"))
    assert re.search(rf"^kernel warmup: {TINY.warmup_steps} steps in \d+\.\ds \({did}; not on the clock\)$", rest, re.M)


def test_bench_train_reads_the_log(tiny_run):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_train

    txt, summary = run_files(tiny_run[0], "e2e")
    rows = dict(bench_train.rows_from_log(txt.read_text().splitlines(), steps=16, skip=3))
    times = [int(m[3]) for m in map(TRAIN_LINE.match, txt.read_text().splitlines()) if m]
    assert rows["ms per step, steps 4-16"] == f"{(times[15] - times[2]) / 13:.1f}"
    assert rows["step_avg at step 16 (as logged)"] == f"{times[15] / 16:.1f}"
    assert rows["final val loss (random tokens: only finiteness matters)"] == f"{summary['final_val_loss']:.4f}"
    assert rows["peak memory allocated / reserved (MiB)"] == "not logged"  # CPU
    assert rows["kernel warmup (compile, autotune; untimed)"].endswith(" s")


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
    out = run_train(tmp_path, tiny_data, "--num_iterations=30", "--val_loss_every=0", "--warmup_steps=0",
                    "--seed=1", "--adam_scalar_lr=1e30")
    assert out.returncode == 3
    txt, summary = run_files(tmp_path)
    last = txt.read_text().splitlines()[-1]
    assert re.fullmatch(r"DIVERGED at step \d+: non-finite train loss nan; run stopped\.", last)
    assert summary["status"] == "diverged" and summary["final_val_loss"] is None
    assert summary["steps_done"] < 10  # stopped at once, not after 30 steps


def test_two_processes_compute_what_one_does(tmp_path, tiny_data):
    common = ["--num_iterations=3", "--val_loss_every=0", "--warmup_steps=1", "--seed=5", "--save_checkpoint=true"]
    one = run_train(tmp_path / "one", tiny_data, *common)
    two = run_train(tmp_path / "two", tiny_data, *common, nproc=2)
    other_seed = run_train(tmp_path / "seed", tiny_data, *common[:-2], "--seed=6", "--save_checkpoint=true")
    for out in (one, two, other_seed):
        assert out.returncode == 0, out.stderr[-3000:]
    txt2, summary2 = run_files(tmp_path / "two")
    assert "world_size: 2" in txt2.read_text() and summary2["status"] == "finished"
    weights = [torch.load(run_files(tmp_path / d)[0].with_suffix(".pt"))["model"] for d in ("one", "two", "seed")]
    for name, w1 in weights[0].items():
        w2, w_other = weights[1][name].float(), weights[2][name].float()
        w1 = w1.float()
        # equal up to the rounding of averaging bf16 gradients over ranks instead of micro-batches
        assert (w1 - w2).abs().max() <= 0.02 * (w1 - w_other).abs().max() + 1e-6, name


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
    write_test_shard(tmp_path / "train_000001.bin",
                     synthetic_tokens(steps * step_tokens + 2, seed=2, doc_len=1000, vocab=vocab))
    out = subprocess.run(
        [sys.executable, str(REPO / "train_gpt.py"), f"--train_files={tmp_path}/train_*.bin",
         f"--val_files={tmp_path}/val_*.bin", f"--val_tokens={val_tokens}", f"--num_iterations={steps}",
         "--val_loss_every=0", "--warmup_steps=2", f"--records_dir={tmp_path / 'records'}"],
        cwd=tmp_path, env=cpu_env(gpu=True), capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    txt, summary = run_files(tmp_path, defaults.record)
    assert summary["status"] == "finished" and 0 < summary["final_val_loss"] < 12
    assert summary["peak_memory_allocated_mib"] > 0
    text = txt.read_text()
    # --ns_impl=auto times both Newton-Schulz paths on a GPU and takes the faster
    assert re.search(r"^newton_schulz: (triton|torch) \(--ns_impl=auto; one pass over the run's matrix shapes: "
                     r"compiled torch [\d.]+ ms, triton [\d.]+ ms\)$", text, re.M), text[-3000:]
    assert "kernel warmup: 2 steps" in text
