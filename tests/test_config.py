"""The hyperparameters, presets and command line. The record's values are pinned in test_record.py;
here every expectation comes from Hyperparameters, PRESETS and the script's constants."""

import re
import subprocess
import sys
import types
from dataclasses import fields
from typing import get_args, get_origin, get_type_hints

import pytest
import torch
from conftest import REPO, cpu_env

import train_gpt as tg

RECORD = tg.Hyperparameters()
TINY = tg.PRESETS["tiny"]


def type_text(typ) -> str:
    """How --help names a field's type, written from the command line's rules: `int`, `int or none`,
    `float,float` for a pair."""
    optional = get_origin(typ) is types.UnionType
    if optional:
        (typ,) = [t for t in get_args(typ) if t is not type(None)]
    text = ",".join(t.__name__ for t in get_args(typ)) if get_origin(typ) is tuple else typ.__name__
    return text + (" or none" if optional else "")


def check_every_field_has_a_command_line(script) -> None:
    """Every field: its type is one the command line handles, its default survives format -> parse,
    and --help shows `--name=value (type): help`."""
    hints = get_type_hints(script.Hyperparameters)
    defaults = script.Hyperparameters()
    help_lines = script.help_text().splitlines()
    for f in fields(script.Hyperparameters):
        typ, default = hints[f.name], getattr(defaults, f.name)
        script.field_type(typ)  # raises TypeError for a type the command line cannot parse
        text = script.format_value(default)
        parsed = script.parse_value(f.name, text, typ)
        assert parsed == default and type(parsed) is type(default), (f.name, text, parsed)
        assert f"  --{f.name}={text} ({type_text(typ)}): {f.metadata['help']}" in help_lines, f.name


def test_every_field_has_a_command_line():
    check_every_field_has_a_command_line(tg)


def test_overrides_are_typed():
    args = tg.parse_args(
        ["--num_iterations=100", "--cooldown_frac=0.5", "--compile=false", "--train_files=x/*.bin", "--seed=7"]
    )
    assert args.num_iterations == 100 and isinstance(args.num_iterations, int)
    assert args.cooldown_frac == 0.5 and args.compile is False
    assert args.train_files == "x/*.bin" and args.seed == 7
    assert tg.parse_args(["--seed=none"]).seed is None


@pytest.mark.parametrize("text, value", [("true", True), ("false", False)])
def test_booleans_are_true_or_false(text, value):
    assert tg.parse_value("compile", text, bool) is value


@pytest.mark.parametrize("text", ["1", "0", "yes", "no", "on", "off", "TRUE", "False", ""])
def test_other_boolean_spellings_are_errors(text):
    with pytest.raises(tg.UserError, match=f"option --compile={text!r}: expected true or false"):
        tg.parse_value("compile", text, bool)


@pytest.mark.parametrize(
    "typ, text, value",
    [
        (float | None, "none", None),
        (float | None, "0.5", 0.5),
        (float | None, "-2e-3", -2e-3),
        (int | None, "7", 7),
        (tuple[float, float], "0.9,0.95", (0.9, 0.95)),
        (tuple[int, int, int], "1,2,3", (1, 2, 3)),
        (tuple[float, float] | None, "none", None),
        (tuple[float, float] | None, "0.8,0.95", (0.8, 0.95)),
    ],
)
def test_parse_value_handles_optionals_and_tuples(typ, text, value):
    parsed = tg.parse_value("x", text, typ)
    assert parsed == value and type(parsed) is type(value)
    if value is not None:
        assert tg.parse_value("x", tg.format_value(value), typ) == value  # and back


@pytest.mark.parametrize(
    "typ, text, expected",
    [
        (float | None, "abc", "expected a finite number (or none)"),
        (float, "inf", "expected a finite number"),
        (float, "nan", "expected a finite number"),
        (int, "2.5", "expected an integer"),
        (tuple[float, float], "0.9", "expected 2 comma-separated values, each a finite number"),
        (tuple[float, float], "0.9,0.95,0.99", "expected 2 comma-separated values"),
        (tuple[float, float], "0.9,", "expected 2 comma-separated values"),
        (tuple[float, float], "a,b", "expected 2 comma-separated values, each a finite number"),
        (tuple[int, int], "1,2.5", "each an integer"),
        (tuple[float, float] | None, "1", "expected 2 comma-separated values, each a finite number (or none)"),
    ],
)
def test_bad_values_name_the_option(typ, text, expected):
    with pytest.raises(tg.UserError) as err:
        tg.parse_value("adam_betas", text, typ)
    assert str(err.value).startswith(f"option --adam_betas={text!r}: ") and expected in str(err.value)


@pytest.mark.parametrize(
    "typ",
    [list[int], dict, list, bytes, complex, list[int] | None, int | str, int | str | None, tuple[int, float]],
    ids=str,
)
def test_unsupported_field_types_are_type_errors(typ):
    with pytest.raises(TypeError, match="unsupported field type"):
        tg.field_type(typ)


@pytest.mark.parametrize(
    "value, text",
    [(None, "none"), (True, "true"), (False, "false"), (3, "3"), (0.5, "0.5"), (1 / 320, "0.003125"),
     ((0.9, 0.95), "0.9,0.95"), ("a/b_*.bin", "a/b_*.bin")],
)  # fmt: skip
def test_format_value(value, text):
    assert tg.format_value(value) == text


