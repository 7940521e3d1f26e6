"""The hyperparameters, presets and command line: the defaults are the record spec's numbers."""
import os
import subprocess
import sys

import pytest
import torch

import train_gpt as tg

from conftest import REPO

# Every number of ../shared/spec/record.md that is a hyperparameter or a constant of the script.
RECORD_DEFAULTS = dict(
    train_files="data/fineweb10B/fineweb_train_*.bin",
    val_files="data/fineweb10B/fineweb_val_*.bin",
    val_tokens=10_485_760,
    train_seq_len=65_536,
    val_seq_len=262_144,
    seqs_per_step=8,
    num_iterations=5590,
    cooldown_frac=0.7,
    final_lr_frac=0.01,
    max_window_tokens=3456,
    val_loss_every=125,
    warmup_steps=10,
    vocab_size=50257,
    num_layers=16,
    num_heads=8,
    head_dim=128,
    model_dim=1024,
    mlp_ratio=4,
    adam_head_lr=1 / 320,
    adam_embed_lr=0.3,
    adam_scalar_lr=0.015,
    adam_beta1=0.8,
    adam_beta2=0.95,
    adam_eps=1e-10,
    adam_weight_decay=0.0,
    muon_lr=0.03,
    muon_weight_decay=0.01,
    mlp_wd_mul=2.0,
    muon_momentum=0.95,
    muon_momentum_start=0.85,
    muon_momentum_warmup_steps=300,
    update_smoothing=0.2,
    snoo_k=28,
    snoo_lr=0.68,
    snoo_momentum=0.37,
    seed=None,
)


def test_defaults_are_the_record():
    args = tg.Hyperparameters()
    for name, value in RECORD_DEFAULTS.items():
        assert getattr(args, name) == value, name
    # 8 ranks x 65,536 tokens per step; 5 validation steps of 8 x 262,144
    assert args.seqs_per_step * args.train_seq_len == 524_288
    assert args.val_tokens // (args.seqs_per_step * args.val_seq_len) == 5


def test_constants_are_the_record():
    assert (tg.SHARD_MAGIC, tg.SHARD_VERSION, tg.SHARD_HEADER_INTS) == (20240520, 1, 256)
    assert tg.FINEWEB_SHARD_TOKENS == 100_000_000
    assert tg.EOT_TOKEN == 50256
    assert tg.ATTN_BLOCK_SIZE == 128 and tg.VOCAB_MULTIPLE == 128
    assert tg.ATTN_SCALE == 0.12 and tg.LOGIT_SOFTCAP == 15 and tg.ROPE_MIN_FREQ == 1 / 1024
    assert tg.INIT_GAIN == 0.5
    assert tg.EVAL_LOGIT_CHUNKS == 4
    assert tg.NUM_VALUE_EMBEDS == 5 and tg.NO_ATTENTION_BLOCK == 7
    assert tg.LONG_WINDOW_BLOCKS == (0, 4, 11, 15)
    assert tg.UNET_SKIPS == {9: 6, 10: 4, 11: 2}
    assert tg.NS_COEFFS == (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    )
    assert tg.NS_EPS == 1e-7


def test_overrides_are_typed():
    args = tg.parse_args(["--num_iterations=100", "--cooldown_frac", "0.5", "--compile=false",
                          "--train_files=x/*.bin", "--seed=7", "--snoo_k=0", "--update_smoothing=0"])
    assert args.num_iterations == 100 and isinstance(args.num_iterations, int)
    assert args.cooldown_frac == 0.5 and args.compile is False
    assert args.train_files == "x/*.bin" and args.seed == 7
    assert args.snoo_k == 0 and args.update_smoothing == 0
    assert tg.parse_args(["--seed=none"]).seed is None


def test_tiny_preset_applies_first_then_overrides():
    args = tg.parse_args(["--num_iterations=5", "--preset=tiny"])
    assert args.preset == "tiny" and args.model_dim == 128 and args.num_iterations == 5
    assert args.num_layers == 16 and args.seqs_per_step >= 2
    assert args.train_files == "data/sample/sample_train_*.bin"


@pytest.mark.parametrize("argv, needle", [
    (["--num_iteration=5"], "unknown option --num_iteration. Did you mean --num_iterations?"),
    (["--num_iterations=abc"], "--num_iterations='abc': expected an integer"),
    (["--compile=maybe"], "expected true or false"),
    (["--preset=huge"], "--preset='huge': expected one of record, tiny"),
    (["--val_tokens=1000"], "must be a multiple of seqs_per_step * val_seq_len = 2097152"),
    (["--train_seq_len=1000"], "multiple of the attention block"),
    (["--num_layers=12"], "defined for 16 layers"),
    (["--ns_impl=cuda"], "expected auto, triton or torch"),
    (["--num_iterations"], "needs a value"),
    (["positional"], "unexpected argument"),
    (["--num_iterations=0"], "must be positive"),
])
def test_bad_options_are_named(argv, needle):
    with pytest.raises(tg.UserError, match=None) as err:
        tg.parse_args(argv)
    assert needle in str(err.value)


def test_world_size_must_divide_sequences(monkeypatch):
    args = tg.parse_args(["--preset=tiny"])
    for ws in ("1", "2"):
        monkeypatch.setenv("WORLD_SIZE", ws)
        assert tg.resolve_runtime(args).world_size == int(ws)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(tg.UserError, match="WORLD_SIZE=3 does not divide --seqs_per_step=2"):
        tg.resolve_runtime(args)
    record = tg.parse_args(["--device=cpu"])
    for ws in (1, 2, 4, 8):
        monkeypatch.setenv("WORLD_SIZE", str(ws))
        assert tg.resolve_runtime(record).world_size == ws
    for ws in (3, 6, 16):
        monkeypatch.setenv("WORLD_SIZE", str(ws))
        with pytest.raises(tg.UserError):
            tg.resolve_runtime(record)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU rules")
def test_device_rules_without_gpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(tg.UserError, match="no CUDA GPU is visible"):
        tg.resolve_runtime(tg.parse_args([]))
    with pytest.raises(tg.UserError, match="--device=cuda but torch sees no CUDA GPU"):
        tg.resolve_runtime(tg.parse_args(["--preset=tiny", "--device=cuda"]))
    assert tg.resolve_runtime(tg.parse_args(["--preset=tiny"])).device.type == "cpu"
    assert tg.resolve_runtime(tg.parse_args(["--device=cpu"])).device.type == "cpu"


def run_script(*argv, cwd=REPO, **env):
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([sys.executable, str(REPO / "train_gpt.py"), *argv], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_every_option_and_exits_zero(tmp_path):
    out = run_script("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for f in tg.fields(tg.Hyperparameters):
        assert f"--{f.name}=" in out.stdout
    assert "--num_iterations=5590 (int)" in out.stdout
    assert list(tmp_path.iterdir()) == []  # wrote nothing


def test_user_errors_are_one_paragraph_and_exit_2(tmp_path):
    out = run_script("--bogus=1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown option --bogus.") and "Traceback" not in out.stderr
    out = run_script(cwd=tmp_path)  # the record configuration without a GPU
    assert out.returncode == 2 and "no CUDA GPU is visible" in out.stderr and "Traceback" not in out.stderr


def test_import_has_no_side_effects(tmp_path):
    code = ("import sys; sys.argv = ['x', '--bogus']; import torch, train_gpt; "
            "import torch.distributed as dist; "
            "print(torch.cuda.is_initialized(), dist.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    assert list(tmp_path.iterdir()) == []
