"""Checkpoints: --checkpoint_every (a rolling <run id>.resume.pt that --resume continues exactly, at any
world size), --resume, --save_checkpoint (the final weights), and reading a checkpoint for evals/."""

import glob
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.distributed as dist

import train_gpt as tg
from speedrun.files import atomic_path

CHECKPOINT_FORMAT = "speedrun-checkpoint/1"

# What a resumed run may change: where it logs and checkpoints, what it reports, and how it computes (the
# device, compilation, the Newton-Schulz implementation: rounding only, as the world size).
# Data paths may change too (another machine): the resumed run checks that the shards are the same.
RESUME_MAY_CHANGE = (
    "records_dir", "record", "checkpoint_every", "resume", "save_checkpoint", "hellaswag", "hellaswag_file",
    "device", "compile", "coordinate_descent_tuning", "ns_impl", "warmup_steps", "train_files", "val_files",
)  # fmt: skip


def validate(args) -> None:
    if args.checkpoint_every < 0:
        raise tg.UserError(f"option --checkpoint_every={args.checkpoint_every}: must be >= 0.")


def resume_args(path: str, pairs: list[tuple[str, str]]) -> "tg.Hyperparameters":
    """The hyperparameters of the checkpoint's run. Options on the command line must agree with them,
    except RESUME_MAY_CHANGE: a resumed run computes what the interrupted one would have."""
    ckpt = read_checkpoint(path)
    if "optimizers" not in ckpt:
        raise tg.UserError(
            f"--resume={path}: the checkpoint holds the final weights only (--save_checkpoint), not "
            f"the state a run continues from; resume from a <run id>.resume.pt of --checkpoint_every."
        )
    args = hyperparameters_from(ckpt["hyperparameters"], path)
    differing = []
    for name, value in tg.typed_options(pairs):
        if name in RESUME_MAY_CHANGE:
            setattr(args, name, value)
        elif value != getattr(args, name):
            differing.append(
                f"--{name}={tg.format_value(value)} (the checkpoint's run: {tg.format_value(getattr(args, name))})"
            )
    if differing:
        raise tg.UserError(
            f"--resume={path}: the checkpoint's run has other settings: {'; '.join(differing)}. "
            f"A resumed run computes what the interrupted one would have; only "
            f"{', '.join('--' + n for n in RESUME_MAY_CHANGE)} may change. Drop these options, or "
            f"start a new run."
        )
    return args


def read_checkpoint(path) -> dict:
    """A checkpoint written by train_gpt.py, loaded on the CPU with weights_only=True."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors read when used
    except FileNotFoundError:
        raise tg.UserError(f"checkpoint {path} does not exist.") from None
    except OSError as e:
        raise tg.UserError(f"cannot read checkpoint {path}: {e.strerror}.") from None
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise tg.UserError(
            f"{path} is not a readable checkpoint ({tg.describe_error(e)}); "
            f"it may be truncated or not written by train_gpt.py."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise tg.UserError(
            f"{path} is not a train_gpt.py checkpoint: format {found!r}, expected {CHECKPOINT_FORMAT!r}."
        )
    return ckpt


def hyperparameters_from(saved: dict, source) -> tg.Hyperparameters:
    known = {f.name for f in fields(tg.Hyperparameters)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise tg.UserError(
            f"{source} has hyperparameters this script does not know ({', '.join(unknown)}): "
            f"it was written by another version of train_gpt.py; use that version."
        )
    return tg.Hyperparameters(**saved)


def model_from_checkpoint(path, device) -> tuple[tg.GPT, tg.Hyperparameters, int]:
    """The checkpoint's model in eval mode on device, its hyperparameters, and the attention window
    (in blocks) it was at: what sampling and evaluation need. Dense attention on every device: at
    inference lengths it is exact and needs no compile."""
    ckpt = read_checkpoint(path)
    args = hyperparameters_from(ckpt["hyperparameters"], path)
    model = tg.build_model(args, attention="dense")
    try:
        model.load_state_dict(ckpt["model"])
        step = ckpt["step"]
    except (KeyError, RuntimeError) as e:
        raise tg.UserError(
            f"{path} does not hold this script's model ({tg.describe_error(e)}): it was written by "
            f"another version of train_gpt.py."
        ) from None
    return model.to(device).eval(), args, tg.window_blocks(step, args)


def shard_list(pattern: str) -> list[tuple[str, int]]:
    """(file name, tokens) of the shards a glob matches, in reading order: what a checkpoint's data was."""
    return [(f.name, tg.read_shard_header(f)) for f in sorted(Path(f) for f in glob.glob(pattern))]


