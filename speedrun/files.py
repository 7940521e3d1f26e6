"""Atomic file writes, shared by the repository's tools (train_gpt.py keeps its own: it stands alone)."""

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty file beside `path`; when the block ends normally it is renamed over `path`, and on
    any exception it is removed. A crash or a full disk never leaves half a file where a whole one is
    expected. The file is made with open(), so it gets the umask's permissions (tempfile's would be
    owner-only)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    temp.open("xb").close()
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    """Write bytes or text (UTF-8) to `path` through atomic_path."""
    with atomic_path(path) as temp:
        temp.write_bytes(data.encode() if isinstance(data, str) else data)
