"""The record: every number of "Update smoothing + Snoo" (2025-09-30, medium-track record 14) that
train_gpt.py implements, pinned literally from ../shared/spec/record.md.

This file is the record; a new record attempt updates it (and only it). Every other test file takes its
expectations from train_gpt.py itself (Hyperparameters, PRESETS and the named constants), so a copy of
the script with another number or another layer structure turns this file red ("this is no longer the
record") and leaves the others green wherever the code is still correct. The last section shows that on
such a copy. Figures that record.md does not state but that follow from its numbers say so.

Each section's pins are a check_*(script) function, run here on train_gpt and in the last section on
the changed copy.
"""

import ast
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_config import check_every_field_has_a_command_line
from test_data import check_download_hint
from test_kernels import BF16_BAND_MARGIN, band_check, coefficient_band, randn
from test_model import (
    check_forward_matches_the_reference,
    check_model_structure,
    check_value_embedding_layout,
    perturbed_model,
)
from test_optim import check_optimizer_groups, check_schedules

import train_gpt as tg

# -----------------------------------------------------------------------------------------------------
# hyperparameters: the defaults are the record

RECORD_HYPERPARAMETERS = dict(
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
    # torch's AdamW: the research switches of the Adam options off
    adam_bias_correction=True,
    adam_init="zero",
    adam_nested=False,
    adam_eps_max=None,
    matrix_optimizer="muon",  # the hidden matrices
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
    seed=None,  # every run an independent sample
)


def check_hyperparameters(script):
    args = script.Hyperparameters()
    for name, value in RECORD_HYPERPARAMETERS.items():
        assert getattr(args, name) == value, name
    assert script.PRESETS["record"] == {}
    # 8 ranks x 65,536 tokens per step; 5 validation steps of 8 x 262,144; 5590 steps: 2.93B tokens
    assert args.seqs_per_step * args.train_seq_len == 524_288
    assert args.val_tokens // (args.seqs_per_step * args.val_seq_len) == 5
    assert args.num_iterations * args.seqs_per_step * args.train_seq_len == 2_930_769_920


def test_hyperparameters_are_the_record():
    check_hyperparameters(tg)


# -----------------------------------------------------------------------------------------------------
# constants: data format, model constants, log layout


def check_constants(script):
    assert (script.SHARD_MAGIC, script.SHARD_VERSION, script.SHARD_HEADER_INTS) == (20240520, 1, 256)
    assert script.SHARD_HEADER_BYTES == 1024
    assert script.FINEWEB_SHARD_TOKENS == 100_000_000
    assert script.EOT_TOKEN == 50256
    assert script.ATTN_BLOCK_SIZE == 128 and script.VOCAB_MULTIPLE == 128
    assert script.ATTN_SCALE == 0.12 and script.LOGIT_SOFTCAP == 15 and script.ROPE_MIN_FREQ == 1 / 1024
    assert script.INIT_GAIN == 0.5
    assert script.EVAL_LOGIT_CHUNKS == 4
    assert script.LOG_RULE == "=" * 100


def test_constants_are_the_record():
    check_constants(tg)


# -----------------------------------------------------------------------------------------------------
# layer structure


def check_layer_structure(script):
    assert script.RECORD_NUM_LAYERS == 16
    assert script.NUM_VALUE_EMBEDS == 5
    # blocks 0-4 use value embeddings 0-4, blocks 5-10 none, blocks 11-15 use 0-4 again
    assert [script.value_embed_index(i, 16) for i in range(16)] == [0, 1, 2, 3, 4] + [None] * 6 + [0, 1, 2, 3, 4]
    assert script.NO_ATTENTION_BLOCK == 7
    assert script.LONG_WINDOW_BLOCKS == (0, 4, 11, 15)
    assert script.UNET_SKIPS == {9: 6, 10: 4, 11: 2}
    assert script.LAMBDAS_PER_BLOCK == 3 and script.ATTN_LAMBDAS_PER_BLOCK == 2


def test_layer_structure_is_the_record():
    check_layer_structure(tg)


# -----------------------------------------------------------------------------------------------------
# the model


