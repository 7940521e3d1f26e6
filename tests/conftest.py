import os
import sys
from pathlib import Path

import pytest

# Tests never reach the Hugging Face Hub; huggingface_hub reads this at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def synthetic_tokens(n: int, seed: int = 0, doc_len: int = 300, vocab: int = 1000):
    """Token ids whose documents start with <|endoftext|> and average doc_len tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n).astype(np.uint16)
    tokens[rng.random(n) < 1 / doc_len] = 50256
    tokens[0] = 50256
    return tokens


def write_test_shard(path, tokens) -> Path:
    """A shard in the format of the record's spec, written independently of the code under test."""
    import numpy as np

    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(tokens))
    path = Path(path)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())
    return path


@pytest.fixture
def tiny_data(tmp_path):
    """A val shard and three train shards for the tiny preset; returns (train glob, val glob)."""
    write_test_shard(tmp_path / "val_000000.bin", synthetic_tokens(20_000, seed=1))
    for i in range(1, 4):
        write_test_shard(tmp_path / f"train_{i:06d}.bin", synthetic_tokens(12_000, seed=10 + i))
    return str(tmp_path / "train_*.bin"), str(tmp_path / "val_*.bin")
