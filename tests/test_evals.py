"""evals/: HellaSwag preparation and scoring, and sampling, with a tiny random checkpoint on the CPU.

Expectations come from the model's own logits, computed here one candidate or one step at a time,
and from tiktoken called directly; no network is used (downloads go to a server on 127.0.0.1)."""

import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import train_gpt as tg
from speedrun import checkpoints as ck
from speedrun import hellaswag as hs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "data"))

from evals import hellaswag, sample  # noqa: E402
from evals.common import run_main  # noqa: E402

EOT = 50256
# max_window_tokens=1024 gives the checkpoint a window of 8 blocks (4 in the short-window layers), so a
# candidate that straddles a 128-token block boundary inside a pack still sees its whole context and
# packing changes nothing but rounding.
TINY = ["--preset=tiny", "--model_dim=64", "--num_heads=1", "--head_dim=64", "--max_window_tokens=1024"]
# Random weights (the lm head and the blocks' output projections start at zero). A large head makes
# the log-likelihoods depend strongly on which tokens are scored (about -16 per token, not a
# near-uniform -10.8), and large attention weights make them depend on what a token can see, so
# scoring the wrong positions or letting packed candidates see each other changes the decisions.
PERTURB_STD = 0.05
HEAD_STD = 0.5
ATTN_STD = 0.2
# With this model, packed and unpacked scoring of one candidate differ by up to ~0.25 in log-likelihood
# (bf16 rounding at other positions); examples whose best two endings are closer than this are skipped.
MARGIN = 1.0
POOL_EXAMPLES = 8
SUBPROCESS_TIMEOUT_S = 120

RAW_EXAMPLES = [  # the rowanz/hellaswag format: every field of a validation line
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    },
    {
        "ind": 92,
        "activity_label": "Making a sandwich",
        "ctx_a": "[header] How to make a sandwich [title] Lay out two slices of bread.",
        "ctx_b": "",
        "ctx": "[header] How to make a sandwich [title] Lay out two slices of bread.",
        "split": "val",
        "split_type": "zeroshot",
        "label": 0,
        "endings": [
            "[step] Spread butter on one side of each slice.",
            "The bread flies away.",
            "[title] Paint the bread blue.",
            "Café owners sing loudly.",
        ],
        "source_id": "wikihow~1",
    },
    {
        "ind": 7,
        "activity_label": "Greeting",
        "ctx_a": "Hello",
        "ctx_b": "",
        "ctx": "Hello",
        "split": "val",
        "split_type": "indomain",
        "label": 1,
        "endings": ["world", "there", "again", "<|endoftext|>"],
        "source_id": "made-up",
    },
]


# every test here may tokenize: a tiktoken cache that needs no network (conftest.gpt2_files)
pytestmark = pytest.mark.usefixtures("gpt2_files")


@pytest.fixture(scope="module")
def encoding(gpt2_files):
    import tiktoken

    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    args = tg.parse_args(TINY)
    model = tg.build_model(args, "dense")
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = HEAD_STD if name == "lm_head_w" else ATTN_STD if ".attn." in name else PERTURB_STD
            p.add_((torch.randn(p.shape) * std).to(p.dtype))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(
        dict(
            format=ck.CHECKPOINT_FORMAT,
            model=model.state_dict(),
            hyperparameters=tg.asdict(args),
            step=args.num_iterations,
            run_id="test",
        ),
        path,
    )
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, args, window = ck.model_from_checkpoint(checkpoint, "cpu")
    return model, window


def call(module, *argv):
    """A script's main, in this process, as its command line would run it: (exit status)."""
    return run_main(module.main, [str(a) for a in argv])


def run_script(name, *argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(REPO / "evals" / name), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=env,
        cwd=REPO,
    )