def owned_indices(opt: tg.MatrixOptimizer) -> set[int]:
    """The state_dict indices of the matrices this rank updates."""
    owned, index = set(), 0
    for group in opt.param_groups:
        for j in range(len(group["params"])):
            if opt.owns(j):
                owned.add(index)
            index += 1
    return owned


# A matrix optimizer's state_dict entries that hold per-matrix state, each on the rank that owns the matrix
PER_MATRIX_STATE = ("state", "inner")


def gathered_state_dict(opt: torch.optim.Optimizer, rt: tg.Runtime) -> dict | None:
    """opt's state_dict on the CPU, with the matrix state of every rank merged into rank 0's (None on the
    other ranks): one file holds the whole run, and any world size can load it."""
    if not isinstance(opt, tg.MatrixOptimizer) or rt.world_size == 1:
        return tg.copy_to(opt.state_dict(), "cpu") if rt.master else None  # the same on every rank
    saved = opt.state_dict()
    local = {k: saved[k] for k in PER_MATRIX_STATE if k in saved}
    # as torch.save bytes: gather_object's own pickling cannot carry uint16 tensors (the mantissas)
    buffer = io.BytesIO()
    torch.save(tg.copy_to(local, "cpu"), buffer)
    parts = [None] * rt.world_size if rt.master else None
    dist.gather_object(buffer.getvalue(), parts, dst=0)
    if not rt.master:
        return None
    parts = [torch.load(io.BytesIO(part), weights_only=True) for part in parts]
    merged = tg.copy_to({k: v for k, v in saved.items() if k not in PER_MATRIX_STATE}, "cpu")
    for key in local:
        merged[key] = {index: entry for part in parts for index, entry in part[key].items()}
    return merged


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """A gathered state_dict into opt: a matrix optimizer keeps the matrices this rank updates."""
    if isinstance(opt, tg.MatrixOptimizer):
        owned = owned_indices(opt)
        saved = {
            **saved,
            **{k: {i: v for i, v in saved[k].items() if i in owned} for k in PER_MATRIX_STATE if k in saved},
        }
    opt.load_state_dict(saved)


def data_identity(args) -> dict:
    """(file name, tokens) of the train and val shards a run reads: a resumed run must read the same."""
    used = {}
    for split, pattern, step_tokens, steps in (
        ("train", args.train_files, args.seqs_per_step * args.train_seq_len, args.num_iterations),
        (
            "val",
            args.val_files,
            args.seqs_per_step * args.val_seq_len,
            args.val_tokens // (args.seqs_per_step * args.val_seq_len),
        ),
    ):
        shards = shard_list(pattern)
        used[split] = shards[: stream_position([n for _, n in shards], step_tokens, steps)[0] + 1]
    return used


def format_shards(shards: list) -> str:
    return ", ".join(f"{name} ({tokens:,} tokens)" for name, tokens in shards) or "no shards"


def stream_position(token_counts: list[int], step_tokens: int, steps: int) -> tuple[int, int]:
    """(shard index, position in it) of the training stream after `steps` steps: what a resumed run
    continues from (token_batches' rule: a step needs pos + step_tokens + 1 < the shard's length)."""
    shard, pos = 0, 0
    for _ in range(steps):
        while pos + step_tokens + 1 >= token_counts[shard]:
            shard, pos = shard + 1, 0
        pos += step_tokens
    return shard, pos


def data_position(args, step: int) -> tuple[int, int]:
    counts = [tg.read_shard_header(f) for f in tg.shard_files(args.train_files, "train_files", "")]
    return stream_position(counts, args.seqs_per_step * args.train_seq_len, step)


def digests(sources: dict[str, str]) -> dict[str, str]:
    return {path: hashlib.sha256(text.encode()).hexdigest() for path, text in sources.items()}