def check_model(script):
    with torch.device("meta"):
        model = script.build_model(script.Hyperparameters(), attention="flex")
    params = dict(model.named_parameters())
    # 7 x 50257 x 1024 embedding + 50304 x 1024 head + 15 x 4 x 1024 x 1024 attention
    # + 16 x 2 x 4096 x 1024 MLP + 96 scalars
    assert sum(p.numel() for p in params.values()) == 608_885_856
    for name in ["embed1.weight", "embed2.weight"] + [f"value_embeds.{i}.weight" for i in range(5)]:
        assert params[name].shape == (50257, 1024) and params[name].dtype == torch.bfloat16, name
    assert params["lm_head_w"].shape == (50304, 1024) and params["lm_head_w"].dtype == torch.float32
    assert params["scalars"].shape == (96,) and params["scalars"].dtype == torch.float32
    assert len(model.blocks) == 16
    for i, block in enumerate(model.blocks):
        if i == 7:
            assert block.attn is None
        else:
            assert block.attn.qkvo_w.shape == (4, 1024, 1024) and block.attn.qkvo_w.dtype == torch.bfloat16
        assert block.mlp.fc_w.shape == (4096, 1024) and block.mlp.proj_w.shape == (1024, 4096)
        assert block.mlp.fc_w.dtype == block.mlp.proj_w.dtype == torch.bfloat16
        assert block.mlp.fc_w.wd_mul == block.mlp.proj_w.wd_mul == 2.0
    assert sum(1 for p in model.blocks.parameters() if p.ndim >= 2) == 47
    # rotary tables sized for the longest sequence, never saved
    assert model.rotary.cos.shape == (262_144, 64) and "rotary.cos" not in model.state_dict()


def test_model_is_the_record():
    check_model(tg)


def check_block_insides(script):
    """Attention, MLP and head compute the record's formulas (tests/test_model.py checks the wiring around
    them with the script's own blocks): q, k = rotary(norm(.)), v = norm(v) mixed with the value embedding,
    scale 0.12; relu(x W_fc^T)^2 W_proj^T; softcap 15 * z / sqrt(z^2 + 15^2) of the bf16 head."""
    torch.manual_seed(0)
    args = script.parse_args(["--preset=tiny", "--model_dim=64", "--head_dim=32"])
    model = perturbed_model(script, args)
    block, T = model.blocks[0], 2 * 128
    x = torch.randn(1, T, args.model_dim).bfloat16()
    ve, lambdas = torch.randn(1, T, args.model_dim).bfloat16(), torch.tensor([0.7, -0.4])
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    rms = lambda t: torch.nn.functional.rms_norm(t, (t.size(-1),))  # noqa: E731
    with torch.no_grad():
        w, H, D = block.attn.qkvo_w, args.num_heads, args.head_dim
        q, k, v = torch.nn.functional.linear(x, w[:3].flatten(end_dim=1)).view(1, T, 3 * H, D).chunk(3, dim=-2)
        q, k, v = model.rotary(rms(q)), model.rotary(rms(k)), lambdas[0] * rms(v) + lambdas[1] * ve.view(1, T, H, D)
        y = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=0.12
        )
        want = torch.nn.functional.linear(y.transpose(1, 2).reshape(1, T, H * D), w[3])
        torch.testing.assert_close(block.attn(x, ve, lambdas, model.rotary, mask), want, rtol=0, atol=0)
        h = torch.nn.functional.relu(torch.nn.functional.linear(x, block.mlp.fc_w)).square()
        torch.testing.assert_close(block.mlp(x), torch.nn.functional.linear(h, block.mlp.proj_w))
        z = torch.nn.functional.linear(x[0], model.lm_head_w.bfloat16()).float()
        torch.testing.assert_close(model.head(x[0]), 15 * z / torch.sqrt(z**2 + 15**2))


def test_block_insides_are_the_records():
    check_block_insides(tg)