def dead_url():
    """An http URL on a local port nobody listens on: connecting fails at once, as offline does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{hellaswag.RAW_NAME}"


# -----------------------------------------------------------------------------------------------------
# HellaSwag scoring


def ending_logliks(model, window, context, ending):
    """log p(ending token | everything before it) for one candidate scored alone: EOT + context + ending."""
    ids = torch.tensor([EOT, *context, *ending])
    logp = torch.log_softmax(hs.logits(model, ids, torch.tensor(window, dtype=torch.int32)), dim=-1)
    return [logp[pos - 1, ids[pos]].item() for pos in range(1 + len(context), len(ids))]


def best_and_margin(scores):
    order = sorted(range(len(scores)), key=lambda j: -scores[j])
    return order[0], scores[order[0]] - scores[order[1]]


@pytest.fixture(scope="module")
def decided(loaded):
    """Examples of random tokens with endings of different lengths, and the endings that the total and
    the mean log-likelihood pick when each candidate is scored alone: [(context, endings, by_sum,
    by_mean)]. Only examples whose best two endings are MARGIN apart by both measures; at least three
    where the measures pick different endings and one where they pick the same."""
    model, window = loaded
    rng = random.Random(0)
    pool, tries = [], 0
    while (
        len(pool) < POOL_EXAMPLES
        or sum(d[2] == d[3] for d in pool) in (0, len(pool))
        or sum(d[2] != d[3] for d in pool) < 3
    ):
        tries += 1
        assert tries < 4 * POOL_EXAMPLES, "few random examples qualify: the test's model is broken"
        context = [rng.randrange(EOT) for _ in range(rng.randint(5, 30))]
        endings = [[rng.randrange(EOT) for _ in range(n)] for n in rng.sample(range(1, 13), 4)]
        lls = [ending_logliks(model, window, context, e) for e in endings]
        by_sum, sum_margin = best_and_margin([sum(ll) for ll in lls])
        by_mean, mean_margin = best_and_margin([sum(ll) / len(ll) for ll in lls])
        if min(sum_margin, mean_margin) >= MARGIN:
            pool.append((context, endings, by_sum, by_mean))
    return pool


@pytest.fixture(scope="module")
def hellaswag_case(decided):
    """Four examples, labelled right by the total only (twice), by the mean only, and by neither
    measure, and their accuracies by hand: acc 0.5, acc_norm 0.25."""
    disagree = [d for d in decided if d[2] != d[3]]
    agree = next(d for d in decided if d[2] == d[3])
    cases = [*disagree[:3], agree]
    labels = [cases[0][2], cases[1][2], cases[2][3], (agree[2] + 1) % 4]
    examples = [(c[0], c[1], label) for c, label in zip(cases, labels)]
    acc = [c[2] == label for c, label in zip(cases, labels)]
    acc_norm = [c[3] == label for c, label in zip(cases, labels)]
    assert sum(acc) != sum(acc_norm)
    return examples, acc, acc_norm


def write_tokenized(path, examples):
    with open(path, "w") as f:
        for context, endings, label in examples:
            f.write(json.dumps({"context": context, "endings": endings, "label": label}) + "\n")
    return path


def test_every_decision_matches_candidates_scored_alone(loaded, decided):
    """Labelled with the by-hand picks of one measure, the scorer must reach accuracy 1 by that
    measure, so each of its decisions is checked, whether the candidates fill sequences of up to
    1,024 tokens (the model's longest), pack two or three to at most 100 tokens, or run one by one."""
    model, window = loaded
    same = sum(d[2] == d[3] for d in decided) / len(decided)
    for max_tokens in (1024, 100, 1):
        by_sum = hs.hellaswag_score(model, [(c, e, s) for c, e, s, _ in decided], window, "cpu", max_tokens)
        by_mean = hs.hellaswag_score(model, [(c, e, m) for c, e, _, m in decided], window, "cpu", max_tokens)
        assert by_sum == dict(n=len(decided), acc=1.0, acc_norm=same), max_tokens
        assert by_mean == dict(n=len(decided), acc=same, acc_norm=1.0), max_tokens


def test_acc_and_acc_norm_by_hand(loaded, hellaswag_case):
    model, window = loaded
    examples, acc, acc_norm = hellaswag_case
    assert hs.hellaswag_score(model, examples, window, "cpu") == dict(n=4, acc=0.5, acc_norm=0.25)
    assert (sum(acc) / 4, sum(acc_norm) / 4) == (0.5, 0.25)


def test_cli_scores_the_tokenized_file(checkpoint, hellaswag_case, tmp_path, capsys):
    examples, acc, acc_norm = hellaswag_case
    write_tokenized(tmp_path / hellaswag.TOKENS_NAME, examples)
    out = run_script("hellaswag.py", checkpoint, "--dir", tmp_path, "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["n"], result["acc"], result["acc_norm"]) == (4, sum(acc) / 4, sum(acc_norm) / 4)
    assert result["device"] == "cpu" and result["seconds"] > 0 and result["window_blocks"] == 8

    assert call(hellaswag, checkpoint, "--dir", tmp_path, "--device", "cpu", "--limit", 2) == 0
    text = capsys.readouterr().out
    assert f"acc         {sum(acc[:2]) / 2:.4f}" in text and f"acc_norm    {sum(acc_norm[:2]) / 2:.4f}" in text
    assert "examples    2 of" in text


def test_scoring_rejects_tokens_the_model_cannot_read(checkpoint, tmp_path, capsys):
    write_tokenized(tmp_path / hellaswag.TOKENS_NAME, [([1, 2], [[3], [4], [5], [60_000]], 0)])
    assert call(hellaswag, checkpoint, "--dir", tmp_path, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "example 1" in err and "vocabulary" in err and "--prepare --force" in err
    write_tokenized(tmp_path / hellaswag.TOKENS_NAME, [([7] * 1030, [[3], [4], [5], [6]], 0)])
    assert call(hellaswag, checkpoint, "--dir", tmp_path, "--device", "cpu") == 2
    assert "1032 tokens is longer than the 1024" in capsys.readouterr().err


# -----------------------------------------------------------------------------------------------------
# HellaSwag data: raw -> tokens, download, offline


def write_raw(path, examples=RAW_EXAMPLES):
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_tokens(encoding, examples=RAW_EXAMPLES):
    """The documented rule: the context as it stands; each ending with a leading space; all as text."""
    return [
        {
            "context": encoding.encode(e["ctx"], disallowed_special=()),
            "endings": [encoding.encode(" " + x, disallowed_special=()) for x in e["endings"]],
            "label": e["label"],
        }
        for e in examples
    ]


def test_prepare_tokenizes_a_raw_file(tmp_path, encoding, capsys):
    raw = write_raw(tmp_path / "raw.jsonl")
    out = tmp_path / "cache"
    assert call(hellaswag, "--prepare", "--raw", raw, "--dir", out) == 0
    tokens = out / hellaswag.TOKENS_NAME
    lines = read_lines(tokens)
    assert lines == expected_tokens(encoding)
    # GPT-2 ids known independently of tiktoken: "Hello" = 15496; " world" = 995, " there" = 612.
    assert lines[2]["context"] == [15496] and lines[2]["endings"][:2] == [[995], [612]]
    assert EOT not in lines[2]["endings"][3]  # "<|endoftext|>" in the text is text
    assert [label for *_, label in hs.read_hellaswag(tokens)] == [3, 0, 1]  # train_gpt.py reads it
    assert "3 examples (the full validation set has 10,042)" in capsys.readouterr().err

    before = tokens.read_bytes()
    write_raw(raw, RAW_EXAMPLES[:1])
    assert call(hellaswag, "--prepare", "--dir", out) == 0  # already prepared: kept
    assert call(hellaswag, "--prepare", "--raw", raw, "--dir", out) == 2  # would replace it
    assert "--force" in capsys.readouterr().err and tokens.read_bytes() == before
    assert call(hellaswag, "--prepare", "--raw", raw, "--dir", out, "--force") == 0
    assert read_lines(tokens) == expected_tokens(encoding, RAW_EXAMPLES[:1])
    assert sorted(p.name for p in out.iterdir()) == [hellaswag.TOKENS_NAME]  # no temporary files left


def test_prepare_uses_a_raw_file_placed_in_the_cache(tmp_path, encoding):
    write_raw(tmp_path / hellaswag.RAW_NAME)
    assert call(hellaswag, "--prepare", "--dir", tmp_path, "--url", dead_url()) == 0  # no download tried
    assert read_lines(tmp_path / hellaswag.TOKENS_NAME) == expected_tokens(encoding)


def test_prepare_names_the_bad_line(tmp_path, capsys):
    raw = write_raw(tmp_path / "raw.jsonl", [RAW_EXAMPLES[0], {**RAW_EXAMPLES[1], "endings": ["only one"]}])
    assert call(hellaswag, "--prepare", "--raw", raw, "--dir", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"--raw {raw}, line 2: expected a HellaSwag example" in err and "Traceback" not in err
    assert not (tmp_path / "out" / hellaswag.TOKENS_NAME).exists()


@pytest.fixture
def server(monkeypatch):
    """An HTTP server on 127.0.0.1 serving {path: bytes}; yields (base URL, that dict)."""
    pages = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    monkeypatch.setenv("no_proxy", "*")  # urllib would send 127.0.0.1 through a configured proxy
    monkeypatch.setenv("NO_PROXY", "*")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", pages
    httpd.shutdown()
    httpd.server_close()


def test_prepare_downloads_once(server, tmp_path, encoding, capsys):
    base, pages = server
    raw = write_raw(tmp_path / "served.jsonl").read_bytes()
    pages["/data/hellaswag_val.jsonl"] = raw
    out = tmp_path / "cache"
    assert call(hellaswag, "--prepare", "--dir", out, "--url", f"{base}/data/hellaswag_val.jsonl") == 0
    assert (out / hellaswag.RAW_NAME).read_bytes() == raw
    assert read_lines(out / hellaswag.TOKENS_NAME) == expected_tokens(encoding)
    assert "100%" in capsys.readouterr().err  # tqdm's bar reached the end
    pages.clear()  # a second preparation reads the cached raw file, never the server
    assert call(hellaswag, "--prepare", "--dir", out, "--force", "--url", f"{base}/data/hellaswag_val.jsonl") == 0
    assert sorted(p.name for p in out.iterdir()) == [hellaswag.RAW_NAME, hellaswag.TOKENS_NAME]


def test_a_download_that_is_not_hellaswag_is_not_kept(server, tmp_path, capsys):
    base, pages = server
    pages["/page"] = b"<html>Sign in to the network</html>\n"
    assert call(hellaswag, "--prepare", "--dir", tmp_path, "--url", f"{base}/page") == 2
    err = capsys.readouterr().err
    assert f"the file downloaded from {base}/page, line 1" in err and "check --url" in err
    assert list(tmp_path.iterdir()) == []
    assert call(hellaswag, "--prepare", "--dir", tmp_path, "--url", f"{base}/missing") == 2
    assert "HTTP Error 404" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_offline_download_says_how_to_place_the_file(checkpoint, tmp_path, capsys):
    url = dead_url()
    for argv in (["--prepare"], [checkpoint, "--device", "cpu"]):  # preparing, and scoring without data
        assert call(hellaswag, *argv, "--dir", tmp_path, "--url", url) == 2
        *progress, err = capsys.readouterr().err.splitlines()  # "downloading URL to FILE", then the error
        assert err.startswith(f"error: Could not download the HellaSwag validation set from {url}")
        assert str(tmp_path / hellaswag.RAW_NAME) in err and "--raw FILE" in err
        assert progress == [f"downloading {url} to {tmp_path / hellaswag.RAW_NAME}"]
        assert list(tmp_path.iterdir()) == []  # no partial file


# -----------------------------------------------------------------------------------------------------
# sampling


def sample_json(capsys, *argv):
    assert call(sample, *argv, "--device", "cpu", "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_greedy_is_the_argmax_of_the_logits(checkpoint, loaded, encoding):
    model, window = loaded
    prompt = encoding.encode("The meaning of life is")
    seq, expected = [EOT, *prompt], []
    for _ in range(10):
        token = int(hs.logits(model, torch.tensor(seq), torch.tensor(window, dtype=torch.int32))[-1].argmax())
        if token == EOT:
            break
        expected.append(token)
        seq.append(token)
    out = run_script("sample.py", checkpoint, "--prompt", "The meaning of life is", "--tokens", 10, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["prompt_tokens"] == prompt and len(result["samples"]) == 1
    assert result["samples"][0]["tokens"] == expected and len(expected) == 10
    assert result["samples"][0]["text"] == encoding.decode(prompt + expected)


def test_sampling_is_deterministic_given_a_seed(checkpoint, loaded, capsys):
    model, window = loaded
    argv = [
        checkpoint,
        "--prompt",
        "Once upon a time",
        "--tokens",
        6,
        "--temperature",
        1.0,
        "--top_k",
        20,
        "--samples",
        2,
    ]
    first = sample_json(capsys, *argv, "--seed", 7)
    assert sample_json(capsys, *argv, "--seed", 7) == first
    other = sample_json(capsys, *argv, "--seed", 8)
    tokens = [s["tokens"] for s in first["samples"]]
    assert all(len(t) == 6 for t in tokens) and tokens[0] != tokens[1] != other["samples"][0]["tokens"]
    for t in tokens:  # every draw is among the 20 most likely tokens at its step
        for i, token in enumerate(t):
            logits = hs.logits(
                model, torch.tensor([EOT, *first["prompt_tokens"], *t[:i]]), torch.tensor(window, dtype=torch.int32)
            )[-1]
            assert logits[token] >= torch.topk(logits, 20).values[-1]  # ties with the 20th stay in


def test_sampling_text_output(checkpoint, capsys):
    assert (
        call(
            sample,
            checkpoint,
            "--prompt",
            "Hello",
            "--tokens",
            3,
            "--samples",
            2,
            "--temperature",
            0.5,
            "--device",
            "cpu",
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out.startswith("--- sample 1 of 2\nHello") and "--- sample 2 of 2\nHello" in out
    assert "pass --seed" in err  # no --seed: the one drawn is printed


def test_sampling_longer_than_the_model_is_refused(checkpoint, capsys):
    assert call(sample, checkpoint, "--prompt", "Hello", "--tokens", 1023, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "1025 in all, more than the 1024" in err and "at most 1022 tokens" in err


# -----------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("module", [hellaswag, sample])
def test_missing_and_foreign_checkpoints(module, tmp_path, capsys):
    assert call(module, tmp_path / "missing.pt", "--device", "cpu") == 2
    assert f"checkpoint {tmp_path / 'missing.pt'} does not exist" in capsys.readouterr().err
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    assert call(module, tmp_path / "notes.pt", "--device", "cpu") == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert call(module, tmp_path / "other.pt", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "is not a train_gpt.py checkpoint" in err and err.count("\n") == 1


def test_bad_options(checkpoint, capsys):
    for module, argv in [
        (sample, ["--tokens", "0"]),
        (sample, ["--temperature", "-1"]),
        (hellaswag, ["--limit", "x"]),
        (hellaswag, ["--force"]),
    ]:
        with pytest.raises(SystemExit) as exit_:
            call(module, checkpoint, *argv)
        assert exit_.value.code == 2, argv
        assert "error:" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert call(sample, checkpoint, "--device", "cuda") == 2
        assert "torch sees no CUDA GPU" in capsys.readouterr().err