def check_resumable(ckpt: dict, args, sources: dict[str, str]) -> None:
    """A checkpoint continues only an unfinished run, with the code and the data that wrote it. sources:
    the code this run embeds in its log, read at startup."""
    summary = Path(args.records_dir) / args.record / f"{ckpt['run_id']}.json"
    try:
        finished = json.loads(summary.read_text()).get("status") == "finished"
    except (OSError, ValueError):
        finished = False  # no summary here (another folder or machine), or an unreadable one
    if finished:
        raise tg.UserError(
            f"--resume={args.resume}: run {ckpt['run_id']} has finished ({summary} says so); resuming "
            f"it would rewrite its record. Start a new run instead."
        )
    now = digests(sources)
    # every file the run that wrote it embedded and this one uses (a report-only module may come or go)
    changed = [path for path, digest in ckpt.get("sources_sha256", {}).items() if now.get(path, digest) != digest]
    if changed or "train_gpt.py" not in ckpt.get("sources_sha256", {}):
        raise tg.UserError(
            f"--resume={args.resume}: the checkpoint was written by other code ({', '.join(changed) or 'train_gpt.py'} "
            f"differs), so the resumed run would not compute what the interrupted one would have. Resume with the "
            f"code that wrote it: it is at the top of the run's log."
        )
    now = data_identity(args)
    for split in ("train", "val"):
        if [tuple(x) for x in ckpt["data"][split]] != now[split]:
            raise tg.UserError(
                f"--resume={args.resume}: the {split} shards differ from the checkpoint's run "
                f"(it read {format_shards(ckpt['data'][split])}; --{split}_files={getattr(args, split + '_files')} "
                f"now gives {format_shards(now[split])}). Point --{split}_files at the same data."
            )


def restore_state(ckpt: dict, model, optimizers: list, snoo) -> None:
    """The model, the optimizers (each rank keeps its matrices' state) and Snoo, as the checkpoint saved them."""
    model.load_state_dict(ckpt["model"])
    for opt, saved in zip(optimizers, ckpt["optimizers"]):
        load_optimizer_state(opt, saved)
    if snoo:
        snoo.load_state_dict(ckpt["snoo"])


def restore_rng(ckpt: dict, device) -> None:
    """The random state the run had (after the warmup, the only part that draws random numbers)."""
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)


def save(payload: dict, path: Path) -> int:
    """torch.save through a temporary file, synced: a save that is killed leaves the previous file whole.
    Returns the size in bytes."""
    with atomic_path(path) as temp, open(temp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    return path.stat().st_size


def save_resume(path: Path, step: int, run, rt, log) -> None:
    """Everything the run's future depends on, gathered into one file on rank 0 (every rank takes part).
    run: what the loop carries (train_gpt.Run)."""
    start = time.perf_counter()
    optimizers = [gathered_state_dict(opt, rt) for opt in run.optimizers]
    if not rt.master:
        return
    payload = dict(
        format=CHECKPOINT_FORMAT, run_id=log.summary["run_id"], step=step, validated_step=run.validated,
        train_time_ms=run.clock.ms, world_size=rt.world_size, hyperparameters=asdict(run.args),
        sources_sha256=digests(run.sources), data=data_identity(run.args),
        data_position=list(data_position(run.args, step)), model=tg.copy_to(run.model.state_dict(), "cpu"),
        optimizers=optimizers, snoo=tg.copy_to(run.snoo.state_dict(), "cpu") if run.snoo else None,
        rng=dict(
            cpu=torch.get_rng_state(), cuda=torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None
        ),
        summary=json.loads(json.dumps(log.summary)),
        initial_weights=tg.copy_to(run.initial, "cpu") if run.initial else None,
    )  # fmt: skip
    size = save(payload, path)
    log.write(
        f"checkpoint at step {step}: {path} ({size / tg.GIB:.2f} GiB in {time.perf_counter() - start:.1f}s; "
        f"not on the clock)",
        console=True,
    )


def save_final(path: Path, args, model, log) -> None:
    """--save_checkpoint: the final weights (rank 0's: every rank holds all of them), never overwriting a file."""
    if path.exists():
        raise FileExistsError(f"{path} exists; it is never overwritten")
    payload = dict(
        format=CHECKPOINT_FORMAT, run_id=log.summary["run_id"], step=args.num_iterations,
        hyperparameters=asdict(args), model=tg.copy_to(model.state_dict(), "cpu"),
    )  # fmt: skip
    size = save(payload, path)
    log.write(f"checkpoint: {path} ({size / tg.GIB:.2f} GiB, final weights)", console=True)