def check_download_defaults():
    """data/cached_fineweb10B.py fetches what the record reads: 5590 steps of 524,288 tokens, 30 shards."""
    sys.path.insert(0, str(Path(tg.__file__).parent / "data"))
    import cached_fineweb10B as dl

    assert (dl.RECORD_STEPS, dl.TOKENS_PER_STEP, dl.DEFAULT_TRAIN_SHARDS) == (5590, 524_288, 30)


def test_download_defaults_are_the_record():
    check_download_defaults()


def test_scalars_start_as_the_record():
    """[16 skip weights = 1 | 16 x (1, 0, 0) block lambdas | 16 x (0.5, 0.5) attention lambdas],
    on a model of the record's structure at a tiny width."""
    model = tg.GPT(
        vocab_size=64,
        num_layers=16,
        num_heads=1,
        head_dim=8,
        model_dim=8,
        mlp_ratio=4,
        max_seq_len=128,
        attention="dense",
    )
    s = model.scalars.detach()
    assert s.shape == (96,)
    assert torch.equal(s[:16], torch.ones(16))
    assert torch.equal(s[16:64].view(16, 3), torch.tensor([[1.0, 0.0, 0.0]] * 16))
    assert torch.equal(s[64:].view(16, 2), torch.full((16, 2), 0.5))


def test_rotary_frequencies_are_the_record():
    """Head dim 128: 32 frequencies (1/1024) ** linspace(0, 1, 32), then 32 zeros."""
    rot = tg.Rotary(head_dim=128, max_seq_len=2)
    angles = torch.atan2(rot.sin[1], rot.cos[1]).double()  # position 1: the frequencies themselves
    want = torch.tensor([(1 / 1024) ** (k / 31) for k in range(32)] + [0.0] * 32, dtype=torch.float64)
    torch.testing.assert_close(angles, want, rtol=0, atol=1e-6)


# -----------------------------------------------------------------------------------------------------
# optimizers and Newton-Schulz

# (derived) five steps of p(x) = a x + b x^3 + c x^5 with the record's coefficients map [0.014, 1]
# into this band; their maximum over (0, 1] is the peak (fp64 on a fine grid)
RECORD_NS_BAND = (0.9778, 1.0318)
RECORD_NS_PEAK = 1.1450


def check_optimizers(script):
    args = script.Hyperparameters()
    with torch.device("meta"):
        model = script.build_model(args, "flex")
        adam, muon, snoo = script.build_optimizers(model, args)
    assert type(adam) is torch.optim.AdamW and type(muon) is script.Muon
    head, embeds, scalars = adam.param_groups
    assert head["params"] == [model.lm_head_w] and head["lr"] == 1 / 320
    assert len(embeds["params"]) == 7 and embeds["lr"] == 0.3
    assert scalars["params"] == [model.scalars] and scalars["lr"] == 0.015
    d = adam.defaults
    assert d["betas"] == (0.8, 0.95) and d["eps"] == 1e-10 and d["weight_decay"] == 0
    muon_params = [p for g in muon.param_groups for p in g["params"]]
    assert len(muon_params) == 47 and all(p.ndim >= 2 for p in muon_params)
    # groups by shape, largest first: 16 MLP fc, 16 MLP proj, 15 attention stacks
    assert [tuple(g["params"][0].shape) for g in muon.param_groups] == [(4096, 1024), (1024, 4096), (4, 1024, 1024)]
    assert [len(g["params"]) for g in muon.param_groups] == [16, 16, 15]
    for g in muon.param_groups:
        assert (g["lr"], g["weight_decay"], g["momentum"], g["update_smoothing"]) == (0.03, 0.01, 0.95, 0.2)
    assert snoo.k == 28 and len(snoo.params) == len(list(model.parameters()))
    sgd = snoo.sgd.param_groups[0]
    assert (sgd["lr"], sgd["momentum"], sgd["nesterov"]) == (0.68, 0.37, True)
    assert script.NS_COEFFS == (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    )
    assert script.NS_EPS == 1e-7


def test_optimizers_are_the_record():
    check_optimizers(tg)


