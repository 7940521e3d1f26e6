"""Build a small real-English dataset without any network, from text that ships with Python.

Val shard: the reference-manual topics of `pydoc_data.topics` (what `help("if")` shows).
Train shards: the docstrings and the comments of the standard library's .py files (test suites,
codec tables and site-packages left out), one document per module for each, in sorted path order.
Same Python installation, same bytes. The tiny CPU run (`train_gpt.py --preset=tiny`) and the
tests train on it.

    python data/sample.py            # -> data/sample/sample_val_000000.bin, sample_train_000001.bin, ...
"""

import argparse
import ast
import io
import os
import sys
import sysconfig
import tokenize
import warnings
from multiprocessing import Pool
from pathlib import Path

from fineweb import DataError, load_gpt2, positive_int, tokenize_docs, write_and_report, write_shards

NAME = "sample"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / NAME
# The pydoc topics (~140k tokens) fill the val shard. The ~0.8M tokens of stdlib docstrings and
# comments go into train shards of similar size (none tiny, whatever the Python version) of
# ~100k tokens, fewer than the ~200k that the default tiny run (200 steps of 1,024 tokens)
# reads, so that run rolls over from one shard to the next.
VAL_TOKENS = 131_072
TRAIN_SHARDS = 8
# Test suites and installed packages are not in every installation; encodings/ comments are
# codec tables (character names), not prose.
SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings"}
# Comment blocks shorter than this are mostly dividers, pragmas or commented-out code, not prose.
MIN_COMMENT_WORDS = 4


def topic_docs():
    """The pydoc reference topics in sorted key order; none where a distribution strips pydoc_data."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [(f"pydoc_data.topics[{key!r}]", topics[key]) for key in sorted(topics)]


def stdlib_files():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = (p for p in stdlib.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(stdlib).parts))
    return stdlib, sorted(files)


def _docstrings(node):
    """Docstrings of a module and of its classes and functions, in source order."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)


def _comment_paragraphs(source):
    """Runs of comments on consecutive lines, each joined into one paragraph of prose."""
    paragraphs, lines, last_row = [], [], None
    for tok in tokenize.tokenize(io.BytesIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0]
        if lines and row != last_row + 1:
            paragraphs.append(" ".join(lines))
            lines = []
        text = tok.string.lstrip("#").strip()
        if text and not text.startswith("!") and "-*-" not in text:  # shebangs and coding cookies
            lines.append(text)
        last_row = row
    if lines:
        paragraphs.append(" ".join(lines))
    return [p for p in paragraphs if len(p.split()) >= MIN_COMMENT_WORDS]


def module_docs(args):
    """(label, text) documents of one stdlib file: its docstrings, then its comments."""
    stdlib, path = args
    rel = path.relative_to(stdlib).as_posix()
    source = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old escape sequences in a few modules warn on newer Pythons
            tree = ast.parse(source)
        comments = _comment_paragraphs(source)
    except (SyntaxError, ValueError, tokenize.TokenError):
        return []  # a file this Python cannot parse; skipping it is still deterministic
    docs = [(f"{rel} docstrings", "\n\n".join(_docstrings(tree))), (f"{rel} comments", "\n\n".join(comments))]
    return [(label, text) for label, text in docs if text]


def sample_docs(workers):
    stdlib, files = stdlib_files()
    docs = topic_docs()
    with Pool(workers) as pool:
        for file_docs in pool.imap(module_docs, [(stdlib, p) for p in files], chunksize=8):
            docs.extend(file_docs)
    return docs


def train_shard_size(tokenized):
    """A shard size that packs the documents after the val shard into about TRAIN_SHARDS shards.

    Shards close at document boundaries, so every shard but the last holds more than
    size - biggest document = total / TRAIN_SHARDS tokens: at most TRAIN_SHARDS shards.
    """
    lengths = [len(tokens) for _, tokens in tokenized]
    val = 0
    while lengths and val + lengths[0] <= VAL_TOKENS:  # the same rule write_shards fills the val shard by
        val += lengths.pop(0)
    if not lengths:
        raise DataError(f"This Python installation gave only {val} tokens of text, too few for a sample dataset.")
    return -(-sum(lengths) // TRAIN_SHARDS) + max(lengths)


def build_sample(output=DEFAULT_OUTPUT, workers=None, progress=True):
    """Write the sample shards into `output` (replacing earlier sample shards there); return [(path, count)]."""
    workers = workers or os.cpu_count() or 1
    load_gpt2()
    tokenized = list(tokenize_docs(sample_docs(workers), workers))
    shard_size = train_shard_size(tokenized)
    return write_shards(tokenized, output, NAME, shard_size, VAL_TOKENS, overwrite=True, progress=progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"folder for the shards (default: {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--workers", type=positive_int, default=os.cpu_count() or 1, help="processes (default: all CPU cores)"
    )
    args = parser.parse_args(argv)
    return write_and_report(lambda: build_sample(args.output, args.workers))


if __name__ == "__main__":
    sys.exit(main())
