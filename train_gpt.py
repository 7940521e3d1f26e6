"""GPT-2 Medium speedrun: train to a mean FineWeb validation loss of 2.92 as fast as possible.

One self-contained script in the modded-nanoGPT style. By default it is the record "Update smoothing +
Snoo" of 2025-09-30 (medium-track record 14): 5590 steps of 8 x 65,536 tokens on 8 H100s.

    torchrun --standalone --nproc_per_node=8 train_gpt.py             # the record
    torchrun --standalone --nproc_per_node=2 train_gpt.py             # same math, 4 sequences per GPU
    python train_gpt.py --preset=tiny                                  # a small model, CPU if no GPU
    python train_gpt.py --help                                         # every option and its default

Sections: config, kernels, optimizers, model, data, logging, main(). What a default run does not need
(other optimizers, checkpoints, HellaSwag) is in speedrun/, imported only when an option asks for it.
"""

import copy
import datetime
import difflib
import glob
import importlib
import json
import math
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
import types
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:  # optional: Muon's Newton-Schulz kernels; without it --ns_impl=auto uses the torch path
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# -----------------------------------------------------------------------------------------------------
# config


def hp(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Hyperparameters:
    # data
    train_files: str = hp("data/fineweb10B/fineweb_train_*.bin", "glob of training shards, read in sorted order")
    val_files: str = hp("data/fineweb10B/fineweb_val_*.bin", "glob of validation shards")
    val_tokens: int = hp(10_485_760, "validation tokens per evaluation (multiple of seqs_per_step * val_seq_len)")
    train_seq_len: int = hp(64 * 1024, "tokens per training sequence (one sequence per micro-batch)")
    val_seq_len: int = hp(4 * 64 * 1024, "tokens per validation sequence")
    seqs_per_step: int = hp(8, "sequences per optimizer step, shared by the ranks (world size must divide it)")
    # schedule
    num_iterations: int = hp(5590, "training steps")
    cooldown_frac: float = hp(0.7, "fraction of steps over which the lr decays linearly")
    final_lr_frac: float = hp(0.01, "lr multiplier at the last step")
    max_window_tokens: int = hp(3456, "attention window (tokens) reached at the end of the window schedule")
    val_loss_every: int = hp(125, "validate every N steps (0: only after the last step)")
    warmup_steps: int = hp(10, "untimed kernel-warmup steps on random tokens; the state is restored after")
    # model
    vocab_size: int = hp(50257, "GPT-2 vocabulary")
    num_layers: int = hp(16, "transformer blocks (the record's structure is defined for 16)")
    num_heads: int = hp(8, "attention heads")
    head_dim: int = hp(128, "dimension per head")
    model_dim: int = hp(1024, "residual width")
    mlp_ratio: int = hp(4, "MLP hidden width / model_dim")
    # AdamW: embeddings, lm head, scalars
    adam_head_lr: float = hp(1 / 320, "AdamW lr of the lm head")
    adam_embed_lr: float = hp(0.3, "AdamW lr of the token and value embeddings")
    adam_scalar_lr: float = hp(0.015, "AdamW lr of the 96 scalars")
    adam_beta1: float = hp(0.8, "AdamW beta1")
    adam_beta2: float = hp(0.95, "AdamW beta2")
    adam_eps: float = hp(1e-10, "AdamW eps")
    adam_weight_decay: float = hp(0.0, "AdamW weight decay")
    # Research: Adam variants for every Adam of the run (speedrun/adam_variants.py; off: torch's fused AdamW)
    adam_bias_correction: bool = hp(True, "Adam's bias correction of both moments")
    adam_init: str = hp("zero", "Adam's moments start at zero | grad (the first gradient and its square)")
    adam_nested: bool = hp(False, "normalise the gradient by sqrt(v) + eps first, then average it (LaProp)")
    adam_eps_max: float | None = hp(None, "eps schedule toward SGD-like steps: eps grows to this (none: off)")
    adam_eps_start_frac: float = hp(0.5, "eps schedule: eps stays at its value until this fraction of training")
    adam_eps_end_frac: float = hp(0.9, "eps schedule: eps reaches adam_eps_max at this fraction of training")
    adam_eps_growth: float = hp(0.001, "eps schedule: exponential growth rate per step")
    # Muon: hidden matrices
    muon_lr: float = hp(0.03, "Muon lr")
    muon_weight_decay: float = hp(0.01, "Muon decoupled weight decay (times lr)")
    mlp_wd_mul: float = hp(2.0, "weight-decay multiplier of the MLP matrices")
    muon_momentum: float = hp(0.95, "Muon momentum after the warmup")
    muon_momentum_start: float = hp(0.85, "Muon momentum at step 0")
    muon_momentum_warmup_steps: int = hp(300, "steps of the linear momentum warmup")
    update_smoothing: float = hp(0.2, "beta of the EMA of Muon's updates (0: off)")
    ns_impl: str = hp("auto", "Newton-Schulz: auto (on CUDA the faster, timed at startup) | triton | torch")
    # Research: other optimizers of the hidden matrices (speedrun/matrix_optimizers.py), from their published
    # settings; "none" keeps a published value
    matrix_optimizer: str = hp("muon", "optimizer of the hidden matrices: muon (the record) | adam | shampoo | soap")
    matrix_lr: float | None = hp(None, "lr of a non-Muon --matrix_optimizer (none: its published setting)")
    matrix_betas: tuple[float, float] | None = hp(None, "betas of a non-Muon --matrix_optimizer, e.g. 0.95,0.95")
    matrix_eps: float | None = hp(None, "epsilon of a non-Muon --matrix_optimizer")
    matrix_weight_decay: float | None = hp(None, "decoupled weight decay (times lr) of a non-Muon optimizer")
    matrix_precondition_frequency: int | None = hp(None, "steps between preconditioner updates (shampoo, soap)")
    # Snoo outer optimizer
    snoo_k: int = hp(28, "Snoo's outer step every k steps (0: Snoo off)")
    snoo_lr: float = hp(0.68, "Snoo's SGD lr")
    snoo_momentum: float = hp(0.37, "Snoo's SGD Nesterov momentum")
    # run
    seed: int | None = hp(None, "random seed (default: a fresh one, logged, so runs are independent)")
    device: str = hp("auto", "auto | cuda | cpu (the record configuration needs --device=cpu to run on CPU)")
    compile: bool = hp(True, "torch.compile the model (CUDA) and Muon's update (every device)")
    coordinate_descent_tuning: bool = hp(True, "inductor coordinate-descent tuning (allowed on this track)")
    records_dir: str = hp("records", "where run logs go: <records_dir>/<record>/<run id>.txt and .json")
    record: str = hp("dev", "name of the folder of this batch of runs")
    # speedrun/checkpoints.py, speedrun/hellaswag.py, speedrun/weight_drift.py
    checkpoint_every: int = hp(0, "save a checkpoint to --resume from every N steps and at Ctrl-C/SIGTERM (0: off)")
    resume: str | None = hp(None, "continue the run of this checkpoint: same run id, its log appended")
    save_checkpoint: bool = hp(False, "save the final weights to <records_dir>/<record>/<run id>.pt")
    hellaswag: bool = hp(False, "score HellaSwag after the last validation, off the clock (see evals/)")
    hellaswag_file: str = hp("data/hellaswag/hellaswag_val.tokens.jsonl", "tokenized HellaSwag for --hellaswag")
    log_weight_drift: bool = hp(False, "log ||w - w0|| / ||w0|| and cos(w, w0) per parameter group at every validation")
    preset: str = hp("record", "record | tiny (16 small layers for CPU; applied before the other options)")


PRESETS = {
    "record": {},
    # The record's structure (16 layers, value embeddings, skips, no attention in block 7, long/short
    # windows) at width 128 and 512-token sequences, for CPU (seconds per step: README). Its momentum
    # warmup is the record's share of the run (300 of 5590 steps is about 5%).
    "tiny": dict(
        train_files="data/sample/sample_train_*.bin",
        val_files="data/sample/sample_val_*.bin",
        val_tokens=8192,
        train_seq_len=512,
        val_seq_len=1024,
        seqs_per_step=2,
        num_iterations=200,
        val_loss_every=50,
        max_window_tokens=384,
        warmup_steps=2,
        num_heads=2,
        head_dim=64,
        model_dim=128,
        muon_momentum_warmup_steps=10,
        record="tiny",
    ),
}


class UserError(Exception):
    """A mistake in the command line, the environment or the data: reported as one paragraph, exit 2."""


def describe_error(e: BaseException) -> str:
    """An exception's type and the first line of its message, for a one-line report."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else 'no message'}"


SCALAR_TYPES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def field_type(typ) -> tuple[type, bool, int | None]:
    """(scalar type, may be None, tuple length or None) of a field: bool, int, float or str, a tuple of
    one of them (tuple[float, float]), and `X | None` of either. Any other type is a TypeError."""
    optional = get_origin(typ) is types.UnionType and type(None) in get_args(typ) and len(get_args(typ)) == 2
    if optional:
        typ = next(t for t in get_args(typ) if t is not type(None))
    members = get_args(typ) if get_origin(typ) is tuple else (typ,)
    if len(set(members)) != 1 or members[0] not in SCALAR_TYPES:
        raise TypeError(f"unsupported field type {typ}")
    return members[0], optional, len(members) if get_origin(typ) is tuple else None


def format_value(value) -> str:
    """A value as the command line writes it (the inverse of parse_value)."""
    if isinstance(value, tuple):
        return ",".join(map(format_value, value))
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def parse_value(name: str, text: str, typ):
    base, optional, length = field_type(typ)
    if optional and text == "none":
        return None
    items = text.split(",") if length else [text]
    try:
        if len(items) != (length or 1) or base is bool and any(i not in ("true", "false") for i in items):
            raise ValueError
        values = tuple(i == "true" if base is bool else base(i) for i in items)
        if base is float and not all(map(math.isfinite, values)):
            raise ValueError
    except ValueError:
        kind = SCALAR_TYPES[base] if not length else f"{length} comma-separated values, each {SCALAR_TYPES[base]}"
        raise UserError(f"option --{name}={text!r}: expected {kind}{' (or none)' if optional else ''}.") from None
    return values if length else values[0]


def typed_options(pairs: list[tuple[str, str]]) -> list[tuple[str, object]]:
    """(name, value) of --name=value options; an unknown name is an error that suggests the closest."""
    hints = get_type_hints(Hyperparameters)
    for name, _ in pairs:
        if name not in hints:
            close = difflib.get_close_matches(name, hints, n=1)
            raise UserError(
                f"unknown option --{name}.{f' Did you mean --{close[0]}?' if close else ''} "
                f"Run `python train_gpt.py --help` for the list."
            )
    return [(name, parse_value(name, text, hints[name])) for name, text in pairs]


def parse_args(argv: list[str]) -> Hyperparameters:
    """--name=value for every field; --preset applies first, then the rest in order. With --resume the
    checkpoint's hyperparameters apply first instead (speedrun/checkpoints.py)."""
    pairs = []
    for arg in argv:
        name, eq, text = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not eq:
            raise UserError(f"argument {arg!r}: options are written --name=value (see --help).")
        pairs.append((name, text))
    options = typed_options(pairs)
    resume = dict(options).get("resume")
    if resume:
        args = extension("checkpoints", "--resume").resume_args(resume, pairs)
    else:
        preset = dict(options).get("preset", "record")
        if preset not in PRESETS:
            raise UserError(f"option --preset={preset!r}: expected one of {', '.join(PRESETS)}.")
        args = Hyperparameters(**PRESETS[preset], preset=preset)
        for name, value in options:
            setattr(args, name, value)
    validate_args(args)
    return args


def validate_args(args: Hyperparameters) -> None:
    """The options' values, before anything runs; a research option's are checked by its module."""
    positive = ("val_tokens", "train_seq_len", "val_seq_len", "seqs_per_step", "num_iterations")
    positive += ("max_window_tokens", "vocab_size", "num_heads", "head_dim", "model_dim", "mlp_ratio")
    checks = [(f"--{n}={getattr(args, n)}", getattr(args, n) > 0, "must be positive") for n in positive]
    checks += [
        (f"--{n}={getattr(args, n)}", getattr(args, n) >= 0, "must be >= 0")
        for n in ("val_loss_every", "warmup_steps", "snoo_k", "muon_momentum_warmup_steps")
    ]
    checks += [
        (f"--{n}={getattr(args, n)}", getattr(args, n) % ATTN_BLOCK_SIZE == 0,
         f"must be a multiple of the attention block ({ATTN_BLOCK_SIZE} tokens)")
        for n in ("train_seq_len", "val_seq_len")
    ]  # fmt: skip
    per_val_step = args.seqs_per_step * args.val_seq_len
    checks += [
        (f"--val_tokens={args.val_tokens}", args.val_tokens % per_val_step == 0,
         f"must be a multiple of seqs_per_step * val_seq_len = {per_val_step}, the tokens of one validation step"),
        (f"--num_layers={args.num_layers}", args.num_layers == RECORD_NUM_LAYERS,
         f"the record's layer structure (value embeddings, U-net skips, windows) is defined for {RECORD_NUM_LAYERS} "
         f"layers; change the width instead"),
        (f"--head_dim={args.head_dim}", args.head_dim % 4 == 0, "must be a multiple of 4 (rotary)"),
        (f"--cooldown_frac={args.cooldown_frac}", 0 <= args.cooldown_frac <= 1, "must be in [0, 1]"),
        (f"--update_smoothing={args.update_smoothing}", 0 <= args.update_smoothing < 1, "must be in [0, 1)"),
        (f"--ns_impl={args.ns_impl!r}", args.ns_impl in ("auto", "triton", "torch"), "expected auto, triton or torch"),
        (f"--device={args.device!r}", args.device in ("auto", "cuda", "cpu"), "expected auto, cuda or cpu"),
        (f"--record={args.record!r}", args.record and "/" not in args.record and args.record not in (".", ".."),
         "must be a plain folder name"),
    ]  # fmt: skip
    for option, ok, message in checks:
        if not ok:
            raise UserError(f"option {option}: {message}.")
    for name in extensions_needed(args):  # a module checks its own options, where it has any
        getattr(extension(name, EXTENSIONS[name]), "validate", lambda args: None)(args)


def help_text() -> str:
    hints = get_type_hints(Hyperparameters)
    lines = [__doc__.strip(), "", "Options (--name=value; defaults are the record):"]
    for f in fields(Hyperparameters):
        base, optional, length = field_type(hints[f.name])
        kind = ",".join([base.__name__] * (length or 1)) + (" or none" if optional else "")
        lines.append(f"  --{f.name}={format_value(f.default)} ({kind}): {f.metadata['help']}")
    lines += ["", "Presets (--preset=NAME sets these first; the other options apply on top):"]
    for name, overrides in PRESETS.items():
        lines.append(f"  {name}: {' '.join(f'--{k}={format_value(v)}' for k, v in overrides.items()) or 'the record'}")
    return "\n".join(lines)


# The modules of speedrun/ beside this script, each imported only when an option asks for it (-> the option
# named in an error when the module is missing), and the log embeds the source of each one imported.
EXTENSIONS = {
    "matrix_optimizers": "--matrix_optimizer and --matrix_*",
    "adam_variants": "--adam_bias_correction, --adam_init, --adam_nested and --adam_eps_*",
    "weight_drift": "--log_weight_drift",
    "checkpoints": "--checkpoint_every, --resume and --save_checkpoint",
    "hellaswag": "--hellaswag",
}


def extensions_needed(args: Hyperparameters) -> list[str]:
    default = Hyperparameters()
    changed = {f.name for f in fields(args) if getattr(args, f.name) != getattr(default, f.name)}
    needed = dict(
        matrix_optimizers=any(n.startswith("matrix_") for n in changed),
        adam_variants=bool({"adam_bias_correction", "adam_init", "adam_nested", "adam_eps_max"} & changed),
        weight_drift=args.log_weight_drift,
        checkpoints=bool(args.checkpoint_every or args.resume or args.save_checkpoint),
        hellaswag=args.hellaswag,
    )
    return [name for name, yes in needed.items() if yes]


def extension(name: str, option: str) -> types.ModuleType:
    """speedrun/<name>.py, which `option` needs. Its functions take this script's as `train_gpt`: a script run
    as __main__ is registered under that name first, so that there is one copy of every class."""
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) and Path(main.__file__).resolve() == Path(__file__).resolve():
        sys.modules.setdefault("train_gpt", main)
    if str(Path(__file__).resolve().parent) not in sys.path:  # speedrun/ beside the script, from any folder
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        return importlib.import_module(f"speedrun.{name}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("speedrun"):
            raise
        raise UserError(
            f"{option} needs speedrun/{name}.py beside train_gpt.py, and it is not there ({describe_error(e)}). "
            f"Copy the speedrun/ folder of the repository next to the script, or leave out {option}."
        ) from None


# -----------------------------------------------------------------------------------------------------
# kernels

# Muon's Newton-Schulz: five quintic steps, one (a, b, c) per step, run in bf16.
NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
NS_EPS = 1e-7


def newton_schulz_torch(G: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Orthogonalize a matrix or a batch of matrices with NS_COEFFS, in bf16 (dtype: for the tests)."""
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    for a, b, c in NS_COEFFS:
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X.mT if tall else X


# The Triton path. A = X Xᵀ and B = b A + c A A are symmetric, so one kernel computes only the output
# tiles on and below the diagonal and stores each off-diagonal tile twice, as itself and as its mirror
# (36 of the 64 tiles of a 1024 x 1024 output at 128 x 128). B uses A's symmetry once more: A A = A Aᵀ,
# so it is the same kernel run on X = A, with b A added in the epilogue (HAS_C). The third product,
# a X + B X, is not symmetric and goes to cuBLAS through addmm / baddbmm.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # kernels run on CPU tensors (tests)

if triton is not None:
    if TRITON_INTERPRET:
        # one small config: no autotuning, and several tiles, masked edges and mirrors at test sizes
        _SYM_CONFIGS = [triton.Config(dict(BLOCK=16, BLOCK_K=32))]
    else:
        # Untuned choices for H100 (no GPU was at hand): the usual Hopper bf16 tile, 128 x 128 with
        # BLOCK_K 64 (32 KiB of shared memory per stage), 8 or 4 warps, 3-4 stages; and 64 x 64 tiles,
        # because a 1024-row output has only 36 lower-triangle 128-tiles for 132 SMs (64-tiles: 136).
        # The autotuner times them per shape at the first call, in the startup check (before the clock);
        # benchmarks/bench_newton_schulz.py prints the picks and is how a GPU session confirms them.
        _SYM_CONFIGS = [
            triton.Config(dict(BLOCK=block, BLOCK_K=block_k), num_warps=warps, num_stages=stages)
            for block, block_k, warps, stages in (
                (128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 4, 4), (64, 64, 4, 4), (64, 128, 4, 3)
            )
        ]  # fmt: skip

    def _device_shared_memory(device_index: int) -> int | None:
        try:
            return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]
        except Exception:  # no GPU driver (the interpreter), or a driver API this triton lacks
            return None

    def _fitting_configs(configs, named_args, **kwargs):
        """The autotuner's early prune: drop configs whose tiles do not fit this GPU's shared memory
        (A100 and consumer cards have less than an H100); keep the smallest if none does."""
        X = named_args["X"]
        limit = _device_shared_memory(X.device.index) if X.is_cuda else None
        if limit is None:
            return configs
        size = lambda c: sym_config_shared_memory(c, X.element_size())  # noqa: E731
        return [c for c in configs if size(c) <= limit] or [min(configs, key=size)]

    @triton.autotune(
        configs=_SYM_CONFIGS, key=["N", "M", "K", "HAS_C"], prune_configs_by=dict(early_config_prune=_fitting_configs)
    )
    @triton.jit
    def _sym_matmul_kernel(
        X, C, Out, alpha, beta, N, M, K, sxb, sxm, sxk, scb, scm, scn, sob, som, son,
        HAS_C: tl.constexpr, PRECISION: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """Out[n] = X[n] X[n]ᵀ, or alpha X[n] X[n]ᵀ + beta C[n] with C[n] symmetric (HAS_C), for X of
        shape (N, M, K). Program (t, n) computes the t-th lower-triangle tile of Out[n]. N is only a
        key of the autotuner: the batch sets how many programs fill the GPU."""
        t = tl.program_id(0)
        n = tl.program_id(1).to(tl.int64)
        # Lower-triangle tiles in row-major order: t = i (i + 1) / 2 + j with j <= i. The float square
        # root may be off by one; the integer checks correct it.
        i = ((tl.sqrt(8.0 * t + 1.0) - 1.0) * 0.5).to(tl.int32)
        i = tl.where(i * (i + 1) // 2 > t, i - 1, i)
        i = tl.where((i + 1) * (i + 2) // 2 <= t, i + 1, i)
        j = t - i * (i + 1) // 2
        rows = i * BLOCK + tl.arange(0, BLOCK)
        cols = j * BLOCK + tl.arange(0, BLOCK)
        ks = tl.arange(0, BLOCK_K)
        X += n * sxb
        row_tile = X + rows[:, None] * sxm + ks[None, :] * sxk  # X[rows, k:k+BLOCK_K]
        col_tile = X + cols[None, :] * sxm + ks[:, None] * sxk  # X[cols, k:k+BLOCK_K]ᵀ
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            a = tl.load(row_tile, mask=(rows[:, None] < M) & (ks[None, :] < K - k), other=0.0)
            b = tl.load(col_tile, mask=(cols[None, :] < M) & (ks[:, None] < K - k), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            row_tile += BLOCK_K * sxk
            col_tile += BLOCK_K * sxk
        inside = (rows[:, None] < M) & (cols[None, :] < M)
        if HAS_C:
            c = tl.load(C + n * scb + rows[:, None] * scm + cols[None, :] * scn, mask=inside, other=0.0)
            acc = alpha * acc + beta * c.to(tl.float32)
        out = acc.to(Out.dtype.element_ty)
        Out += n * sob
        tl.store(Out + rows[:, None] * som + cols[None, :] * son, out, mask=inside)
        if i != j:  # the mirror; a diagonal tile is its own and is stored once
            tl.store(Out + rows[:, None] * son + cols[None, :] * som, out, mask=inside)


def sym_config_shared_memory(config, element_size: int) -> int:
    """Bytes of shared memory a config of the symmetric kernel needs: num_stages buffers of a row
    tile and a column tile. Exact on sm_90; sm_80/sm_89 pipelines use one stage fewer."""
    return config.num_stages * 2 * config.kwargs["BLOCK"] * config.kwargs["BLOCK_K"] * element_size


def _sym_matmul(X: Tensor, C: Tensor | None, alpha: float, beta: float) -> Tensor:
    squeeze = X.ndim == 2
    if squeeze:
        X = X.unsqueeze(0)
        C = None if C is None else C.unsqueeze(0)
    if X.ndim != 3:
        raise ValueError(f"expected a matrix or a batch of matrices, got shape {tuple(X.shape)}")
    n, m, k = X.shape
    out = torch.empty(n, m, m, dtype=X.dtype, device=X.device)
    c = X if C is None else C  # any tensor when HAS_C is off: the kernel never reads it
    # fp32 inputs (tests) get exact fp32 products rather than the TF32 that tl.dot defaults to
    precision = "ieee" if X.dtype == torch.float32 else "tf32"

    def grid(meta):
        tiles = triton.cdiv(m, meta["BLOCK"])
        return tiles * (tiles + 1) // 2, n

    _sym_matmul_kernel[grid](
        X, c, out, alpha, beta, n, m, k, *X.stride(), *c.stride(), *out.stride(), HAS_C=C is not None,
        PRECISION=precision,
    )  # fmt: skip
    return out[0] if squeeze else out


def gram_triton(X: Tensor) -> Tensor:
    """X Xᵀ for X of shape (M, K) or (N, M, K), any strides; fp32 accumulation, X's dtype out."""
    return _sym_matmul(X, None, 1.0, 0.0)


def sym_poly_triton(A: Tensor, b: float, c: float) -> Tensor:
    """b A + c A A for symmetric A of shape (M, M) or (N, M, M), any strides."""
    return _sym_matmul(A, A, c, b)


def newton_schulz_triton(G: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """newton_schulz_torch with the two symmetric products in Triton. G: (M, K) or (N, M, K)."""
    tall = G.size(-2) > G.size(-1)
    # A contiguous copy, transposed if tall, so both the kernel and cuBLAS read X along its rows.
    X = (G.mT if tall else G).to(dtype, memory_format=torch.contiguous_format)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    for a, b, c in NS_COEFFS:
        B = sym_poly_triton(gram_triton(X), b, c)
        X = torch.baddbmm(X, B, X, beta=a) if X.ndim == 3 else torch.addmm(X, B, X, beta=a)
    return X.mT if tall else X


# The Triton and torch paths round differently in bf16: their outputs differ by about 2e-2 (relative,
# Frobenius). Three times that means the kernels are wrong on this GPU, not rounding.
NS_CHECK_TOLERANCE = 6e-2


def check_newton_schulz_triton(device: torch.device, shapes: list[tuple[int, ...]]) -> None:
    """Before the clock starts, the Triton path must agree with the torch path on the run's matrix
    shapes: a kernel that miscompiles on this GPU stops the run instead of training on wrong updates.
    (It also autotunes the kernels for those shapes.)"""
    gen = torch.Generator(device=device).manual_seed(0)
    for shape in shapes:
        G = torch.randn(shape, device=device, generator=gen)
        got, want = newton_schulz_triton(G).float(), newton_schulz_torch(G).float()
        rel = ((got - want).norm() / want.norm()).item()
        if not rel < NS_CHECK_TOLERANCE:
            raise UserError(
                f"the Triton Newton-Schulz kernels disagree with the torch path on this GPU: relative "
                f"difference {rel:.3g} for a matrix of shape {shape}, expected below {NS_CHECK_TOLERANCE}. "
                f"Run with --ns_impl=torch, and report the GPU, torch and triton versions."
            )


def resolve_ns_impl(requested: str, on_cuda: bool) -> str:
    """The candidate Newton-Schulz implementation for --ns_impl (choose_newton_schulz decides): auto is
    triton on CUDA when triton imports, else torch. triton needs triton and CUDA, or TRITON_INTERPRET=1
    (the tests, on CPU)."""
    if requested == "torch":
        return "torch"
    if requested == "auto":
        return "triton" if on_cuda and triton is not None and not TRITON_INTERPRET else "torch"
    if requested != "triton":
        raise ValueError(f"unknown --ns_impl={requested!r}: expected auto, triton or torch")
    if triton is None:
        raise UserError(
            "--ns_impl=triton but triton is not installed: install it (pip install triton) or use --ns_impl=torch."
        )
    if on_cuda and TRITON_INTERPRET:
        raise UserError(
            "--ns_impl=triton with TRITON_INTERPRET=1 set: the kernels would run in the CPU "
            "interpreter. Unset TRITON_INTERPRET for a GPU run."
        )
    if not on_cuda and not TRITON_INTERPRET:
        raise UserError(
            "--ns_impl=triton needs a CUDA GPU and this run is on CPU: use --ns_impl=torch "
            "(or auto, which picks torch on CPU)."
        )
    return "triton"


NS_TIMING_REPEATS = 5  # timed passes per implementation under --ns_impl=auto; the median decides


def time_ms(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in ms after `warmup` untimed calls: CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def measure_newton_schulz(
    device: torch.device, shapes: list[tuple[int, ...]], compiled: bool = True, repeats: int = NS_TIMING_REPEATS
) -> dict[str, float]:
    """ms of one pass over one matrix of each shape, for the torch path (compiled, unless the run does
    not compile) and the Triton path; compiles and autotunes both first."""
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn(shape, device=device, generator=gen) for shape in shapes]
    torch_ns = torch.compile(newton_schulz_torch, dynamic=False) if compiled else newton_schulz_torch
    paths = dict(torch=torch_ns, triton=newton_schulz_triton)
    return {name: time_ms(lambda: [ns(x) for x in inputs], device, repeats) for name, ns in paths.items()}


NS_TRITON_MARGIN = 0.95  # auto takes Triton only if at least 5% faster: runs of one batch then agree


def choose_newton_schulz(requested: str, rt: "Runtime", shapes: list[tuple[int, ...]], compiled: bool) -> dict:
    """Muon's Newton-Schulz for this run, decided before any file is written. On a GPU, auto checks
    the Triton path against torch, times both on the run's shapes (torch compiled as the run will
    compile it) and takes Triton only when it is clearly faster; a Triton failure under auto falls back
    to torch. Every rank decides alike, and learns every rank's failure."""
    impl = resolve_ns_impl(requested, rt.device.type == "cuda")
    info = dict(requested=requested, used=impl, timings_ms=None, note=None)
    if impl != "triton":
        return info
    error, timings = None, None
    try:  # a kernel that fails to compile or to launch, or that computes wrong
        check_newton_schulz_triton(rt.device, shapes)
        if requested == "auto":
            timings = measure_newton_schulz(rt.device, shapes, compiled)
    except Exception as e:
        error = describe_error(e)
    failed = [f"rank {r}: {m}" if rt.world_size > 1 else m for r, m in enumerate(rt.gather_messages(error)) if m]
    if failed and requested == "triton":
        raise UserError(
            f"--ns_impl=triton: the Triton path fails on this GPU ({'; '.join(failed)}). Use "
            f"--ns_impl=auto (falls back to torch) or torch, and report the GPU, torch and triton "
            f"versions."
        )
    if failed:
        info.update(used="torch", note=f"the Triton path failed ({'; '.join(failed)}); using torch")
    elif timings is not None:
        if rt.world_size > 1:
            t = torch.tensor(list(timings.values()), device=rt.device)
            all_reduce_avg(t, rt)
            timings = dict(zip(timings, t.tolist()))
        faster = timings["triton"] < NS_TRITON_MARGIN * timings["torch"]
        info.update(
            timings_ms=timings, used="triton" if faster else "torch", torch_timed="compiled" if compiled else "eager"
        )
    return info


def newton_schulz_line(info: dict) -> str:
    line = f"newton_schulz: {info['used']} (--ns_impl={info['requested']}"
    if info["timings_ms"]:
        t = info["timings_ms"]
        line += (
            f"; one pass over the run's matrix shapes: {info['torch_timed']} torch {t['torch']:.3f} ms, "
            f"triton {t['triton']:.3f} ms"
        )
    if info["note"]:
        line += f"; {info['note']}"
    return line + ")"


# -----------------------------------------------------------------------------------------------------
# optimizers


def master_weight(p: Tensor, mantissa: Tensor) -> Tensor:
    """The fp32 value whose upper 16 bits are the bf16 parameter and lower 16 bits the mantissa.

    int32 arithmetic because eager CPU torch has no uint32 shifts."""
    upper = p.view(torch.int16).to(torch.int32) << 16
    lower = mantissa.view(torch.int16).to(torch.int32) & 0xFFFF
    return (upper | lower).view(torch.float32)


def store_master_weight(master: Tensor, p: Tensor, mantissa: Tensor) -> None:
    """Split fp32 into the bf16 parameter (its truncation) and the lower 16 bits."""
    bits = master.view(torch.int32)
    p.view(torch.int16).copy_((bits >> 16).to(torch.int16))
    mantissa.view(torch.int16).copy_(bits.to(torch.int16))


def full_precision(x: float) -> Tensor:
    """A Python float as a float64 0-dim tensor, as the record passes Muon's scalars (its
    torch._as_tensor_fullprec): a compiled update takes it as an input, so a new value never
    recompiles, and the arithmetic with it matches the record's."""
    return torch.tensor(x, dtype=torch.float64)


def muon_nesterov(buf: Tensor, grad: Tensor, momentum: Tensor) -> Tensor:
    """m <- mu m + (1 - mu) g in fp32; returns the Nesterov form mu m + (1 - mu) g that Newton-Schulz
    orthogonalizes."""
    g = grad.float()
    buf.copy_(momentum * buf + (1 - momentum) * g)
    return momentum * buf + (1 - momentum) * g


def muon_write(
    p: Tensor, mantissa: Tensor | None, smoothed: Tensor | None, update: Tensor, smoothing: Tensor, step_size: Tensor,
    decay: Tensor,
) -> None:  # fmt: skip
    """p <- p (1 - decay) - step_size * s, where s is the update or, with smoothing, its EMA."""
    if smoothed is not None:
        # update smoothing, an EMA of Muon's updates kept in bf16: record 13, medium track
        smoothed.copy_(smoothing * smoothed.float() + (1 - smoothing) * update.float())
        update = smoothed
    if mantissa is not None:
        # fp32 master weights as bf16 parameter + uint16 lower half: the medium track's Muon
        master = master_weight(p, mantissa)
        master.mul_(1 - decay)
        master.add_(update, alpha=-step_size)
        store_master_weight(master, p, mantissa)
    else:
        p.mul_(1 - decay)
        p.add_(update, alpha=-step_size)


def muon_update(
    p: Tensor, mantissa: Tensor | None, buf: Tensor, smoothed: Tensor | None, grad: Tensor, momentum: Tensor,
    smoothing: Tensor, step_size: Tensor, decay: Tensor,
) -> None:  # fmt: skip
    """One Muon step of one parameter: Nesterov momentum, Newton-Schulz (torch), smoothing, decoupled
    decay, master-weight write. Compiled as one function, as the record compiles it."""
    update = newton_schulz_torch(muon_nesterov(buf, grad, momentum))
    muon_write(p, mantissa, smoothed, update, smoothing, step_size, decay)


def muon_update_fn(ns_impl: str, compiled: bool):
    """muon_update for an implementation: with torch, the whole update is one compiled graph per
    matrix shape; with triton, the kernels run between the compiled elementwise parts."""
    if ns_impl == "torch":
        return torch.compile(muon_update, dynamic=False) if compiled else muon_update
    if ns_impl != "triton":
        raise ValueError(f"unknown Newton-Schulz implementation {ns_impl!r}: expected triton or torch")
    nesterov = torch.compile(muon_nesterov, dynamic=False) if compiled else muon_nesterov
    write = torch.compile(muon_write, dynamic=False) if compiled else muon_write

    def update(p, mantissa, buf, smoothed, grad, momentum, smoothing, step_size, decay):
        write(p, mantissa, smoothed, newton_schulz_triton(nesterov(buf, grad, momentum)), smoothing, step_size, decay)

    return update


def copy_to(value, device):
    """A copy of a state (tensors in dicts, lists, tuples) on device, dtypes kept."""
    if isinstance(value, Tensor):
        return value.detach().to(device=device, copy=True)
    if isinstance(value, dict):
        return {k: copy_to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copy_to(v, device) for v in value)
    return value


class MatrixOptimizer(torch.optim.Optimizer):
    """Base of the hidden-matrix optimizers (Muon and the others of --matrix_optimizer): one group per
    shape, sorted largest first, so that every all-gather moves tensors of one shape. Distributed as
    the record's Muon: each group is taken world_size matrices at a time; rank r updates member r,
    then the members are all-gathered so every rank holds every matrix. A subclass implements
    _update(p, group) for the matrices of this rank."""

    def __init__(self, params, defaults: dict, rank: int = 0, world_size: int = 1):
        params = list(params)
        if any(p.ndim < 2 for p in params):
            raise ValueError(f"{type(self).__name__} only takes matrices (or batches of matrices)")
        shapes = sorted({tuple(p.shape) for p in params}, reverse=True)
        super().__init__([dict(params=[p for p in params if tuple(p.shape) == s]) for s in shapes], defaults)
        self.rank = rank
        self.world_size = world_size

    def owns(self, index_in_group: int) -> bool:
        return index_in_group % self.world_size == self.rank

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to the parameter's dtype, which would round fp32 state (momentum,
        # moments, preconditioners) to bf16; load the groups through torch and the state as saved.
        super().load_state_dict({**state_dict, "state": {}})
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            self.state[params[index]] = copy_to(saved, params[index].device)

    def _update(self, p: Tensor, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self):
        gathers = []
        for group in self.param_groups:
            params = group["params"]
            for base in range(0, len(params), self.world_size):
                if base + self.rank < len(params):  # member base + rank: the one this rank owns
                    self._update(params[base + self.rank], group)
                if self.world_size > 1:
                    members = params[base : base + self.world_size]
                    members = members + [torch.empty_like(members[-1])] * (self.world_size - len(members))
                    gathers.append(dist.all_gather(members, members[self.rank], async_op=True))
        for handle in gathers:
            handle.wait()


class Muon(MatrixOptimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Keller Jordan), with update smoothing and master weights."""

    def __init__(
        self, params, lr: float, weight_decay: float, momentum: float, update_smoothing: float, ns_impl: str = "torch",
        rank: int = 0, world_size: int = 1, compiled: bool = False,
    ):  # fmt: skip
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, update_smoothing=update_smoothing)
        super().__init__(params, defaults, rank, world_size)
        self.compiled = compiled
        self.set_ns_impl(ns_impl)

    def set_ns_impl(self, ns_impl: str) -> None:
        self.ns_impl = ns_impl
        self._update_fn = muon_update_fn(ns_impl, self.compiled)

    def _init_state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, dtype=torch.float32)
            if p.dtype == torch.bfloat16:
                state["mantissa"] = torch.zeros_like(p, dtype=torch.uint16)
            if group["update_smoothing"] > 0:
                state["smoothed_update"] = torch.zeros_like(p, dtype=torch.bfloat16)
        return state

    def _update(self, p: Tensor, group: dict) -> None:
        state = self._init_state(p, group)
        lr = group["lr"]
        step_size = lr * max(1.0, p.size(-2) / p.size(-1)) ** 0.5
        decay = lr * group["weight_decay"] * getattr(p, "wd_mul", 1.0)
        self._update_fn(
            p,
            state.get("mantissa"),
            state["momentum_buffer"],
            state.get("smoothed_update"),
            p.grad,
            *map(full_precision, (group["momentum"], group["update_smoothing"], step_size, decay)),
        )


class Snoo:
    """Sparse Nesterov Outer Optimizer (record 12, medium track): every k steps, treat the distance
    travelled since the last outer step as a gradient and take one Nesterov SGD step from there."""

    def __init__(self, params, lr: float, momentum: float, k: int, nesterov: bool = True):
        self.params = list(params)
        self.k = k
        self.counter = 0
        self.copy = [p.detach().clone() for p in self.params]
        fused = all(p.is_cuda for p in self.params) or None
        self.sgd = torch.optim.SGD(self.params, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)

    @torch.no_grad()
    def step(self) -> None:
        if self.counter % self.k == 0:
            for p, c in zip(self.params, self.copy):
                p.grad = c - p
                p.copy_(c)
            self.sgd.step()
            for p, c in zip(self.params, self.copy):
                c.copy_(p)
                p.grad = None
        self.counter += 1

    def state_dict(self) -> dict:
        # a copy: torch's state_dict holds the live momentum buffers, which the next outer step changes
        return dict(counter=self.counter, copy=[c.clone() for c in self.copy], sgd=copy.deepcopy(self.sgd.state_dict()))

    def load_state_dict(self, state: dict) -> None:
        self.counter = state["counter"]
        for c, saved in zip(self.copy, state["copy"]):
            c.copy_(saved)
        self.sgd.load_state_dict(state["sgd"])


def lr_multiplier(step: int, args: Hyperparameters) -> float:
    """1 for the first (1 - cooldown_frac) of training, then linear down to final_lr_frac (the record's expression)."""
    x = step / args.num_iterations
    if x < 1 - args.cooldown_frac:
        return 1.0
    return (1 - x) / args.cooldown_frac * (1 - args.final_lr_frac) + args.final_lr_frac


def momentum_warmup(step: int, args: Hyperparameters) -> float:
    """Muon's momentum at a step: linear from muon_momentum_start to muon_momentum over the warmup steps."""
    frac = min(step / args.muon_momentum_warmup_steps, 1) if args.muon_momentum_warmup_steps else 1
    return (1 - frac) * args.muon_momentum_start + frac * args.muon_momentum


def window_blocks(step: int, args: Hyperparameters) -> int:
    """Attention window in 128-token blocks: grows with f(x) = 4x^3 - 6x^2 + 3x, at least one block."""
    x = step / args.num_iterations
    f = 4 * x**3 - 6 * x**2 + 3 * x
    tokens = max(math.ceil(args.max_window_tokens * f / ATTN_BLOCK_SIZE) * ATTN_BLOCK_SIZE, ATTN_BLOCK_SIZE)
    return tokens // ATTN_BLOCK_SIZE


def build_optimizers(model: "GPT", args: Hyperparameters, rank: int = 0, world_size: int = 1):
    """AdamW (embeddings, lm head, scalars), the hidden matrices' optimizer (Muon: the record) and Snoo
    around both (None with --snoo_k=0)."""
    kinds = model.parameter_kinds()
    matrices = [p for p in model.blocks.parameters() if p.ndim >= 2]
    on_cuda = model.lm_head_w.is_cuda
    groups = [
        dict(params=kinds["head"], lr=args.adam_head_lr),
        dict(params=kinds["embed"], lr=args.adam_embed_lr),
        dict(params=kinds["scalars"], lr=args.adam_scalar_lr),
    ]
    settings = dict(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps, weight_decay=args.adam_weight_decay)
    if "adam_variants" in extensions_needed(args):
        variants = extension("adam_variants", EXTENSIONS["adam_variants"])
        adam = variants.AdamVariant(groups, lr=args.adam_head_lr, **settings, **variants.variant(args))
    else:  # the record
        adam = torch.optim.AdamW(groups, **settings, fused=on_cuda or None)
    if args.matrix_optimizer == "muon":
        hidden = Muon(
            matrices, lr=args.muon_lr, weight_decay=args.muon_weight_decay, momentum=args.muon_momentum,
            update_smoothing=args.update_smoothing, ns_impl=resolve_ns_impl(args.ns_impl, on_cuda), rank=rank,
            world_size=world_size, compiled=args.compile,
        )  # fmt: skip
    else:
        hidden = extension("matrix_optimizers", "--matrix_optimizer").build(matrices, args, rank, world_size, on_cuda)
    for opt in (adam, hidden):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
            if "eps" in group and not isinstance(opt, Muon):  # every Adam: the eps schedule's start
                group["initial_eps"] = group["eps"]
    snoo = Snoo(model.parameters(), args.snoo_lr, args.snoo_momentum, args.snoo_k) if args.snoo_k else None
    return adam, hidden, snoo


def set_schedules(step: int, args: Hyperparameters, optimizers) -> None:
    mult = lr_multiplier(step, args)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * mult
            if isinstance(opt, Muon):
                group["momentum"] = momentum_warmup(step, args)
    if args.adam_eps_max is not None:
        extension("adam_variants", EXTENSIONS["adam_variants"]).set_eps(step, args, optimizers)


def matrix_optimizer_info(args: Hyperparameters) -> dict:
    """The hidden matrices' optimizer with every resolved setting, for the log and the JSON."""
    if args.matrix_optimizer != "muon":
        return extension("matrix_optimizers", "--matrix_optimizer").info(args)
    settings = dict(
        lr=args.muon_lr, weight_decay=args.muon_weight_decay, mlp_wd_mul=args.mlp_wd_mul,
        momentum=(args.muon_momentum_start, args.muon_momentum), update_smoothing=args.update_smoothing,
    )  # fmt: skip
    return dict(name="muon", settings=settings, library=None)


def matrix_optimizer_line(info: dict) -> str:
    settings = ", ".join(f"{k}={format_value(v)}" for k, v in info["settings"].items())
    return f"matrix optimizer: {info['name']} ({settings}{'; ' + info['library'] if info['library'] else ''})"


# -----------------------------------------------------------------------------------------------------
# model

EOT_TOKEN = 50256  # <|endoftext|>: starts every document
ATTN_BLOCK_SIZE = 128  # FlexAttention's block; windows and documents are handled per 128-token block
VOCAB_MULTIPLE = 128  # the lm head's rows are rounded up to this for fast matmuls
ATTN_SCALE = 0.12  # replaces 1/sqrt(head_dim) (@leloykun)
INIT_GAIN = 0.5  # block matrices: uniform with std INIT_GAIN / sqrt(fan_in)
LOGIT_SOFTCAP = 15.0
ROPE_MIN_FREQ = 1 / 1024  # half-truncated RoPE frequencies span 1 .. 1/1024 (@YouJiacheng)
EVAL_LOGIT_CHUNKS = 4  # eval computes the lm head in chunks to bound the logits' memory

# The layer structure of the 16-layer record.
RECORD_NUM_LAYERS = 16
NUM_VALUE_EMBEDS = 5  # blocks 0-4 and 11-15 use value embeddings 0-4 (@YouJiacheng, 012...234)
NO_ATTENTION_BLOCK = 7
LONG_WINDOW_BLOCKS = (0, 4, 11, 15)  # all other blocks use half the window
UNET_SKIPS = {9: 6, 10: 4, 11: 2}  # before block i add skip_weight[j] * output of block j
LAMBDAS_PER_BLOCK = 3  # x = l0 * x + l1 * x00 + l2 * x01
ATTN_LAMBDAS_PER_BLOCK = 2  # v = s0 * v + s1 * ve


def norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def next_multiple_of(v: int, n: int) -> int:
    return -(-v // n) * n


class Rotary(nn.Module):
    """Half-truncated RoPE (@YouJiacheng): head_dim/4 frequencies from 1 to 1/1024, then head_dim/4 zeros."""

    def __init__(self, head_dim: int, max_seq_len: int):
        super().__init__()
        freq = ROPE_MIN_FREQ ** torch.linspace(0, 1, steps=head_dim // 4, dtype=torch.float32)
        freq = torch.cat([freq, freq.new_zeros(head_dim // 4)])
        theta = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freq)
        self.cos = nn.Buffer(theta.cos(), persistent=False)
        self.sin = nn.Buffer(theta.sin(), persistent=False)

    def forward(self, x_BTHD: Tensor) -> Tensor:
        T = x_BTHD.size(-3)
        cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]
        x1, x2 = x_BTHD.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), -1).type_as(x_BTHD)


def ordered_blocks(dense: Tensor) -> tuple[Tensor, Tensor]:
    """Count of True per row, and their column indices most recent (largest) first."""
    count = dense.sum(dim=-1, dtype=torch.int32)
    indices = dense.argsort(dim=-1, descending=False, stable=True).flip(-1).to(torch.int32)
    return count[None, None].contiguous(), indices[None, None].contiguous()


def document_block_masks(ids: Tensor, windows: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Document-causal sliding-window block selections, one per window (in blocks), as the four tensors
    of BlockMask.from_kv_blocks: (partial count, partial indices, full count, full indices).

    A key block is a candidate for a query block if it is not later and their document ranges overlap;
    it is full if strictly earlier and both lie inside one document. A window of W blocks keeps at most
    W - 1 full blocks and max(W - all full candidates, 1) partial blocks, most recent first."""
    docs = (ids == EOT_TOKEN).cumsum(0)
    docs_low = docs[0::ATTN_BLOCK_SIZE]
    docs_high = docs[ATTN_BLOCK_SIZE - 1 :: ATTN_BLOCK_SIZE]
    blocks = torch.arange(docs_low.numel(), device=ids.device)
    q, kv = blocks[:, None], blocks[None, :]
    # Document ranges overlap when low(q) <= high(kv) and low(kv) <= high(q); for q >= kv the second
    # always holds (document ids never decrease), so it is left out (record 17, medium track).
    one_doc = (docs_low[:, None] == docs_high[None, :]) & (docs_low[None, :] == docs_high[:, None])
    candidate = (q >= kv) & (docs_low[:, None] <= docs_high[None, :])
    full = (q > kv) & one_doc
    partial_count, partial_idx = ordered_blocks(candidate & ~full)
    full_count, full_idx = ordered_blocks(full)
    selections = []
    for w in windows:
        w = torch.as_tensor(w, dtype=torch.int32, device=ids.device)
        selections.append(
            (
                torch.clamp_max(partial_count, torch.clamp_min(w - full_count, 1)),
                partial_idx,
                torch.clamp_max(full_count, torch.clamp_min(w - 1, 0)),
                full_idx,
            )
        )
    return selections


def value_embed_index(block: int, num_layers: int) -> int | None:
    """Which value embedding block i uses: 0..4 in the first five and the last five blocks, else none."""
    if block < NUM_VALUE_EMBEDS:
        return block
    if block >= num_layers - NUM_VALUE_EMBEDS:
        return block - (num_layers - NUM_VALUE_EMBEDS)
    return None


def document_causal_mod(docs: Tensor):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (docs[q_idx] == docs[kv_idx])

    return mask_mod


def dense_attention_mask(ids: Tensor, selection: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """The token-level (T, T) boolean mask that FlexAttention applies for a block selection."""
    partial_count, partial_idx, full_count, full_idx = (t[0, 0] for t in selection)
    n = partial_idx.size(0)
    rank = torch.arange(n, device=ids.device)

    def chosen(count: Tensor, idx: Tensor) -> Tensor:
        keep = rank[None, :] < count[:, None]
        out = torch.zeros(n, n, dtype=torch.bool, device=ids.device)
        return out.scatter_(1, idx.long(), keep)

    def to_tokens(block_mask: Tensor) -> Tensor:
        return block_mask.repeat_interleave(ATTN_BLOCK_SIZE, 0).repeat_interleave(ATTN_BLOCK_SIZE, 1)

    docs = (ids == EOT_TOKEN).cumsum(0)
    pos = torch.arange(ids.numel(), device=ids.device)
    doc_causal = (pos[:, None] >= pos[None, :]) & (docs[:, None] == docs[None, :])
    return to_tokens(chosen(full_count, full_idx)) | (to_tokens(chosen(partial_count, partial_idx)) & doc_causal)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        # Q, K, V and output projections in one (4, hdim, dim) tensor: orthogonalized as a batch of 4.
        self.qkvo_w = nn.Parameter(torch.empty(4, num_heads * head_dim, dim))

    def forward(self, x: Tensor, ve: Tensor | None, lambdas: Tensor, rotary: Rotary, mask) -> Tensor:
        B, T = x.size(0), x.size(1)
        qkv = F.linear(x, self.qkvo_w[:3].flatten(end_dim=1)).view(B, T, 3 * self.num_heads, self.head_dim)
        q, k, v = qkv.chunk(3, dim=-2)
        q, k = rotary(norm(q)), rotary(norm(k))  # QK norm (@Grad62304977)
        v = norm(v)
        v = lambdas[0] * v + lambdas[1] * ve.view_as(v) if ve is not None else lambdas[0] * v
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if isinstance(mask, BlockMask):
            y = flex_attention(q, k, v, block_mask=mask, scale=ATTN_SCALE)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=ATTN_SCALE)
        y = y.transpose(1, 2).contiguous().view(B, T, self.num_heads * self.head_dim)
        return F.linear(y, self.qkvo_w[3])


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc_w = nn.Parameter(torch.empty(hidden, dim))
        self.proj_w = nn.Parameter(torch.empty(dim, hidden))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.relu(F.linear(x, self.fc_w)).square(), self.proj_w)  # relu^2 (@Grad62304977)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, has_attn: bool):
        super().__init__()
        self.attn = CausalSelfAttention(dim, num_heads, head_dim) if has_attn else None
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x, ve, x00, x01, lambdas, attn_lambdas, rotary, mask):
        x = lambdas[0] * x + lambdas[1] * x00 + lambdas[2] * x01
        if self.attn is not None:
            x = x + self.attn(x, ve, attn_lambdas, rotary, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """The record's 16-layer model. attention="flex" uses FlexAttention (CUDA); "dense" computes the same
    mask densely with scaled_dot_product_attention (CPU, where FlexAttention has no backward)."""

    def __init__(
        self, vocab_size: int, num_layers: int, num_heads: int, head_dim: int, model_dim: int, mlp_ratio: int,
        max_seq_len: int, attention: str = "flex",
    ):  # fmt: skip
        super().__init__()
        self.attention = attention
        self.embed1 = nn.Embedding(vocab_size, model_dim)
        self.embed2 = nn.Embedding(vocab_size, model_dim)
        self.value_embeds = nn.ModuleList(nn.Embedding(vocab_size, model_dim) for _ in range(NUM_VALUE_EMBEDS))
        self.blocks = nn.ModuleList(
            Block(model_dim, num_heads, head_dim, mlp_ratio * model_dim, has_attn=(i != NO_ATTENTION_BLOCK))
            for i in range(num_layers)
        )
        self.max_seq_len = max_seq_len
        self.rotary = Rotary(head_dim, max_seq_len)
        self.lm_head_w = nn.Parameter(torch.zeros(next_multiple_of(vocab_size, VOCAB_MULTIPLE), model_dim))
        L = num_layers
        self.scalars = nn.Parameter(
            torch.cat(
                [
                    torch.ones(L),  # U-net skip weights
                    torch.tensor([1.0, 0.0, 0.0]).repeat(L),  # block lambdas
                    torch.tensor([0.5, 0.5]).repeat(L),  # attention lambdas
                ]
            )
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for block in self.blocks:
            for w in ([block.attn.qkvo_w] if block.attn else []) + [block.mlp.fc_w]:
                bound = math.sqrt(3) * INIT_GAIN / math.sqrt(w.size(-1))  # a uniform's std is bound / sqrt(3)
                w.uniform_(-bound, bound)
            if block.attn is not None:
                block.attn.qkvo_w[3].zero_()
            block.mlp.proj_w.zero_()
        for emb in [self.embed1, self.embed2, *self.value_embeds]:
            emb.weight.normal_()
        self.lm_head_w.zero_()
        for m in [self.embed1, self.embed2, *self.value_embeds, self.blocks]:
            m.bfloat16()

    def parameter_kinds(self) -> dict[str, list[Tensor]]:
        """The parameters by kind: what each optimizer takes, and the groups of the weight-drift log."""
        blocks = list(self.blocks)
        return dict(
            embed=[self.embed1.weight, self.embed2.weight, *(e.weight for e in self.value_embeds)],
            head=[self.lm_head_w],
            attention=[b.attn.qkvo_w for b in blocks if b.attn is not None],
            mlp=[w for b in blocks for w in (b.mlp.fc_w, b.mlp.proj_w)],
            scalars=[self.scalars],
        )

    def set_mlp_wd_mul(self, mul: float) -> None:
        """Muon multiplies its weight decay by a parameter's wd_mul."""
        for block in self.blocks:
            block.mlp.fc_w.wd_mul = block.mlp.proj_w.wd_mul = mul

    def attention_masks(self, ids: Tensor, window: Tensor) -> tuple:
        """(long-window mask, short-window mask) in the form the attention path takes."""
        selections = document_block_masks(ids, [window, window // 2])
        if self.attention == "dense":
            return tuple(dense_attention_mask(ids, s) for s in selections)
        mask_mod = document_causal_mod((ids == EOT_TOKEN).cumsum(0))
        return tuple(BlockMask.from_kv_blocks(*s, BLOCK_SIZE=ATTN_BLOCK_SIZE, mask_mod=mask_mod) for s in selections)

    def trunk(self, input_seq: Tensor, window: Tensor) -> Tensor:
        """The normed final hidden states, (T, model_dim), of one sequence of T token ids."""
        L = len(self.blocks)
        ve = [emb(input_seq)[None] for emb in self.value_embeds]
        long_mask, short_mask = self.attention_masks(input_seq, window)
        x = x00 = norm(self.embed1(input_seq)[None])
        x01 = norm(self.embed2(input_seq)[None])
        skip_weights = self.scalars[:L]
        lambdas = self.scalars[L : (1 + LAMBDAS_PER_BLOCK) * L].view(L, LAMBDAS_PER_BLOCK)
        attn_lambdas = self.scalars[(1 + LAMBDAS_PER_BLOCK) * L :].view(L, ATTN_LAMBDAS_PER_BLOCK)
        outputs = []
        for i, block in enumerate(self.blocks):
            if i in UNET_SKIPS:
                x = x + skip_weights[UNET_SKIPS[i]] * outputs[UNET_SKIPS[i]]
            mask = long_mask if i in LONG_WINDOW_BLOCKS else short_mask
            j = value_embed_index(i, L)
            x = block(x, None if j is None else ve[j], x00, x01, lambdas[i], attn_lambdas[i], self.rotary, mask)
            outputs.append(x)
        return norm(x).flatten(end_dim=1)

    def head(self, x: Tensor) -> Tensor:
        """Softcapped fp32 logits over the padded vocabulary."""
        logits = F.linear(x, self.lm_head_w.bfloat16()).float()
        return LOGIT_SOFTCAP * logits * torch.rsqrt(logits.square() + LOGIT_SOFTCAP**2)

    def forward(self, input_seq: Tensor, target_seq: Tensor, window: Tensor) -> Tensor:
        x = self.trunk(input_seq, window)
        chunks = 1 if self.training else EVAL_LOGIT_CHUNKS
        loss = 0
        for x_c, t_c in zip(x.chunk(chunks), target_seq.chunk(chunks)):
            loss = loss + F.cross_entropy(self.head(x_c), t_c) / chunks
        return loss


def build_model(args: Hyperparameters, attention: str) -> GPT:
    model = GPT(
        args.vocab_size, args.num_layers, args.num_heads, args.head_dim, args.model_dim, args.mlp_ratio,
        max(args.train_seq_len, args.val_seq_len), attention,
    )  # fmt: skip
    model.set_mlp_wd_mul(args.mlp_wd_mul)
    return model


# -----------------------------------------------------------------------------------------------------
# data

# Token shards: 256 little-endian int32 of header, then `count` uint16 tokens.
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * 4
FINEWEB_SHARD_TOKENS = 100_000_000  # every train shard of kjj0/fineweb10B-gpt2


def read_shard_header(path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(SHARD_HEADER_BYTES)
    except OSError as e:
        raise UserError(f"cannot read shard {path}: {e.strerror}.") from None
    if len(header) < SHARD_HEADER_BYTES:
        raise UserError(
            f"{path} is not a token shard: it has {size} bytes, fewer than the "
            f"{SHARD_HEADER_BYTES}-byte header. Re-create or re-download it."
        )
    magic, version, count = (int.from_bytes(header[4 * i : 4 * i + 4], "little", signed=True) for i in range(3))
    if magic != SHARD_MAGIC:
        raise UserError(
            f"{path} is not a token shard: header magic is {magic}, expected {SHARD_MAGIC}. "
            f"Re-create or re-download it."
        )
    if version != SHARD_VERSION:
        raise UserError(f"{path}: shard version {version}, expected {SHARD_VERSION}.")
    expected = SHARD_HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise UserError(
            f"{path}: header says {count} tokens ({expected} bytes) but the file has {size} bytes; "
            f"it is truncated or corrupt. Delete it and download or create it again."
        )
    return count


def load_shard(path, pin_memory: bool = False) -> Tensor:
    count = read_shard_header(path)
    tokens = torch.empty(count, dtype=torch.uint16, pin_memory=pin_memory)
    with open(path, "rb", buffering=0) as f:
        f.seek(SHARD_HEADER_BYTES)
        nread = f.readinto(tokens.numpy())
    if nread != 2 * count:
        raise UserError(f"{path}: read {nread} bytes of tokens, expected {2 * count}; the file changed while reading.")
    return tokens


def steps_in_shard(num_tokens: int, step_tokens: int) -> int:
    """Steps one shard supplies: a step starting at pos needs pos + step_tokens + 1 < num_tokens."""
    return max(0, (num_tokens - step_tokens - 2) // step_tokens + 1)


def shard_files(pattern: str, option: str, hint: str) -> list[Path]:
    files = sorted(Path(f) for f in glob.glob(pattern))
    if files:
        return files
    folder, name = Path(pattern).parent, Path(pattern).name
    if folder.is_dir():
        near = difflib.get_close_matches(
            name.replace("*", ""), sorted(p.name for p in folder.iterdir()), n=3, cutoff=0.5
        )
        seen = f"files there that nearly match: {', '.join(near)}" if near else f"nothing like it is in {folder}"
    else:
        near = difflib.get_close_matches(folder.name, [p.name for p in folder.parent.glob("*") if p.is_dir()], n=1)
        seen = f"the folder {folder} does not exist" + (f" (did you mean {folder.parent / near[0]}?)" if near else "")
    raise UserError(f"no files match --{option}={pattern} (from {Path.cwd()}): {seen}. {hint}")


def data_hint(pattern: str, shards: int | str) -> str:
    """How to get the files of a glob that matches nothing."""
    if "fineweb10B" in pattern:
        return (
            f"Download them with `python data/cached_fineweb10B.py {shards}` ({FINEWEB_SHARD_TOKENS:,} tokens a shard)."
        )
    if "data/sample" in pattern:
        return "Build the offline sample dataset with `python data/sample.py`."
    return "Make shards with `python data/fineweb.py` or point the option at other files."


def check_data(args: Hyperparameters) -> None:
    """Fail before anything heavy if the shards are missing, corrupt or too short for the run."""
    step_tokens = args.seqs_per_step * args.train_seq_len
    per_fineweb = steps_in_shard(FINEWEB_SHARD_TOKENS, step_tokens)
    need_shards = math.ceil(args.num_iterations / per_fineweb) if per_fineweb else "more"
    files = shard_files(args.train_files, "train_files", data_hint(args.train_files, need_shards))
    available = 0
    for f in files:
        available += steps_in_shard(read_shard_header(f), step_tokens)
        if available >= args.num_iterations:
            break
    if available < args.num_iterations:
        more = (
            f"Download more with `python data/cached_fineweb10B.py {need_shards}`."
            if "fineweb10B" in args.train_files
            else "Use --num_iterations of at most that, or more data (python data/fineweb.py tokenizes your own text)."
        )
        raise UserError(
            f"--train_files={args.train_files} has {len(files)} shard(s) with tokens for {available} steps, but "
            f"--num_iterations={args.num_iterations} needs {args.num_iterations} x {step_tokens:,} = "
            f"{args.num_iterations * step_tokens:,} tokens (each shard's tail shorter than a step is dropped). {more}"
        )
    val_step = args.seqs_per_step * args.val_seq_len
    val_steps = args.val_tokens // val_step
    files = shard_files(args.val_files, "val_files", data_hint(args.val_files, need_shards))
    available = sum(steps_in_shard(read_shard_header(f), val_step) for f in files)
    if available < val_steps:
        raise UserError(
            f"--val_files={args.val_files} has tokens for {available} validation step(s) of {val_step:,} tokens, "
            f"but --val_tokens={args.val_tokens:,} needs {val_steps}. Use fewer --val_tokens or more val data."
        )


def token_batches(
    files: list[Path], seq_len: int, seqs_per_step: int, rank: int, world_size: int, device: torch.device,
    start: tuple[int, int] = (0, 0),
):  # fmt: skip
    """Yield, per step, this rank's micro-batches [(inputs int32, targets int64), ...], from start
    (shard index, position; see stream_position).

    A step reads the next seqs_per_step * seq_len + 1 tokens; sequence i starts at pos + i * seq_len.
    Rank r takes sequences r * m .. r * m + m - 1 (m = seqs_per_step / world_size), so any world size
    sees the same tokens in the same order. Shards are read in order, once; a tail too short for a
    step is dropped."""
    step_tokens = seqs_per_step * seq_len
    per_rank = seqs_per_step // world_size
    pin = device.type == "cuda"
    shard, pos = start
    shards = iter(files[shard:])
    tokens = load_shard(next(shards), pin)
    while True:
        while pos + step_tokens + 1 >= len(tokens):
            tokens, pos = load_shard(next(shards), pin), 0
        batch = []
        for j in range(per_rank):
            begin = pos + (rank * per_rank + j) * seq_len
            buf = tokens[begin : begin + seq_len + 1]
            batch.append(
                (
                    buf[:-1].to(device=device, dtype=torch.int32, non_blocking=True),
                    buf[1:].to(device=device, dtype=torch.int64, non_blocking=True),
                )
            )
        pos += step_tokens
        yield batch


# -----------------------------------------------------------------------------------------------------
# logging

LOG_RULE = "=" * 100  # separates the log's source from its environment (the speedrun's layout)
MIB, GIB = 2**20, 2**30


def read_sources() -> dict[str, str]:
    """This script's source, then every module of speedrun/ imported so far (by the options, at startup),
    keyed by their paths relative to the repository: read once, before anything runs, so that a file edited
    during the run is not logged as the code that ran."""
    root = Path(__file__).resolve().parent
    sources = {Path(__file__).name: Path(__file__).read_text(encoding="utf-8")}
    for name, module in list(sys.modules.items()):
        if name.startswith("speedrun.") and getattr(module, "__file__", None):
            path = Path(module.__file__).resolve()
            name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
            sources[name] = path.read_text(encoding="utf-8")
    return sources


def embedded_code(sources: dict[str, str]) -> str:
    """The log's code part: this script, then each module under a `# ==== file: <path> ====` line."""
    (_, script), *modules = sources.items()
    return script + "".join(f"# ==== file: {path} ====\n{text}" for path, text in modules)


def format_val_line(step: int, num_iterations: int, val_loss: float, train_time_ms: float) -> str:
    return (
        f"step:{step}/{num_iterations} val_loss:{val_loss:.6f} train_time:{train_time_ms:.0f}ms "
        f"step_avg:{train_time_ms / max(step, 1):.2f}ms"
    )


def format_train_line(step: int, num_iterations: int, train_time_ms: float) -> str:
    """step counts completed steps."""
    return f"step:{step}/{num_iterations} train_time:{train_time_ms:.0f}ms step_avg:{train_time_ms / step:.2f}ms"


class RunLog:
    """<folder>/<run id>.txt (the speedrun's log) and <run id>.json (a summary for tools), both written as the
    run goes: lines are flushed as written, the JSON replaced atomically. Neither is ever overwritten: a clash
    of run ids is an error. enabled: rank 0 writes, the other ranks keep a summary they never write."""

    def __init__(self, folder, run_id: str, enabled: bool = True, console: bool = True, resumed: dict | None = None):
        """resumed: the summary of a run that continues; its log is appended to (or started anew in
        another folder) and its summary updated."""
        self.enabled, self.console = enabled, console
        self.summary = dict(
            format="speedrun-run/1", run_id=run_id, record=Path(folder).name, status="running",
            log_file=f"{run_id}.txt", hyperparameters={}, environment={}, num_iterations=None, val_losses=[],
            final_val_loss=None, train_time_ms=None, step_avg_ms=None, steps_done=0, peak_memory_allocated_mib=None,
            peak_memory_reserved_mib=None,
        )  # fmt: skip
        if resumed is not None:
            self.summary = {**resumed, "status": "running", "record": Path(folder).name}
        if not enabled:
            return
        folder = Path(folder)
        self.txt_path, self.json_path = folder / f"{run_id}.txt", folder / f"{run_id}.json"
        self.appending = resumed is not None and self.txt_path.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.txt = open(self.txt_path, "a" if self.appending else "x", encoding="utf-8")
            if resumed is None:
                open(self.json_path, "x").close()
        except FileExistsError as e:
            raise UserError(
                f"{e.filename} already exists; run logs are never overwritten. Choose another --record or run id."
            ) from None
        except OSError as e:
            raise UserError(
                f"cannot write the run log in {folder}: {e.strerror}. Choose a writable --records_dir."
            ) from None
        self.save()

    def write(self, line: str, console: bool = False, console_note: str = "") -> None:
        """Append a line to the log (flushed); with console, print it too, followed by console_note."""
        if not self.enabled:
            return
        self.txt.write(line + "\n")
        self.txt.flush()
        if console and self.console:
            print(line + console_note, flush=True)

    def set_header(self, code: str, environment: dict, hyperparameters: dict) -> None:
        self.summary.update(
            environment=environment,
            hyperparameters=hyperparameters,
            num_iterations=hyperparameters.get("num_iterations"),
        )
        # The speedrun's layout first (source, versions, nvidia-smi between two rules), then the rest.
        self.write(code)
        self.write(LOG_RULE)
        self.write(f"Running Python {environment.get('python')}")
        if environment.get("cuda"):
            self.write(f"Running PyTorch {environment.get('torch')} compiled for CUDA {environment['cuda']}")
        else:
            self.write(f"Running PyTorch {environment.get('torch')}, a CPU build (no CUDA)")
        if environment.get("nvidia-smi"):
            self.write(environment["nvidia-smi"])
        self.write(LOG_RULE)
        for key, value in environment.items():
            if key not in ("python", "torch", "cuda", "nvidia-smi"):
                self.write(f"{key}: {value}")
        self.write("hyperparameters:")
        for key, value in hyperparameters.items():
            self.write(f"  {key} = {value!r}")
        self.save()

    def log_val(self, step: int, num_iterations: int, val_loss: float, train_time_ms: float) -> None:
        self.write(format_val_line(step, num_iterations, val_loss, train_time_ms), console=True)
        self.summary["val_losses"].append(dict(step=step, val_loss=val_loss, train_time_ms=train_time_ms))
        self.summary["steps_done"] = step
        if step == num_iterations:
            self.summary.update(
                final_val_loss=val_loss, train_time_ms=train_time_ms, step_avg_ms=train_time_ms / max(step, 1)
            )
        self.save()

    def log_train(self, step: int, num_iterations: int, train_time_ms: float) -> None:
        # The console also shows the training time left at this pace; the log keeps the speedrun's line.
        left_s = round(train_time_ms / step * (num_iterations - step) / 1000)
        note = f"  ({left_s // 60}m{left_s % 60:02d}s of training left)"
        self.write(format_train_line(step, num_iterations, train_time_ms), console=True, console_note=note)
        self.summary["steps_done"] = step

    def log_memory(self, allocated_mib: int, reserved_mib: int) -> None:
        self.write(f"peak memory allocated: {allocated_mib} MiB reserved: {reserved_mib} MiB", console=True)
        self.summary.update(peak_memory_allocated_mib=allocated_mib, peak_memory_reserved_mib=reserved_mib)
        self.save()

    def set_status(self, status: str) -> None:
        self.summary["status"] = status
        self.save()

    def finish(self, status: str) -> None:
        self.set_status(status)
        if self.enabled:
            self.txt.close()

    def save(self) -> None:
        if not self.enabled:
            return
        tmp = self.json_path.with_name(f".{self.json_path.name}.tmp")
        tmp.write_text(json.dumps(self.summary, indent=1) + "\n")
        os.replace(tmp, self.json_path)  # the summary is always whole: a crash leaves the previous one


def environment_info(device: torch.device, world_size: int) -> dict:
    def output(cmd: list[str]) -> str | None:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=Path(__file__).resolve().parent)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), host=platform.node(),
        python=sys.version, torch=torch.__version__, cuda=torch.version.cuda, device=str(device),
        world_size=world_size, torch_threads=torch.get_num_threads(), command=" ".join([sys.executable] + sys.argv),
        triton=triton and triton.__version__,
    )  # fmt: skip
    if device.type == "cuda":
        info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    commit = output(["git", "rev-parse", "HEAD"])
    if commit:
        dirty = output(["git", "status", "--porcelain", "--untracked-files=no"])
        info["git_commit"] = commit + (" (uncommitted changes)" if dirty else "")
    # Variables that change what runs; the log must describe the run completely.
    prefixes = ("TORCH", "NCCL", "CUDA", "TRITON", "PYTORCH", "OMP")
    info["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)} or None
    if device.type == "cuda":
        info["nvidia-smi"] = output(["nvidia-smi"])
    return info


EXIT_USER_ERROR = 2  # a mistake in the options, the data or the environment, found before any file is written
EXIT_DIVERGED = 3  # a run stopped by a non-finite loss (130 and 143: a signal, see Stopper)


class Diverged(Exception):
    """A non-finite loss: the run stops at once instead of burning the node's remaining minutes."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM. A BaseException like KeyboardInterrupt, so that no `except Exception` takes it.
    after_step: set when every rank stopped after that whole step (a checkpoint can be saved there)."""

    def __init__(self, signum: int, after_step: int | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.after_step = signum, after_step


class Stopper:
    """Ctrl-C (SIGINT) and SIGTERM (a timeout, a preempted node, torchrun passing on a Ctrl-C) end the
    run cleanly on every rank. In the training loop a signal only raises a flag: every rank reads it
    through the step's loss all-reduce, so all stop after the same step. Elsewhere (startup,
    compilation, warmup) it stops at once. A second Ctrl-C always stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.deferred = False

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not self.deferred or (not first and signum == signal.SIGINT):
            raise Interrupted(self.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @staticmethod
    def exit_code(signum: int) -> int:
        return 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def barrier(self) -> None:
        """Every rank's work so far is done: the clock starts and stops here."""
        self.synchronize()
        if self.world_size > 1:
            dist.barrier()

    def all_ranks_ok(self, ok: bool) -> bool:
        if self.world_size == 1:
            return ok
        flag = torch.tensor(int(ok), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def gather_messages(self, message: str | None) -> list[str | None]:
        """Every rank's message (None: nothing to say), on every rank."""
        if self.world_size == 1:
            return [message]
        messages = [None] * self.world_size
        dist.all_gather_object(messages, message)
        return messages

    def to_host(self, t: Tensor) -> tuple[Tensor, "torch.cuda.Event | None"]:
        """A host copy of t that is ready once the returned event is (None: ready now)."""
        if self.device.type != "cuda":
            return t, None
        host = torch.empty_like(t, device="cpu", pin_memory=True)
        host.copy_(t, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready


def resolve_runtime(args: Hyperparameters) -> Runtime:
    """Rank and world from torchrun's variables (rank 0 of 1 without them), and the device."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size < 1 or args.seqs_per_step % world_size:
        counts = [n for n in range(1, args.seqs_per_step + 1) if args.seqs_per_step % n == 0]
        raise UserError(
            f"{world_size} processes (WORLD_SIZE) do not divide --seqs_per_step={args.seqs_per_step}: every rank "
            f"must run the same number of sequences per step. Start {', '.join(map(str, counts))} processes "
            f"(torchrun --nproc_per_node=N), or change --seqs_per_step."
        )
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UserError(
            "--device=cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False). "
            "Check the driver and CUDA_VISIBLE_DEVICES, or that torch is a CUDA build."
        )
    if args.device == "auto" and not cuda and args.preset != "tiny":
        raise UserError(
            "no CUDA GPU is visible, and the record configuration is not run on CPU by accident (a broken "
            "driver must not silently become a CPU run). Fix CUDA, use --preset=tiny, or pass --device=cpu "
            "to really run this configuration on CPU."
        )
    if args.device == "cpu" or not cuda:
        return Runtime(rank, world_size, torch.device("cpu"))
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible.")
    return Runtime(rank, world_size, torch.device("cuda", local_rank))


def snapshot(model: nn.Module, optimizers: list, snoo: Snoo | None) -> dict:
    return dict(
        model=copy.deepcopy(model.state_dict()),
        optimizers=[copy.deepcopy(opt.state_dict()) for opt in optimizers],
        snoo=snoo.state_dict() if snoo else None,
    )


def restore(saved: dict, model: nn.Module, optimizers: list, snoo: Snoo | None) -> None:
    model.load_state_dict(saved["model"])
    for opt, state in zip(optimizers, saved["optimizers"]):
        opt.load_state_dict(state)
    if snoo:
        snoo.load_state_dict(saved["snoo"])


def all_reduce_avg(t: Tensor, rt: Runtime, async_op: bool = False):
    if rt.world_size > 1:
        return dist.all_reduce(t, op=dist.ReduceOp.AVG, async_op=async_op)
    return None


def train_step(
    model, batch, window: Tensor, rt: Runtime, optimizers: list, snoo: Snoo | None, stop: bool = False
) -> Tensor:
    """Forward/backward over this rank's micro-batches, average gradients over ranks, step everything.
    Returns (training loss, stop flag) averaged over ranks, as a tensor that is not synchronized: a
    flag above 0 means some rank was asked to stop."""
    loss = 0
    for inputs, targets in batch:
        micro = model(inputs, targets, window) / len(batch)
        micro.backward()
        loss = loss + micro.detach()
    # all-reduce per parameter as soon as backward ends; each optimizer waits only for its own
    handles = {
        opt: [all_reduce_avg(p.grad, rt, async_op=True) for g in opt.param_groups for p in g["params"]]
        for opt in optimizers
    }
    reported = torch.stack([loss, torch.full_like(loss, float(stop))])
    report_handle = all_reduce_avg(reported, rt, async_op=True)
    for opt in optimizers:
        for h in handles[opt]:
            if h is not None:
                h.wait()
        opt.step()
    if snoo:
        snoo.step()
    model.zero_grad(set_to_none=True)
    if report_handle is not None:
        report_handle.wait()
    return reported


@torch.no_grad()
def evaluate(model, args: Hyperparameters, rt: Runtime, window: Tensor) -> float:
    model.eval()
    val_steps = args.val_tokens // (args.seqs_per_step * args.val_seq_len)
    files = shard_files(args.val_files, "val_files", "")
    batches = token_batches(files, args.val_seq_len, args.seqs_per_step, rt.rank, rt.world_size, rt.device)
    total = torch.zeros((), device=rt.device)
    for _ in range(val_steps):
        for inputs, targets in next(batches):
            total += model(inputs, targets, window).float()
    total /= val_steps * (args.seqs_per_step // rt.world_size)
    all_reduce_avg(total, rt)
    model.train()
    return total.item()


class Clock:
    """Training time. Validation and checkpoints stop it; every rank's work is done (a barrier) each time it
    stops or starts."""

    def __init__(self, rt: Runtime, ms: float = 0.0):
        self.rt, self.ms, self.t0 = rt, ms, None

    def start(self) -> None:
        self.rt.barrier()
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.rt.barrier()
        self.ms += 1000 * (time.perf_counter() - self.t0)

    def elapsed_ms(self) -> float:
        return self.ms + 1000 * (time.perf_counter() - self.t0)


@dataclass
class Run:
    """What the loop carries that a checkpoint saves (speedrun/checkpoints.py)."""

    args: Hyperparameters
    model: nn.Module
    optimizers: list
    snoo: Snoo | None
    sources: dict[str, str]
    clock: Clock
    validated: int | None  # the last step validated
    initial: dict | None  # the weights at step 0, for --log_weight_drift


def warmup_description(compiled_model: bool, compiled_update: bool, ns_impl: str) -> str:
    """What the kernel warmup did on this device, for its log line."""
    done = (["compiled the model"] if compiled_model else []) + (["compiled Muon's update"] if compiled_update else [])
    done += ["autotuned the Triton kernels"] if ns_impl == "triton" else []
    return ", ".join(done) if done else "nothing to compile: every kernel is eager"


def warmup(run: Run, compiled, rt: Runtime, log: "RunLog", muon: "Muon | None") -> None:
    """Compile and autotune on random tokens, then restore the state from before (untimed)."""
    args, start = run.args, time.perf_counter()
    saved = snapshot(run.model, run.optimizers, run.snoo)
    window = torch.tensor(window_blocks(0, args), dtype=torch.int32, device=rt.device)
    for _ in range(args.warmup_steps):
        batch = [
            (torch.randint(0, args.vocab_size, (args.train_seq_len,), device=rt.device, dtype=torch.int32),
             torch.randint(0, args.vocab_size, (args.train_seq_len,), device=rt.device))
            for _ in range(args.seqs_per_step // rt.world_size)
        ]  # fmt: skip
        train_step(compiled, batch, window, rt, run.optimizers, run.snoo)
    restore(saved, run.model, run.optimizers, run.snoo)
    del saved
    rt.synchronize()
    did = warmup_description(compiled is not run.model, bool(muon and muon.compiled), muon and muon.ns_impl)
    log.write(
        f"kernel warmup: {args.warmup_steps} steps in {time.perf_counter() - start:.1f}s ({did}; not on the clock)",
        console=True,
    )


def open_run_log(args: Hyperparameters, rt: Runtime, ckpt: dict | None) -> RunLog:
    """Rank 0 creates the log files (or, resuming, reopens them); every rank learns whether that worked,
    so none waits forever."""
    now = datetime.datetime.now(datetime.timezone.utc)
    run_id = ckpt["run_id"] if ckpt else f"{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"
    error, log = None, None
    try:
        folder = Path(args.records_dir) / args.record
        log = RunLog(folder, run_id, enabled=rt.master, resumed=ckpt["summary"] if ckpt else None)
    except UserError as e:
        error = e
    if not rt.all_ranks_ok(error is None):
        raise error or UserError("rank 0 could not create the run log (its error is above).")
    return log


def log_header(log: RunLog, run: Run, rt: Runtime, ckpt: dict | None, info: dict) -> None:
    """The speedrun's header (the code, the versions), then this run's environment, settings and choices."""
    args = run.args
    log.summary.update(info)
    if rt.master:
        print(f"logging to {log.txt_path}", flush=True)
        if ckpt is None or not log.appending:
            log.set_header(embedded_code(run.sources), environment_info(rt.device, rt.world_size), asdict(args))
    if ckpt:
        saved = ckpt["hyperparameters"]
        changed = {k: v for k, v in asdict(args).items() if k != "resume" and saved.get(k) != v}
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        command = " ".join([sys.executable] + sys.argv)
        part = dict(step=ckpt["step"], checkpoint=str(args.resume), world_size=rt.world_size, date=now)
        log.summary.setdefault("resumed", []).append(dict(**part, command=command, changed=changed))
        what = ", ".join(f"--{k}={format_value(v)}" for k, v in changed.items()) or "no option"
        where = f"at step {ckpt['step']}/{args.num_iterations} (world size {rt.world_size}, {now}; changed: {what})"
        log.write(f"RESUMED from {args.resume} {where}", console=True)
        if rt.master and log.appending:  # the environment of this part of the run
            for key, value in environment_info(rt.device, rt.world_size).items():
                if key not in ("python", "nvidia-smi"):
                    log.write(f"  {key}: {value}")
    log.write(f"parameters: {sum(p.numel() for p in run.model.parameters()):,}", console=True)
    log.write(matrix_optimizer_line(info["matrix_optimizer"]), console=True)
    if info["newton_schulz"]:
        log.write(newton_schulz_line(info["newton_schulz"]), console=True)
    if info.get("adam_variant"):
        log.write(extension("adam_variants", EXTENSIONS["adam_variants"]).describe(args), console=True)


def resume_hint(rt: Runtime, path: Path) -> str:
    """The command that continues an interrupted run from its checkpoint."""
    launcher = f"torchrun --standalone --nproc_per_node={rt.world_size} " if rt.world_size > 1 else "python "
    return f"resume it with: {launcher}train_gpt.py --resume={path}"


def train(args: Hyperparameters, rt: Runtime, stopper: Stopper, sources: dict[str, str]) -> int:
    """One run: the startup checks, the log, the kernel warmup and the timed loop. Returns the exit status."""
    # Everything that can fail on the user's input or this machine happens before any file is created.
    check_data(args)
    ckpts = extension("checkpoints", EXTENSIONS["checkpoints"]) if "checkpoints" in extensions_needed(args) else None
    ckpt = ckpts.read_checkpoint(args.resume) if args.resume else None
    if ckpt:
        ckpts.check_resumable(ckpt, args, sources)
    hellaswag = extension("hellaswag", "--hellaswag") if args.hellaswag else None
    longest = max(args.train_seq_len, args.val_seq_len)
    examples = hellaswag.read_hellaswag(args.hellaswag_file, args.vocab_size, longest) if hellaswag else None
    if args.seed is None:
        args.seed = secrets.randbits(31)
    torch.manual_seed(args.seed)
    on_cuda = rt.device.type == "cuda"
    model = build_model(args, attention="flex" if on_cuda else "dense").to(rt.device)
    if rt.world_size > 1 and not ckpt:  # rank 0's random initialization, on every rank
        for p in model.parameters():
            dist.broadcast(p.detach(), 0)
    adam, hidden, snoo = build_optimizers(model, args, rt.rank, rt.world_size)
    optimizers = [adam, hidden]
    if ckpt:
        ckpts.restore_state(ckpt, model, optimizers, snoo)
    muon = hidden if isinstance(hidden, Muon) else None
    info = dict(newton_schulz=None, matrix_optimizer=matrix_optimizer_info(args))
    if muon:
        shapes = [tuple(g["params"][0].shape) for g in muon.param_groups]
        info["newton_schulz"] = choose_newton_schulz(args.ns_impl, rt, shapes, compiled=args.compile)
        muon.set_ns_impl(info["newton_schulz"]["used"])
    if "adam_variants" in extensions_needed(args):
        info["adam_variant"] = extension("adam_variants", EXTENSIONS["adam_variants"]).summary(args)
    compiled = model
    if on_cuda and args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = args.coordinate_descent_tuning
        compiled = torch.compile(model, dynamic=False)
    drift = extension("weight_drift", "--log_weight_drift") if args.log_weight_drift else None
    initial = None
    if drift:
        initial = drift.initial_weights(ckpt["initial_weights"] if ckpt else model.parameter_kinds(), rt.device)
    clock = Clock(rt, ckpt["train_time_ms"] if ckpt else 0.0)
    run = Run(args, model, optimizers, snoo, sources, clock, ckpt["validated_step"] if ckpt else None, initial)
    folder = Path(args.records_dir) / args.record

    log = open_run_log(args, rt, ckpt)
    status = "failed"
    try:
        log_header(log, run, rt, ckpt, info)
        if args.warmup_steps:
            warmup(run, compiled, rt, log, muon)
        if ckpt:
            ckpts.restore_rng(ckpt, rt.device)
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(rt.device)  # the warmup's saved state is not the run's
        N, first = args.num_iterations, ckpt["step"] if ckpt else 0
        files = shard_files(args.train_files, "train_files", "")
        start = tuple(ckpt["data_position"]) if ckpt else (0, 0)
        batches = token_batches(files, args.train_seq_len, args.seqs_per_step, rt.rank, rt.world_size, rt.device, start)
        windows = {}  # one device tensor per window size: no copy to the GPU per step
        pending = None  # (step, loss and stop flag on the host, ready event): read one step late, the GPU never idles
        stopper.deferred = True  # from here a signal stops the run after a whole step, on every rank alike
        clock.start()
        for step in range(first, N + 1):
            last = step == N
            w = window_blocks(step, args)
            window = windows.setdefault(w, torch.tensor(w, dtype=torch.int32, device=rt.device))
            if (last or (args.val_loss_every and step % args.val_loss_every == 0)) and step != run.validated:
                clock.stop()
                val_loss = evaluate(compiled, args, rt, window)
                if not math.isfinite(val_loss):
                    raise Diverged(f"at step {step}: non-finite validation loss {val_loss}")
                log.log_val(step, N, val_loss, clock.ms)
                if drift:
                    drift.log_drift(log, step, drift.weight_drift(model.parameter_kinds(), initial))
                run.validated = step
                clock.start()
            if args.checkpoint_every and step % args.checkpoint_every == 0 and step not in (first, N):
                clock.stop()
                ckpts.save_resume(folder / f"{log.summary['run_id']}.resume.pt", step, run, rt, log)
                clock.start()
            if last:
                break
            set_schedules(step, args, optimizers)
            reported = train_step(compiled, next(batches), window, rt, optimizers, snoo, stopper.requested)
            if pending is not None:
                done, host, ready = pending
                if ready is not None:
                    ready.synchronize()
                loss, stop = host.tolist()
                if not math.isfinite(loss):
                    raise Diverged(f"at step {done}: non-finite train loss {loss}")
                if stop > 0:  # some rank was asked to stop: every rank stops after this step
                    log.log_train(step + 1, N, clock.elapsed_ms())
                    stopper.signum = stopper.signum or signal.SIGTERM  # another rank's signal
                    raise Interrupted(stopper.signum, after_step=step + 1)
            pending = (step + 1, *rt.to_host(reported))
            log.log_train(step + 1, N, clock.elapsed_ms())
        stopper.deferred = False  # what follows the last step stops at once
        if on_cuda:
            log.log_memory(torch.cuda.max_memory_allocated() // MIB, torch.cuda.max_memory_reserved() // MIB)
        status = "finished"
        log.set_status(status)  # training is done: what follows cannot make it less true
        after_training(args, rt, log, model, folder, ckpts, hellaswag, examples)
    except Diverged as e:
        log.write(f"DIVERGED {e}; run stopped.", console=True)
        status = "diverged"
    except Interrupted as e:
        if status == "finished":
            log.write(
                f"INTERRUPTED by {e} after training had finished; the steps after it were not done.", console=True
            )
            return Stopper.exit_code(e.signum)
        path = folder / f"{log.summary['run_id']}.resume.pt"
        saving = e.after_step is not None and args.checkpoint_every
        hint = "it cannot be resumed (no checkpoint: --checkpoint_every=0 or none saved yet)"
        if saving or (args.checkpoint_every and path.exists()):
            hint = resume_hint(rt, path)
        log.write(f"INTERRUPTED by {e} after step {log.summary['steps_done']}; run stopped; {hint}.", console=True)
        status = "interrupted"
        log.set_status(status)  # before the last checkpoint, which a scheduler may kill
        if saving:
            clock.stop()
            ckpts.save_resume(path, e.after_step, run, rt, log)
    except Exception as e:
        if status == "finished" or not stopper.requested:
            log.write(f"FAILED {'after training had finished: ' if status == 'finished' else ''}{describe_error(e)}")
            raise
        # a rank that stopped first broke a collective of this one: interrupted as well
        by = signal.Signals(stopper.signum).name
        stopped = f"after step {log.summary['steps_done']}; run stopped ({describe_error(e)})"
        log.write(f"INTERRUPTED by {by} {stopped}.", console=True)
        status = "interrupted"
    finally:
        log.finish(status)
    if status == "interrupted":
        return Stopper.exit_code(stopper.signum)
    return EXIT_DIVERGED if status == "diverged" else 0


def after_training(args, rt: Runtime, log: RunLog, model: nn.Module, folder: Path, ckpts, hellaswag, examples) -> None:
    """Off the clock, once training has finished: the final weights and HellaSwag when asked (rank 0; the other
    ranks learn whether it worked), and the rolling resume checkpoint is removed: a finished run has nothing to
    resume."""
    error = None
    if rt.master:
        try:
            if args.save_checkpoint:
                ckpts.save_final(folder / f"{log.summary['run_id']}.pt", args, model, log)
            if hellaswag:
                hellaswag.log_result(log, hellaswag.score_run(model, examples, args, rt.device))
            resume_path = folder / f"{log.summary['run_id']}.resume.pt"
            if resume_path.exists():
                resume_path.unlink()
                log.write(f"removed {resume_path}: the run finished", console=True)
        except Exception as e:
            error = e
    if not rt.all_ranks_ok(error is None) and error is not None:
        raise error


def main(argv: list[str]) -> int:
    sources = {}
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    # The record's allocator setting (less fragmentation); an explicit setting in the environment wins.
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    stopper = Stopper()
    stopper.install()
    master = int(os.environ.get("RANK", 0)) == 0  # only rank 0 reports a mistake: once, not once per rank
    try:
        script = Path(__file__).read_text(encoding="utf-8")  # the code that runs, read before anything runs
        args = parse_args(argv)  # imports the modules of speedrun/ that the options ask for
        sources = {**read_sources(), Path(__file__).name: script}
        rt = resolve_runtime(args)
        if rt.device.type == "cpu" and rt.world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
            # Processes sharing CPU cores slow each other down 20x when each spins several OpenMP threads.
            torch.set_num_threads(1)
        if rt.world_size > 1:
            if rt.device.type == "cuda":
                torch.cuda.set_device(rt.device)
            backend = "nccl" if rt.device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, device_id=rt.device if rt.device.type == "cuda" else None)
        return train(args, rt, stopper, sources)
    except UserError as e:
        if master:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except Interrupted as e:
        if master:
            print(f"interrupted by {e} before the run started; nothing was written.", file=sys.stderr, flush=True)
        return Stopper.exit_code(e.signum)
    except Exception:
        if stopper.requested:  # a peer that stopped first broke a collective: this rank was interrupted too
            return Stopper.exit_code(stopper.signum)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
