"""The token shard format shared by every script in data/ and by train_gpt.py.

A shard is a header of SHARD_HEADER_INTS little-endian int32 values
(SHARD_MAGIC, SHARD_VERSION, token count, then zeros) followed by exactly
`count` little-endian uint16 GPT-2 token ids, and nothing else. train_gpt.py
keeps its own reader (it must not depend on data/); tests check the two agree.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for speedrun/
from speedrun.files import atomic_path  # noqa: E402

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INTS = 256
HEADER_DTYPE = np.dtype("<i4")
TOKEN_DTYPE = np.dtype("<u2")
SHARD_HEADER_BYTES = SHARD_HEADER_INTS * HEADER_DTYPE.itemsize
# The count lives in an int32 header slot.
MAX_SHARD_TOKENS = np.iinfo(HEADER_DTYPE).max


class ShardError(Exception):
    """A file that should be a shard is missing, is not one, or is damaged; the message names it."""


def shard_nbytes(count):
    """Exact size in bytes of a shard holding `count` tokens."""
    return SHARD_HEADER_BYTES + count * TOKEN_DTYPE.itemsize


def write_shard(path, tokens):
    """Write `tokens` (any integer sequence with values in [0, 65535]) as a shard at `path`.

    The file is written under a temporary name and renamed into place, so an interrupted
    write never leaves something at `path` that could pass for a shard.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"write_shard({path}): tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"write_shard({path}): tokens must be integers, got dtype {tokens.dtype}")
    if tokens.size > MAX_SHARD_TOKENS:
        raise ValueError(f"write_shard({path}): {tokens.size} tokens do not fit one shard (max {MAX_SHARD_TOKENS})")
    if tokens.size and tokens.dtype != TOKEN_DTYPE:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high > np.iinfo(TOKEN_DTYPE).max:
            raise ValueError(f"write_shard({path}): token ids must be in [0, 65535], got range [{low}, {high}]")
    header = np.zeros(SHARD_HEADER_INTS, dtype=HEADER_DTYPE)
    header[0] = SHARD_MAGIC
    header[1] = SHARD_VERSION
    header[2] = tokens.size
    with atomic_path(path) as temp, open(temp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(TOKEN_DTYPE, copy=False).tobytes())


def read_shard_header(path):
    """Validate the shard at `path` (magic, version, size matching the count) and return its token count.

    Raises ShardError naming the file, what was found and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise ShardError(
            f"Shard {path} does not exist. Check the path or glob, or create the shards first (see data/README.md)."
        )
    if not path.is_file():
        raise ShardError(
            f"{path} is not a regular file, so it cannot be a token shard. Point at the .bin shard files instead."
        )
    size = path.stat().st_size
    if size < SHARD_HEADER_BYTES:
        raise ShardError(
            f"{path} is {size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte shard header: it is not a shard or "
            "was truncated. Delete it and download or rebuild it."
        )
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(SHARD_HEADER_BYTES), dtype=HEADER_DTYPE)
    magic, version, count = (int(v) for v in header[:3])
    if magic != SHARD_MAGIC:
        raise ShardError(
            f"{path} starts with magic number {magic}, not {SHARD_MAGIC}: it is not a token shard in this format "
            "(or its header is corrupt). Delete it and download or rebuild it with the scripts in data/."
        )
    if version != SHARD_VERSION:
        raise ShardError(
            f"{path} has shard format version {version}, but only version {SHARD_VERSION} is supported. "
            "Rebuild it with the scripts in data/."
        )
    if count < 0:
        raise ShardError(
            f"{path} has a negative token count ({count}) in its header: the header is corrupt. "
            "Delete it and download or rebuild it."
        )
    expected = shard_nbytes(count)
    if size != expected:
        what = "truncated" if size < expected else "followed by extra bytes"
        raise ShardError(
            f"{path} is {size} bytes, but its header says it holds {count} tokens, which takes {expected} bytes: "
            f"the file is {what}. Delete it and download or rebuild it."
        )
    return count


def read_shard(path):
    """Validate the shard at `path` and return its tokens as a 1-D uint16 numpy array."""
    count = read_shard_header(path)
    return np.fromfile(path, dtype=TOKEN_DTYPE, count=count, offset=SHARD_HEADER_BYTES)
