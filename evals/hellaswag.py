"""HellaSwag accuracy of a train_gpt.py checkpoint: zero-shot, four candidate endings per example.

    python evals/hellaswag.py --prepare                     # download the validation set once, tokenize it
    python evals/hellaswag.py records/dev/RUN.pt            # score a checkpoint (prepares the data if missing)
    python evals/hellaswag.py RUN.pt --limit 1000 --json    # the first 1,000 examples, one JSON line

The 10,042 validation examples come from the rowanz/hellaswag repository and are cached in
data/hellaswag/ (--dir): hellaswag_val.jsonl as downloaded, and hellaswag_val.tokens.jsonl, the
GPT-2 tokens that this script and train_gpt.py score. Metric, data and caching: evals/README.md.
"""

import argparse
import http.client
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for evals.common

import train_gpt as tg  # noqa: E402
from evals.common import DEVICES, REPO, gpt2_encoding, load_model, positive_int, resolve_device, run_main  # noqa: E402
from speedrun import hellaswag as hs  # noqa: E402
from speedrun.files import atomic_path  # noqa: E402

SOURCE_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
DEFAULT_DIR = REPO / "data" / "hellaswag"
RAW_NAME = "hellaswag_val.jsonl"  # the file as the repository has it
TOKENS_NAME = "hellaswag_val.tokens.jsonl"  # what train_gpt.py's read_hellaswag reads
VAL_EXAMPLES = 10_042
ENDINGS = hs.HELLASWAG_ENDINGS
DOWNLOAD_TIMEOUT_S = 30  # per connect and per read: a dead network is reported instead of hanging
DOWNLOAD_CHUNK_BYTES = 1 << 16
# Candidates packed into one forward pass, capped by the model's longest sequence.
PACK_TOKENS = 4096


# -----------------------------------------------------------------------------------------------------
# raw HellaSwag -> tokens


def tokenize_example(example: dict, encoding) -> dict:
    """The tokens that are scored. As in the GPT-2 evaluations of llm.c and nanoGPT, the context is
    `ctx` as it stands and each ending is tokenized with a leading space, " " + ending: it continues
    the context's last sentence, and GPT-2's tokenizer keeps a word's leading space in its token."""
    return {
        "context": encoding.encode_ordinary(example["ctx"]),
        "endings": [encoding.encode_ordinary(" " + ending) for ending in example["endings"]],
        "label": example["label"],
    }


def valid_example(record) -> dict | None:
    """The fields of one raw HellaSwag line, the label as an int (some copies store it as text); None if malformed."""
    if not isinstance(record, dict):
        return None
    ctx, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    ok = (
        isinstance(ctx, str)
        and isinstance(endings, list)
        and len(endings) == ENDINGS
        and all(isinstance(e, str) for e in endings)
        and type(label) is int
        and 0 <= label < ENDINGS
    )
    return {"ctx": ctx, "endings": endings, "label": label} if ok else None


