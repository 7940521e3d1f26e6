"""train_gpt's shard reader and loader against the spec's data rules. The record's figures (190 steps
per FineWeb shard, 30 shards for 5590 steps) are pinned in test_record.py; here the numbers are the
script's (its constants, Hyperparameters and the tiny preset)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import synthetic_tokens, write_test_shard

import train_gpt as tg
from speedrun import hellaswag as hs


def test_load_shard_round_trip(tmp_path):
    tokens = synthetic_tokens(5000)
    path = write_test_shard(tmp_path / "a.bin", tokens)
    assert tg.read_shard_header(path) == 5000
    loaded = tg.load_shard(path)
    assert loaded.dtype == torch.uint16 and torch.equal(loaded.long(), torch.from_numpy(tokens.astype(np.int64)))


def corrupt(tmp_path, kind):
    path = write_test_shard(tmp_path / f"{kind}.bin", synthetic_tokens(1000))
    raw = bytearray(path.read_bytes())
    if kind == "magic":
        raw[0:4] = (12345).to_bytes(4, "little")
    elif kind == "version":
        raw[4:8] = (7).to_bytes(4, "little")
    elif kind == "truncated":
        raw = raw[:-10]
    elif kind == "trailing":
        raw += b"\0\0"
    elif kind == "short":
        raw = raw[:100]
    path.write_bytes(bytes(raw))
    return path


SHARD_BYTES = tg.SHARD_HEADER_BYTES + 2 * 1000  # corrupt()'s shards hold 1000 tokens


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("magic", f"header magic is 12345, expected {tg.SHARD_MAGIC}"),
        ("version", f"shard version 7, expected {tg.SHARD_VERSION}"),
        ("truncated", f"header says 1000 tokens ({SHARD_BYTES} bytes) but the file has {SHARD_BYTES - 10} bytes"),
        ("trailing", f"but the file has {SHARD_BYTES + 2} bytes"),
        ("short", f"fewer than the {tg.SHARD_HEADER_BYTES}-byte header"),
    ],
)
def test_bad_shards_are_named(tmp_path, kind, needle):
    path = corrupt(tmp_path, kind)
    for reader in (tg.read_shard_header, tg.load_shard):
        with pytest.raises(tg.UserError) as err:
            reader(path)
        assert str(path) in str(err.value) and needle in str(err.value)
    with pytest.raises(tg.UserError, match="cannot read shard"):
        tg.read_shard_header(tmp_path / "missing.bin")


def spec_steps_in_shard(num_tokens: int, step_tokens: int) -> int:
    """Steps the loader takes from one shard: a step at pos needs pos + step_tokens + 1 < num_tokens."""
    steps, pos = 0, 0
    while pos + step_tokens + 1 < num_tokens:
        steps, pos = steps + 1, pos + step_tokens
    return steps


def stream(files, seq_len, seqs, rank, world, steps):
    it = tg.token_batches(files, seq_len, seqs, rank, world, torch.device("cpu"))
    return [next(it) for _ in range(steps)]


def test_rank_slicing_and_dtypes(tmp_path):
    tokens = synthetic_tokens(10_000, seed=3)
    files = [write_test_shard(tmp_path / "s1.bin", tokens)]
    L, R = 128, 4  # 4 ranks of one 128-token sequence
    for rank in range(R):
        for step, batch in enumerate(stream(files, L, R, rank, R, 3)):
            ((inputs, targets),) = batch
            assert inputs.dtype == torch.int32 and targets.dtype == torch.int64
            start = step * R * L + rank * L  # pos + r * seq_len, pos advancing by R * L
            assert inputs.tolist() == tokens[start : start + L].tolist()
            assert targets.tolist() == tokens[start + 1 : start + L + 1].tolist()


def test_shard_rollover_drops_the_tail(tmp_path):
    L, R = 100, 2
    # 450 tokens: steps at pos 0 and 200 (200 + 200 + 1 < 450); pos 400 would need 601 -> next shard
    a = np.arange(450, dtype=np.uint16)
    b = np.arange(1000, 1700, dtype=np.uint16)
    files = [write_test_shard(tmp_path / "a.bin", a), write_test_shard(tmp_path / "b.bin", b)]
    assert tg.steps_in_shard(450, 200) == 2
    firsts = [batch[0][0][0].item() for batch in stream(files, L, R, 0, 1, 5)]
    assert firsts == [0, 200, 1000, 1200, 1400]
    # pos + step + 1 >= length moves on: 401 tokens give one step only, 402 give two
    assert tg.steps_in_shard(401, 200) == 1 and tg.steps_in_shard(402, 200) == 2
    assert tg.steps_in_shard(200, 200) == 0


def test_steps_in_shard_counts_like_the_loader():
    for step_tokens in (1, 7, 100, 128):
        for n in range(0, 1000, 3):
            assert tg.steps_in_shard(n, step_tokens) == spec_steps_in_shard(n, step_tokens), (n, step_tokens)
    args = tg.Hyperparameters()  # a full FineWeb shard at the default step
    step_tokens = args.seqs_per_step * args.train_seq_len
    full = tg.FINEWEB_SHARD_TOKENS
    assert tg.steps_in_shard(full, step_tokens) == spec_steps_in_shard(full, step_tokens)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_any_world_size_sees_the_same_tokens(tmp_path, world):
    """Micro-batch j of rank r at world size w is rank r * (8 / w) + j at world size 8."""
    files = [write_test_shard(tmp_path / f"s{i}.bin", synthetic_tokens(3000, seed=i)) for i in range(3)]
    L, S, steps = 64, 8, 12  # spans all three shards
    reference = [stream(files, L, S, r, 8, steps) for r in range(8)]
    per_rank = S // world
    for rank in range(world):
        for step, batch in enumerate(stream(files, L, S, rank, world, steps)):
            assert len(batch) == per_rank
            for j, (inputs, targets) in enumerate(batch):
                ((want_in, want_tg),) = reference[rank * per_rank + j][step]
                assert torch.equal(inputs, want_in) and torch.equal(targets, want_tg)


def data_args(tmp_path, **kw):
    args = tg.parse_args(
        [
            "--preset=tiny",
            f"--train_files={tmp_path}/train_*.bin",
            f"--val_files={tmp_path}/val_*.bin",
            *(f"--{k}={v}" for k, v in kw.items()),
        ]
    )
    return args


def test_check_data_counts_steps(tmp_path):
    tiny = data_args(tmp_path)
    step, val_step = tiny.seqs_per_step * tiny.train_seq_len, tiny.seqs_per_step * tiny.val_seq_len
    val_steps = tiny.val_tokens // val_step
    for i in range(2):
        write_test_shard(tmp_path / f"train_{i}.bin", synthetic_tokens(5 * step + 2, seed=i))  # 5 steps each
    write_test_shard(tmp_path / "val_0.bin", synthetic_tokens(val_steps * val_step + 2))  # just enough
    tg.check_data(data_args(tmp_path, num_iterations=10))
    with pytest.raises(tg.UserError) as err:
        tg.check_data(data_args(tmp_path, num_iterations=11))
    msg = str(err.value)
    assert "has 2 shard(s) with tokens for 10 steps" in msg and f"11 x {step:,} = {11 * step:,} tokens" in msg
    with pytest.raises(tg.UserError, match=f"needs {val_steps + 1}"):
        tg.check_data(data_args(tmp_path, num_iterations=10, val_tokens=(val_steps + 1) * val_step))


def fineweb_shards_needed(args) -> int:
    """Full FineWeb train shards a run of args reads."""
    per_shard = spec_steps_in_shard(tg.FINEWEB_SHARD_TOKENS, args.seqs_per_step * args.train_seq_len)
    return math.ceil(args.num_iterations / per_shard)


def check_download_hint(script) -> None:
    """No FineWeb shards: the error says how many to download for the default run."""
    with pytest.raises(script.UserError) as err:
        script.check_data(script.parse_args(["--device=cpu", "--train_files=data/fineweb10B/nothing_*.bin"]))
    assert f"python data/cached_fineweb10B.py {fineweb_shards_needed(script.Hyperparameters())}" in str(err.value)


def test_check_data_names_missing_and_bad_files(tmp_path):
    with pytest.raises(tg.UserError) as err:
        tg.check_data(tg.parse_args(["--device=cpu", f"--train_files={tmp_path}/none_*.bin"]))
    assert f"no files match --train_files={tmp_path}/none_*.bin" in str(err.value)
    assert "python data/cached_fineweb10B.py" not in str(err.value)  # not the fineweb path: generic hint
    check_download_hint(tg)
    corrupt(tmp_path, "magic").rename(tmp_path / "train_0.bin")
    with pytest.raises(tg.UserError, match="train_0.bin is not a token shard"):
        tg.check_data(data_args(tmp_path))


def test_shortfall_of_fineweb_shards_names_the_download(tmp_path):
    """One fineweb-sized shard too few for the default run: the message says how many are needed."""
    folder = tmp_path / "data" / "fineweb10B"
    folder.mkdir(parents=True)
    header = np.zeros(tg.SHARD_HEADER_INTS, dtype="<i4")
    header[:3] = (tg.SHARD_MAGIC, tg.SHARD_VERSION, tg.FINEWEB_SHARD_TOKENS)
    args = tg.parse_args(["--device=cpu", f"--train_files={folder}/fineweb_train_*.bin"])
    shards = fineweb_shards_needed(args) - 1
    for i in range(1, shards + 1):
        with open(folder / f"fineweb_train_{i:06d}.bin", "wb") as f:
            f.write(header.tobytes())
            f.truncate(tg.SHARD_HEADER_BYTES + 2 * tg.FINEWEB_SHARD_TOKENS)  # sparse: right size, no disk used
    step = args.seqs_per_step * args.train_seq_len
    with pytest.raises(tg.UserError) as err:
        tg.check_data(args)
    msg = str(err.value)
    available = shards * spec_steps_in_shard(tg.FINEWEB_SHARD_TOKENS, step)
    assert f"{shards} shard(s) with tokens for {available} steps" in msg
    N = args.num_iterations
    assert f"{N} x {step:,} = {N * step:,} tokens" in msg
    assert f"python data/cached_fineweb10B.py {fineweb_shards_needed(args)}" in msg


def test_hellaswag_file_is_checked_before_training(tmp_path):
    """Token ids outside the vocabulary or candidates longer than the model's sequences are found
    when the file is read (at startup), not by the model after the run."""
    good = dict(context=[5, 6], endings=[[1], [2], [3], [4]], label=2)
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(good) + "\n")
    assert hs.read_hellaswag(path, vocab_size=10, max_len=4) == [([5, 6], [[1], [2], [3], [4]], 2)]
    with pytest.raises(tg.UserError, match=r"hs.jsonl, line 1: a token id outside the vocabulary \(0\.\.5\)"):
        hs.read_hellaswag(path, vocab_size=6)
    with pytest.raises(tg.UserError, match=r"line 1: 4 tokens, more than the model's longest sequence \(3\)"):
        hs.read_hellaswag(path, vocab_size=10, max_len=3)