def test_newton_schulz_band_is_the_records():
    low, high, peak = coefficient_band(tg.NS_COEFFS)
    assert (low, high) == pytest.approx(RECORD_NS_BAND, abs=2e-4) and peak == pytest.approx(RECORD_NS_PEAK, abs=2e-4)
    in_band, _, top = band_check(randn(128, 512, seed=0))
    assert RECORD_NS_BAND[0] - BF16_BAND_MARGIN <= in_band.min().item()
    assert in_band.max().item() <= RECORD_NS_BAND[1] + BF16_BAND_MARGIN and top <= RECORD_NS_PEAK + BF16_BAND_MARGIN


@pytest.mark.parametrize(
    "coeffs",
    [
        ((3.4445, -4.7750, 2.0315),) * 5,  # the original Muon quintic: band about [0.68, 1.13]
        tg.NS_COEFFS[:4],  # the record's first four steps: [0.92, 1.15]
        tg.NS_COEFFS[:4] + ((2.8866, -3.0525, 1.2012),),  # last a + 0.05: [1.03, 1.09]
    ],
    ids=["original Muon", "four steps", "last a + 0.05"],
)
def test_the_band_tells_the_records_coefficients_from_others(monkeypatch, coeffs):
    monkeypatch.setattr(tg, "NS_COEFFS", coeffs)
    in_band, _, _ = band_check(randn(128, 512, seed=0))
    low, high = in_band.min().item(), in_band.max().item()
    assert not (RECORD_NS_BAND[0] - BF16_BAND_MARGIN <= low and high <= RECORD_NS_BAND[1] + BF16_BAND_MARGIN)


# -----------------------------------------------------------------------------------------------------
# schedules


def check_schedule_values(script):
    args = script.Hyperparameters()
    # windows of 128-token blocks: 1 at the start, 27 at the end; f(0.5) = 0.5: 1728 tokens -> 1792
    assert script.window_blocks(0, args) == 1 and script.window_blocks(5590, args) == 27
    assert script.window_blocks(2795, args) == 14
    # lr: 1 for the first 30% of the steps, then linear down to 0.01
    assert script.lr_multiplier(0, args) == script.lr_multiplier(1676, args) == 1.0
    assert script.lr_multiplier(4000, args) == pytest.approx((1 - 4000 / 5590) / 0.7 * 0.99 + 0.01)
    assert script.lr_multiplier(5590, args) == pytest.approx(0.01)
    # Muon momentum: 0.85 -> 0.95 over the first 300 steps
    assert script.momentum_warmup(0, args) == 0.85 and script.momentum_warmup(150, args) == pytest.approx(0.90)
    assert script.momentum_warmup(300, args) == script.momentum_warmup(4000, args) == 0.95


def test_schedules_are_the_record():
    check_schedule_values(tg)


# -----------------------------------------------------------------------------------------------------
# data