def tokenize_file(path: Path, encoding, source: str, fix: str) -> list[dict]:
    """Tokenize every line of a raw HellaSwag file; `source` names it and `fix` says what to do in errors."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise tg.UserError(
            f"{source} is not UTF-8 text (byte {e.start}), so it is not HellaSwag's JSON lines. {fix}"
        ) from None
    except OSError as e:
        raise tg.UserError(f"cannot read {source}: {e.strerror}. {fix}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            example = valid_example(json.loads(line))
        except ValueError:
            example = None
        if example is None:
            raise tg.UserError(
                f'{source}, line {number}: expected a HellaSwag example, a JSON object with "ctx" (text), '
                f'"endings" ({ENDINGS} texts) and "label" (0..{ENDINGS - 1}), as in rowanz/hellaswag\'s '
                f"data/{RAW_NAME}. {fix}"
            )
        examples.append(tokenize_example(example, encoding))
    if not examples:
        raise tg.UserError(f"{source} holds no HellaSwag examples. {fix}")
    return examples


def writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise tg.UserError(f"cannot write to --dir {folder} ({e.strerror}); choose a writable folder.") from None


def offline_help(url: str, folder: Path, error: Exception) -> str:
    again = "python evals/hellaswag.py --prepare" + ("" if folder == DEFAULT_DIR else f" --dir {folder}")
    return (
        f"Could not download the HellaSwag validation set from {url} ({type(error).__name__}: {error}). "
        f"It is fetched once and then read from {folder}, so only this first step needs network. Without "
        f"network here, download that URL on a machine that has it (e.g. `curl -L -o {RAW_NAME} {url}`) and "
        f"put the file at {folder / RAW_NAME}, or pass it with --raw FILE; then run `{again}` again."
    )


def download(url: str, temp: Path, folder: Path) -> None:
    """Fetch url into temp (a file the caller keeps or removes), with a progress bar."""
    from tqdm import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, ValueError, http.client.HTTPException) as e:  # offline, refused, HTTP error, bad URL
        raise tg.UserError(offline_help(url, folder, e)) from None
    expected = int(response.headers.get("Content-Length") or 0) or None
    received = 0
    with (
        response,
        open(temp, "wb") as out,
        tqdm(total=expected, unit="B", unit_scale=True, desc=RAW_NAME, file=sys.stderr) as bar,
    ):
        while True:
            try:
                chunk = response.read(DOWNLOAD_CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:
                raise tg.UserError(offline_help(url, folder, e)) from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:
                raise tg.UserError(
                    f"cannot write {temp} ({e.strerror}); free some disk space or choose another --dir."
                ) from None
            received += len(chunk)
            bar.update(len(chunk))
    if expected is not None and received != expected:
        raise tg.UserError(
            offline_help(
                url, folder, ConnectionError(f"the connection closed after {received:,} of {expected:,} bytes")
            )
        )


def write_lines(path: Path, records: list) -> None:
    """JSON lines written to a temporary file, then renamed: a crash never leaves half a file at path."""
    writable(path.parent)
    try:
        with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
    except OSError as e:
        raise tg.UserError(
            f"cannot write {path} ({e.strerror}); free some disk space or choose another --dir."
        ) from None


def prepare(folder: Path, raw: Path | None = None, url: str = SOURCE_URL) -> Path:
    """Tokenize HellaSwag into folder/TOKENS_NAME (replacing it) and return that path. The raw text
    comes from `raw` if given, else from folder/RAW_NAME if present, else it is downloaded from url
    and kept there, so the download happens once."""
    encoding = gpt2_encoding()
    cached = folder / RAW_NAME
    if raw is not None:
        examples = tokenize_file(raw, encoding, f"--raw {raw}", "Pass the hellaswag_val.jsonl of rowanz/hellaswag.")
        source = str(raw)
    elif cached.exists():
        examples = tokenize_file(
            cached, encoding, str(cached), "Delete it to download it again, or pass another copy with --raw FILE."
        )
        source = str(cached)
    else:
        print(f"downloading {url} to {cached}", file=sys.stderr)
        writable(folder)
        with atomic_path(cached) as temp:
            download(url, temp, folder)
            # Checked before it is kept: a wrong page (a proxy's, an error's) must not become the cache.
            examples = tokenize_file(
                temp,
                encoding,
                f"the file downloaded from {url}",
                "That URL did not give the HellaSwag validation set; check --url.",
            )
        source = url
    tokens = folder / TOKENS_NAME
    write_lines(tokens, examples)
    note = "" if len(examples) == VAL_EXAMPLES else f" (the full validation set has {VAL_EXAMPLES:,})"
    print(f"wrote {tokens}: {len(examples):,} examples{note}, tokenized from {source}", file=sys.stderr)
    return tokens


# -----------------------------------------------------------------------------------------------------
# scoring


def check_fits(examples: list, path: Path, vocab_size: int, max_len: int) -> None:
    """Every candidate (<|endoftext|> + context + ending) must be valid input for this model."""
    for number, (context, endings, _) in enumerate(examples, 1):
        ids = context + [t for ending in endings for t in ending]
        if min(ids, default=0) < 0 or max(ids, default=0) >= vocab_size:
            raise tg.UserError(
                f"{path}, example {number}: token ids outside the model's vocabulary "
                f"0..{vocab_size - 1}. Re-create the file with `python evals/hellaswag.py --prepare --force`."
            )
        longest = 1 + len(context) + max(map(len, endings))
        if longest > max_len:
            raise tg.UserError(
                f"{path}, example {number}: a candidate of {longest} tokens is longer than the "
                f"{max_len} this checkpoint's model can read (max(train_seq_len, val_seq_len))."
            )


def score(checkpoint: Path, folder: Path, device_name: str, limit: int | None, url: str) -> dict:
    device = resolve_device(device_name)
    model, args, window, max_len = load_model(checkpoint, device)
    tokens = folder / TOKENS_NAME
    if not tokens.exists():
        prepare(folder, url=url)
    examples = hs.read_hellaswag(tokens)[:limit]
    check_fits(examples, tokens, args.vocab_size, max_len)
    start = time.perf_counter()
    # hellaswag_score reads each result back to the host, so the clock stops after the GPU's work.
    result = hs.hellaswag_score(model, examples, window, device, max_tokens=min(PACK_TOKENS, max_len))
    seconds = time.perf_counter() - start
    return dict(
        result,
        checkpoint=str(checkpoint),
        data=str(tokens),
        window_blocks=window,
        device=str(device),
        seconds=round(seconds, 3),
    )


def report(result: dict) -> str:
    return "\n".join(
        [
            f"checkpoint  {result['checkpoint']} (attention window {result['window_blocks']} blocks)",
            f"examples    {result['n']:,} of {result['data']}",
            f"acc         {result['acc']:.4f}  (best total log-likelihood of the ending's tokens)",
            f"acc_norm    {result['acc_norm']:.4f}  (best mean log-likelihood per ending token)",
            f"time        {result['seconds']:.1f} s on {result['device']}",
        ]
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="HellaSwag accuracy (acc and acc_norm) of a train_gpt.py checkpoint; see evals/README.md.",
        epilog="Example: python evals/hellaswag.py --prepare; python evals/hellaswag.py records/dev/RUN.pt",
    )
    parser.add_argument(
        "checkpoint", nargs="?", type=Path, help="a .pt file written by train_gpt.py --save_checkpoint=true"
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="download (once) and tokenize the validation set; with no CHECKPOINT, only that",
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"data cache folder (default: {DEFAULT_DIR.relative_to(REPO)}/)"
    )
    parser.add_argument(
        "--raw", type=Path, metavar="FILE", help=f"tokenize this local copy of {RAW_NAME} instead of downloading it"
    )
    parser.add_argument(
        "--url", default=SOURCE_URL, help="where to download the raw file from (default: rowanz/hellaswag on GitHub)"
    )
    parser.add_argument("--force", action="store_true", help=f"re-tokenize even if {TOKENS_NAME} exists")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto (default): the GPU if torch sees one")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="score only the first N examples")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.checkpoint is None and not args.prepare:
        parser.error("give a CHECKPOINT to score, or --prepare to only download and tokenize the data")
    if (args.raw or args.force) and not args.prepare:
        parser.error("--raw and --force belong to the data step: add --prepare")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        tokens = args.dir / TOKENS_NAME
        if not tokens.exists() or args.force:
            prepare(args.dir, args.raw, args.url)
        elif args.raw is not None:
            raise tg.UserError(
                f"{tokens} already exists, and --raw would replace it; add --force to re-tokenize it from {args.raw}."
            )
        else:
            print(f"{tokens} is already prepared (--force re-tokenizes it)", file=sys.stderr)
    if args.checkpoint is None:
        return 0
    result = score(args.checkpoint, args.dir, args.device, args.limit, args.url)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, None))
