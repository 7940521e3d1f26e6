"""data/cached_fineweb10B.py against a stand-in for the Hub: an HTTP server on 127.0.0.1 that
answers huggingface_hub's HEAD and GET requests for /datasets/<repo>/resolve/main/<file>."""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "data" / "cached_fineweb10B.py"
sys.path.insert(0, str(REPO / "data"))

import cached_fineweb10B as dl  # noqa: E402
from shards import write_shard  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PREFIX = f"/datasets/{dl.REPO_ID}/resolve/main/"
VAL = dl.VAL_FILE


def train(i):
    return f"fineweb_train_{i:06d}.bin"


class FakeHub(BaseHTTPRequestHandler):
    """Serves the files of server.root the way the Hub serves a dataset repo's files."""

    def _answer(self, with_body):
        path = unquote(urlsplit(self.path).path)
        name = path[len(PREFIX) :] if path.startswith(PREFIX) else None
        self.server.requests.append((self.command, name or path))
        file = self.server.root / name if name and "/" not in name else None
        if file is None or not file.is_file():
            self.send_response(404)
            # What the Hub sends for a missing file in an existing repo.
            self.send_header("X-Error-Code", "EntryNotFound" if name else "RepoNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)

    def log_message(self, *args):
        pass  # keep the test output quiet


@pytest.fixture
def hub(tmp_path):
    """A fake Hub holding the val shard and train shards 1-3 (small, distinct contents)."""
    root = tmp_path / "hub"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [VAL, train(1), train(2), train(3)]:
        write_shard(root / name, rng.integers(0, 50257, size=int(rng.integers(500, 1500))))
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.root = root
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_script(args, endpoint, tmp_path, offline=False):
    env = {
        k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "hf_token")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HOME=str(tmp_path / "hf_home"),  # no user cache or token leaks in
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=60
    )


def gets(server):
    return sorted(name for method, name in server.requests if method == "GET")


def test_default_shards_cover_the_default_steps():
    """The download's numbers agree with each other and with train_gpt.py's rule for a shard's steps (that
    they are the record's is pinned in tests/test_record.py)."""
    import train_gpt as tg

    assert dl.SHARD_TOKENS == tg.FINEWEB_SHARD_TOKENS
    assert dl.STEPS_PER_SHARD == tg.steps_in_shard(dl.SHARD_TOKENS, dl.TOKENS_PER_STEP)
    assert dl.DEFAULT_TRAIN_SHARDS == -(-dl.RECORD_STEPS // dl.STEPS_PER_SHARD)  # enough shards, no more
    assert dl.wanted_files(2) == [VAL, train(1), train(2)]
    assert dl.DEFAULT_DIR == REPO / "data" / "fineweb10B"


def test_help_explains_n_in_tokens_and_steps(tmp_path):
    result = run_script(["--help"], "http://127.0.0.1:9", tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    facts = [
        f"{dl.SHARD_TOKENS:,}",
        f"{dl.TOKENS_PER_STEP:,}",
        f"{dl.STEPS_PER_SHARD} steps",
        f"{dl.RECORD_STEPS} steps",
        f"{dl.RECORD_STEPS * dl.TOKENS_PER_STEP / 1e9:.2f}B tokens",
        f"need {dl.DEFAULT_TRAIN_SHARDS} shards",
        str(dl.TOTAL_TRAIN_SHARDS),
    ]
    for fact in facts:
        assert fact in text, fact


@pytest.mark.parametrize("bad", ["104", "-1", "three"])
def test_bad_n_is_rejected(tmp_path, bad):
    result = run_script([bad, "--dir", tmp_path / "d"], "http://127.0.0.1:9", tmp_path)
    assert result.returncode == 2
    assert "N must be" in result.stderr


def test_downloads_then_skips_intact_shards(hub, tmp_path):
    out = tmp_path / "shards"
    first = run_script(["2", "--dir", out], hub.url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert gets(hub) == sorted([VAL, train(1), train(2)])  # train 3 is beyond N
    for name in [VAL, train(1), train(2)]:
        assert (out / name).read_bytes() == (hub.root / name).read_bytes()
    assert not (out / train(3)).exists()

    hub.requests.clear()
    again = run_script(["2", "--dir", out], hub.url, tmp_path)
    assert again.returncode == 0, again.stderr
    assert hub.requests == []  # intact shards are not even looked up
    assert "3 of 3 shards already present and intact" in again.stdout


def test_replaces_corrupt_and_truncated_shards(hub, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / VAL).write_bytes((hub.root / VAL).read_bytes())
    val_mtime = (out / VAL).stat().st_mtime_ns
    bad_magic = bytearray((hub.root / train(1)).read_bytes())
    bad_magic[0] ^= 0xFF
    (out / train(1)).write_bytes(bad_magic)
    (out / train(2)).write_bytes((hub.root / train(2)).read_bytes()[:-7])  # an interrupted copy
    (out / train(3)).write_bytes(b"<html>503 Service Unavailable</html>")  # a proxy's error page

    result = run_script(["3", "--dir", out], hub.url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert gets(hub) == sorted([train(1), train(2), train(3)])
    assert f"replacing {train(1)}" in result.stdout and "magic number" in result.stdout
    assert f"replacing {train(2)}" in result.stdout and "truncated" in result.stdout
    assert f"replacing {train(3)}" in result.stdout and "shorter than the 1024-byte shard header" in result.stdout
    for name in [VAL, train(1), train(2), train(3)]:
        assert (out / name).read_bytes() == (hub.root / name).read_bytes()
    assert (out / VAL).stat().st_mtime_ns == val_mtime


def test_offline_fails_clearly_unless_everything_is_present(hub, tmp_path):
    out = tmp_path / "shards"
    result = run_script(["1", "--dir", out], hub.url, tmp_path, offline=True)
    assert result.returncode == 1
    assert VAL in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr
    assert hub.requests == []
    assert not list(out.glob("*.bin"))

    for name in [VAL, train(1)]:
        (out / name).write_bytes((hub.root / name).read_bytes())
    assert run_script(["1", "--dir", out], hub.url, tmp_path, offline=True).returncode == 0


def test_unreachable_hub_fails_fast(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    result = run_script(["1", "--dir", tmp_path / "shards"], f"http://127.0.0.1:{port}", tmp_path)
    assert result.returncode == 1
    assert time.monotonic() - start < 20  # huggingface_hub alone would back off and retry for ~25 s
    assert "Cannot reach the Hub" in result.stderr and VAL in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_on_the_hub(hub, tmp_path):
    out = tmp_path / "shards"
    result = run_script(["5", "--dir", out], hub.url, tmp_path)
    assert result.returncode == 1
    assert f"{train(4)} from dataset {dl.REPO_ID}" in result.stderr and "was not found" in result.stderr
    assert "Traceback" not in result.stderr
    # What could be downloaded is kept, so a rerun with a smaller N has nothing to fetch.
    assert sorted(p.name for p in out.glob("*.bin")) == sorted([VAL, train(1), train(2), train(3)])


def test_corrupt_file_from_the_hub_is_rejected(hub, tmp_path):
    (hub.root / train(1)).write_bytes((hub.root / train(1)).read_bytes()[:-2])
    out = tmp_path / "shards"
    result = run_script(["1", "--dir", out], hub.url, tmp_path)
    assert result.returncode == 1
    assert f"The downloaded {train(1)} is not an intact shard" in result.stderr
    assert not (out / train(1)).exists()
    assert (out / VAL).exists()
