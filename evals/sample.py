"""Generate text from a train_gpt.py checkpoint.

    python evals/sample.py records/dev/RUN.pt --prompt "The meaning of life is"            # greedy, 100 tokens
    python evals/sample.py RUN.pt --prompt "Once upon a time" --temperature 0.8 --top_k 50 --seed 1 --samples 3

The prompt follows <|endoftext|>, as every training document does. Each step runs the whole sequence
again (no KV cache: simple, and fast enough for short samples). A sample stops early if the model
ends the document with <|endoftext|>. Greedy decoding (--temperature 0) is deterministic; sampling
is deterministic for a given --seed (drawn on the CPU, from a torch.Generator).
"""

import argparse
import json
import math
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for evals.common

import torch  # noqa: E402

import train_gpt as tg  # noqa: E402
from evals.common import DEVICES, gpt2_encoding, load_model, positive_int, resolve_device, run_main  # noqa: E402
from speedrun import hellaswag as hs  # noqa: E402

DEFAULT_TOKENS = 100


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """Greedy (temperature 0: the first most likely token) or a draw from softmax(logits / temperature)
    restricted to the top_k most likely tokens."""
    if temperature == 0:
        return int(logits.argmax())
    logits = (logits - logits.max()) / temperature  # <= 0, so no temperature overflows the softmax
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


def generate(
    model,
    prefix: list[int],
    max_new: int,
    window: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    vocab: int | None = None,
) -> list[int]:
    """Up to max_new tokens after prefix; stops after <|endoftext|>, which is not returned. Only the
    first `vocab` token ids may be produced (those the tokenizer can decode)."""
    device = model.lm_head_w.device
    w = torch.tensor(window, dtype=torch.int32, device=device)
    seq = list(prefix)
    new = []
    for _ in range(max_new):
        # Drawn on the CPU from a CPU generator: the draws depend on the seed alone, not on the device.
        logits = hs.logits(model, torch.tensor(seq, device=device), w)[-1, :vocab].cpu()
        token = next_token(logits, temperature, top_k, generator)
        if token == tg.EOT_TOKEN:
            break
        new.append(token)
        seq.append(token)
    return new


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Generate text from a train_gpt.py checkpoint (see evals/README.md).")
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by train_gpt.py --save_checkpoint=true")
    parser.add_argument("--prompt", default="", help='text to continue (default: "", i.e. a new document)')
    parser.add_argument(
        "--tokens",
        type=positive_int,
        default=DEFAULT_TOKENS,
        help=f"tokens to generate per sample (default {DEFAULT_TOKENS}; fewer if the model ends the document)",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.0,
        help="0 (default): greedy; T > 0: sample from softmax(logits / T)",
    )
    parser.add_argument("--top_k", type=positive_int, metavar="K", help="sample only among the K most likely tokens")
    parser.add_argument("--seed", type=int, help="seed of the sampling (default: a fresh one, printed to stderr)")
    parser.add_argument("--samples", type=positive_int, default=1, help="how many samples (default 1)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (default): the GPU if torch sees one")
    parser.add_argument("--json", action="store_true", help="print prompt, token ids and texts as one JSON object")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    encoding = gpt2_encoding()
    model, _, window, max_len = load_model(args.checkpoint, device)
    prompt = encoding.encode_ordinary(args.prompt)
    prefix = [tg.EOT_TOKEN, *prompt]
    if len(prefix) + args.tokens > max_len:
        raise tg.UserError(
            f"the prompt is {len(prompt)} tokens (after a leading <|endoftext|>) and --tokens {args.tokens} asks for "
            f"{len(prefix) + args.tokens} in all, more than the {max_len} this checkpoint's model can read "
            f"(max(train_seq_len, val_seq_len)). Ask for at most {max(max_len - len(prefix), 0)} tokens, or "
            f"shorten the prompt."
        )
    sampling = args.temperature > 0
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    if sampling and args.seed is None:
        print(f"seed {seed} (pass --seed {seed} to repeat these samples)", file=sys.stderr)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(args.samples):
        tokens = generate(model, prefix, args.tokens, window, args.temperature, args.top_k, generator, encoding.n_vocab)
        samples.append(dict(tokens=tokens, text=encoding.decode(prompt + tokens), ended=len(tokens) < args.tokens))
    if args.json:
        print(
            json.dumps(
                dict(
                    prompt=args.prompt,
                    prompt_tokens=prompt,
                    temperature=args.temperature,
                    top_k=args.top_k,
                    seed=seed if sampling else None,
                    samples=samples,
                )
            )
        )
        return 0
    for i, sample in enumerate(samples):
        if args.samples > 1:
            print(f"--- sample {i + 1} of {args.samples}")
        print(sample["text"])
        if sample["ended"]:
            print(f"(the model ended the document after {len(sample['tokens'])} tokens)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
