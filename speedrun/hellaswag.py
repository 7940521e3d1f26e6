"""HellaSwag: reading the tokenized validation set and scoring a model on it. One implementation, used by
--hellaswag (after a run's last validation, off the clock) and by evals/hellaswag.py (a saved checkpoint)."""

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

import train_gpt as tg

HELLASWAG_ENDINGS = 4


def read_hellaswag(
    path, vocab_size: int | None = None, max_len: int | None = None
) -> list[tuple[list[int], list[list[int]], int]]:
    """HellaSwag examples already tokenized by evals/hellaswag.py: JSON lines of {"context": [ids],
    "endings": [[ids] x 4], "label": 0..3}. Returns [(context, endings, label)]. With vocab_size and
    max_len, ids and candidate lengths are checked too, so a bad file fails before training, not after."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise tg.UserError(
            f"cannot read the tokenized HellaSwag file {path}: {e.strerror}. Make it with "
            f"`python evals/hellaswag.py --prepare` (downloads the validation set once)."
        ) from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            context, endings, label = ex["context"], ex["endings"], ex["label"]
            ok = (
                len(endings) == HELLASWAG_ENDINGS
                and label in range(HELLASWAG_ENDINGS)
                and all(isinstance(t, int) for t in context)
                and all(e and all(isinstance(t, int) for t in e) for e in endings)
            )
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise tg.UserError(
                f'{path}, line {number}: expected {{"context": [token ids], "endings": '
                f'[{HELLASWAG_ENDINGS} non-empty lists of token ids], "label": 0..3}}. '
                f"Re-create the file with `python evals/hellaswag.py --prepare`."
            )
        if vocab_size is not None and not all(
            0 <= t < vocab_size for t in [*context, *(t for e in endings for t in e)]
        ):
            raise tg.UserError(
                f"{path}, line {number}: a token id outside the vocabulary (0..{vocab_size - 1}). "
                f"Re-create the file with `python evals/hellaswag.py --prepare`."
            )
        longest = 1 + len(context) + max(len(e) for e in endings)  # <|endoftext|> + context + ending
        if max_len is not None and longest > max_len:
            raise tg.UserError(
                f"{path}, line {number}: {longest} tokens, more than the model's longest sequence "
                f"({max_len}); use a model with longer sequences or drop the example."
            )
        examples.append((context, endings, label))
    if not examples:
        raise tg.UserError(
            f"{path} holds no HellaSwag examples. Re-create it with `python evals/hellaswag.py --prepare`."
        )
    return examples


@torch.no_grad()
def hellaswag_score(model: tg.GPT, examples: list, window: int, device, max_tokens: int = 4096) -> dict:
    """HellaSwag accuracy: each candidate, <|endoftext|> + context + ending, is scored by the total
    (acc) and the mean (acc_norm) log-likelihood of the ending's tokens; the best-scored ending is
    the prediction. Candidates are packed into sequences of up to max_tokens tokens: each starts a
    document, so document masking keeps them apart and one forward scores many (batched)."""
    # Each candidate starts at an attention block and is padded with <|endoftext|> to whole blocks, so
    # that the sliding windows see exactly what they see of the candidate alone.
    max_tokens = min(max_tokens, model.max_seq_len)
    candidates = []  # (padded tokens, where the ending starts, where it ends, example index, ending index)
    for i, (context, endings, _) in enumerate(examples):
        for j, ending in enumerate(endings):
            tokens = [tg.EOT_TOKEN, *context, *ending]
            if len(tokens) > model.max_seq_len:
                raise tg.UserError(
                    f"HellaSwag example {i}, ending {j}: {len(tokens)} tokens, more than the model's "
                    f"longest sequence ({model.max_seq_len})."
                )
            pad = tg.next_multiple_of(len(tokens), tg.ATTN_BLOCK_SIZE) - len(tokens)
            candidates.append((tokens + [tg.EOT_TOKEN] * pad, 1 + len(context), len(tokens), i, j))
    total = torch.full((len(examples), HELLASWAG_ENDINGS), -math.inf, dtype=torch.float64)
    mean = total.clone()
    w = torch.tensor(window, dtype=torch.int32, device=device)

    def score(pack: list) -> None:
        ids = torch.tensor([t for c in pack for t in c[0]], device=device)
        logp = torch.log_softmax(logits(model, ids, w), dim=-1)
        offset = 0
        for tokens, start, end, i, j in pack:
            targets = ids[offset + start : offset + end]
            ll = logp[offset + start - 1 : offset + end - 1].gather(1, targets[:, None]).double()
            total[i, j], mean[i, j] = ll.sum().item(), ll.mean().item()
            offset += len(tokens)

    pack, size = [], 0
    for c in candidates:
        if pack and size + len(c[0]) > max_tokens:
            score(pack)
            pack, size = [], 0
        pack.append(c)
        size += len(c[0])
    if pack:
        score(pack)
    labels = torch.tensor([label for *_, label in examples])
    return dict(
        n=len(examples),
        acc=(total.argmax(1) == labels).double().mean().item(),
        acc_norm=(mean.argmax(1) == labels).double().mean().item(),
    )


@torch.no_grad()
def logits(model: tg.GPT, input_seq: Tensor, window: Tensor) -> Tensor:
    """Next-token logits (T, vocab_size) for a sequence of any length T (sampling, evals). The sequence is
    padded with <|endoftext|> to whole attention blocks; causality makes the padding invisible to the real
    positions."""
    T = input_seq.numel()
    pad = tg.next_multiple_of(T, tg.ATTN_BLOCK_SIZE) - T
    ids = F.pad(input_seq.to(torch.int32), (0, pad), value=tg.EOT_TOKEN)
    return model.head(model.trunk(ids, window)[:T])[:, : model.embed1.num_embeddings]


def score_run(model: tg.GPT, examples: list, args, device) -> dict:
    """--hellaswag: the model at the end of training, with dense attention (exact at these lengths)."""
    start = time.perf_counter()
    model.eval()
    model.attention, attention = "dense", model.attention
    try:
        result = hellaswag_score(model, examples, tg.window_blocks(args.num_iterations, args), device)
    finally:
        model.attention = attention
        model.train()
    return {**result, "seconds": time.perf_counter() - start}


def log_result(log, result: dict) -> None:
    log.write(
        f"hellaswag: acc {result['acc']:.4f} acc_norm {result['acc_norm']:.4f} (n={result['n']}, "
        f"{result['seconds']:.1f}s; not on the clock)",
        console=True,
    )
    log.summary["hellaswag"] = result
    log.save()