def test_tiny_preset_applies_first_then_overrides():
    args = tg.parse_args(["--num_iterations=5", "--preset=tiny"])
    assert args.preset == "tiny" and args.num_iterations == 5
    for f in fields(tg.Hyperparameters):
        if f.name not in ("num_iterations", "preset"):
            assert getattr(args, f.name) == TINY.get(f.name, getattr(RECORD, f.name)), f.name
    # the tiny model keeps the record's layer structure and can split its steps over two processes
    assert args.num_layers == tg.RECORD_NUM_LAYERS and args.seqs_per_step % 2 == 0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--num_iteration=5"], "unknown option --num_iteration. Did you mean --num_iterations?"),
        (["--num_iterations=abc"], "--num_iterations='abc': expected an integer"),
        (["--compile=maybe"], "expected true or false"),
        (["--preset=huge"], f"--preset='huge': expected one of {', '.join(tg.PRESETS)}"),
        (
            [f"--val_tokens={RECORD.seqs_per_step * RECORD.val_seq_len + 1}"],
            f"must be a multiple of seqs_per_step * val_seq_len = {RECORD.seqs_per_step * RECORD.val_seq_len}",
        ),
        ([f"--train_seq_len={tg.ATTN_BLOCK_SIZE + 1}"], "multiple of the attention block"),
        ([f"--num_layers={tg.RECORD_NUM_LAYERS - 4}"], f"defined for {tg.RECORD_NUM_LAYERS} layers"),
        (["--ns_impl=cuda"], "expected auto, triton or torch"),
        (["--num_iterations"], "options are written --name=value"),
        (["--num_iterations", "5"], "options are written --name=value"),
        (["positional"], "options are written --name=value"),
        (["--num_iterations=0"], "must be positive"),
        (["--checkpoint_every=-1"], "--checkpoint_every=-1: must be >= 0"),
        (["--adam_init=ones"], "--adam_init='ones': expected zero or grad"),
        (["--adam_eps_max=1e-3", "--adam_eps_start_frac=0.9", "--adam_eps_end_frac=0.5"], "need 0 <= start < end <= 1"),
        (["--adam_eps_max=1e-3", "--adam_eps_growth=1"], "overflows; use a rate below"),
    ],
)
def test_bad_options_are_named(argv, needle):
    with pytest.raises(tg.UserError) as err:
        tg.parse_args(argv)
    assert needle in str(err.value)


def test_world_size_must_divide_sequences(monkeypatch):
    for argv in (["--preset=tiny"], ["--device=cpu"]):
        args = tg.parse_args(argv)
        for ws in range(1, 2 * args.seqs_per_step + 1):
            monkeypatch.setenv("WORLD_SIZE", str(ws))
            if args.seqs_per_step % ws == 0:
                assert tg.resolve_runtime(args).world_size == ws
            else:
                valid = ", ".join(str(n) for n in range(1, args.seqs_per_step + 1) if args.seqs_per_step % n == 0)
                message = f"{ws} processes (WORLD_SIZE) do not divide --seqs_per_step={args.seqs_per_step}"
                with pytest.raises(tg.UserError, match=re.escape(message)) as e:
                    tg.resolve_runtime(args)
                assert f"Start {valid} processes" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU rules")
def test_device_rules_without_gpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(tg.UserError, match="no CUDA GPU is visible"):
        tg.resolve_runtime(tg.parse_args([]))
    with pytest.raises(tg.UserError, match="--device=cuda but torch sees no CUDA GPU"):
        tg.resolve_runtime(tg.parse_args(["--preset=tiny", "--device=cuda"]))
    assert tg.resolve_runtime(tg.parse_args(["--preset=tiny"])).device.type == "cpu"
    assert tg.resolve_runtime(tg.parse_args(["--device=cpu"])).device.type == "cpu"


def run_script(*argv, cwd=REPO):
    return subprocess.run(
        [sys.executable, str(REPO / "train_gpt.py"), *argv],
        cwd=cwd,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_option_and_the_presets_and_exits_zero(tmp_path):
    out = run_script("--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == tg.help_text() + "\n"
    lines = out.stdout.splitlines()
    for f in fields(tg.Hyperparameters):
        assert sum(line.startswith(f"  --{f.name}=") for line in lines) == 1, f.name
    # each preset on one line as the options it sets, in the command line's own syntax
    for name, overrides in tg.PRESETS.items():
        (line,) = [line for line in lines if line.startswith(f"  {name}: ")]
        settings = line.removeprefix(f"  {name}: ")
        if overrides:
            assert settings.split(" ") == [f"--{k}={tg.format_value(v)}" for k, v in overrides.items()]
            # and as options they give the preset's configuration
            assert vars(tg.parse_args(settings.split(" "))) == {
                **vars(tg.parse_args([f"--preset={name}"])),
                "preset": "record",
            }
        else:
            assert settings == "the record"
    assert list(tmp_path.iterdir()) == []  # wrote nothing


def test_user_errors_are_one_paragraph_and_exit_2(tmp_path):
    out = run_script("--bogus=1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown option --bogus.") and "Traceback" not in out.stderr
    out = run_script(cwd=tmp_path)  # the record configuration without a GPU
    assert out.returncode == 2 and "no CUDA GPU is visible" in out.stderr and "Traceback" not in out.stderr


def test_import_has_no_side_effects(tmp_path):
    code = (
        "import sys; sys.argv = ['x', '--bogus']; import torch, train_gpt; "
        "import torch.distributed as dist; "
        "print(torch.cuda.is_initialized(), dist.is_initialized())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=cpu_env(PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    assert list(tmp_path.iterdir()) == []


def test_resume_none_is_no_resume():
    assert tg.parse_args(["--resume=none"]).resume is None