def check_data_needs(script, tmp_path):
    """190 steps per 100M-token shard: the record reads the first 30 train shards."""
    assert script.steps_in_shard(100_000_000, 524_288) == 190
    with pytest.raises(script.UserError, match="python data/cached_fineweb10B.py 30"):
        script.check_data(script.parse_args(["--device=cpu", "--train_files=data/fineweb10B/nothing_*.bin"]))
    # (derived) ten shards are too few
    folder = tmp_path / "data" / "fineweb10B"
    folder.mkdir(parents=True, exist_ok=True)
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, 100_000_000)
    for i in range(1, 11):
        with open(folder / f"fineweb_train_{i:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            f.truncate(1024 + 2 * 100_000_000)  # sparse: the size is right, no disk is used
    with pytest.raises(script.UserError) as err:
        script.check_data(script.parse_args(["--device=cpu", f"--train_files={folder}/fineweb_train_*.bin"]))
    msg = str(err.value)
    assert "10 shard(s) with tokens for 1900 steps" in msg
    assert "5590 x 524,288 = 2,930,769,920 tokens" in msg and "python data/cached_fineweb10B.py 30" in msg


def test_data_needs_are_the_record(tmp_path):
    check_data_needs(tg, tmp_path)


# -----------------------------------------------------------------------------------------------------
# log format


def check_log_lines(script):
    # the final validation line of the record's published log
    assert (
        script.format_val_line(5590, 5590, 2.9191612, 1404459.4)
        == "step:5590/5590 val_loss:2.919161 train_time:1404459ms step_avg:251.24ms"
    )


def test_log_lines_are_the_records():
    check_log_lines(tg)


# -----------------------------------------------------------------------------------------------------
# a changed script fails here, and the derived checks of the other files still pass on it

# Hyperparameters defaults and layer-structure constants of a would-be record attempt.
CHANGED_DEFAULTS = dict(
    num_iterations=4000,
    muon_lr=0.04,
    adam_embed_lr=0.2,
    muon_momentum_warmup_steps=200,
    cooldown_frac=0.6,
    max_window_tokens=3072,
)
# an edit of a block's insides: the MLP's activation
CHANGED_CODE = {"F.relu(F.linear(x, self.fc_w)).square()": "F.gelu(F.linear(x, self.fc_w))"}
CHANGED_CONSTANTS = dict(
    NUM_VALUE_EMBEDS="3", NO_ATTENTION_BLOCK="6", UNET_SKIPS="{8: 7, 12: 3}", LONG_WINDOW_BLOCKS="(0, 8, 15)"
)


def changed_source(source: str) -> str:
    for name, value in CHANGED_DEFAULTS.items():
        source, n = re.subn(rf"^(    {name}: \w+ = hp\()[^,]+,", rf"\g<1>{value},", source, flags=re.M)
        assert n == 1, f"the field {name} is no longer written `{name}: type = hp(default, ...)`"
    for name, value in CHANGED_CONSTANTS.items():
        source, n = re.subn(rf"^{name} = [^#\n]*?(?=\s*(#|$))", f"{name} = {value}", source, count=1, flags=re.M)
        assert n == 1, f"the constant {name} is no longer assigned at the start of a line"
    for old, new in CHANGED_CODE.items():
        assert source.count(old) == 1, f"the code {old!r} is no longer in the script"
        source = source.replace(old, new)
    return source


@pytest.fixture
def changed_script(tmp_path, monkeypatch):
    """train_gpt.py with CHANGED_DEFAULTS and CHANGED_CONSTANTS, imported as train_gpt_changed."""
    path = tmp_path / "train_gpt_changed.py"
    path.write_text(changed_source(Path(tg.__file__).read_text(encoding="utf-8")), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("train_gpt_changed", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses and get_type_hints look it up
    spec.loader.exec_module(module)
    return module


def test_a_changed_script_fails_the_record_and_passes_the_derived_checks(changed_script, tmp_path):
    """The idea of this file, on a copy of train_gpt.py with other defaults (steps, lrs, warmup) and
    another layer structure (3 value embeddings, no attention in block 6, other skips and long
    windows): every section of the record it touches fails, the others pass, and the core checks of
    the other test files (which derive their expectations from the script) pass on it."""
    script = changed_script
    defaults = script.Hyperparameters()
    for name, value in CHANGED_DEFAULTS.items():
        assert getattr(defaults, name) == value != RECORD_HYPERPARAMETERS[name], name
    for name, value in CHANGED_CONSTANTS.items():
        assert getattr(script, name) == ast.literal_eval(value) != getattr(tg, name), name
    # the record's sections that the changes touch fail ...
    checks = (check_hyperparameters, check_layer_structure, check_model, check_optimizers, check_schedule_values)
    for check in (*checks, check_block_insides):
        with pytest.raises(AssertionError):
            check(script)
    with pytest.raises(AssertionError):
        check_data_needs(script, tmp_path)  # 4000 steps need fewer shards
    # ... and the untouched ones pass
    check_constants(script)
    check_log_lines(script)
    # the other files' checks follow the script
    check_every_field_has_a_command_line(script)
    check_model_structure(script, defaults)
    check_value_embedding_layout(script)
    check_optimizer_groups(script, defaults)
    check_schedules(script, defaults)
    check_download_hint(script)
    small = script.parse_args(["--preset=tiny", "--model_dim=64", "--head_dim=32"])
    check_forward_matches_the_reference(script, perturbed_model(script, small), eval_mode=False)
