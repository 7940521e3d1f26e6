"""The log's line formats and the run files: exact formats, flushed as written, never overwritten.
(The record's published line is reproduced in test_record.py.)"""

import json

import pytest

import train_gpt as tg


def test_line_formats_are_the_speedruns():
    # 6 decimals of loss, whole ms of time, 2 decimals of ms per step (step 0 divides by 1)
    assert tg.format_val_line(0, 1000, 10.8258, 0.0) == "step:0/1000 val_loss:10.825800 train_time:0ms step_avg:0.00ms"
    assert (
        tg.format_val_line(1000, 1000, 3.12345678, 123456.7)
        == "step:1000/1000 val_loss:3.123457 train_time:123457ms step_avg:123.46ms"
    )
    assert tg.format_train_line(1, 1000, 251.24) == "step:1/1000 train_time:251ms step_avg:251.24ms"
    assert tg.format_train_line(3, 1000, 1000.0) == "step:3/1000 train_time:1000ms step_avg:333.33ms"


def test_run_log_files(tmp_path):
    folder = tmp_path / "my_record"
    log = tg.RunLog(folder, "run1", console=False)
    txt, js = folder / "run1.txt", folder / "run1.json"
    assert json.loads(js.read_text())["status"] == "running"
    env = {"python": "3.11.7 (main)", "torch": "2.11.0", "cuda": "13.0", "nvidia-smi": "line1\nline2", "world_size": 8}
    log.set_header("print('source')", env, {"num_iterations": 3, "seed": 4})
    log.log_val(0, 3, 10.8, 0.0)
    # flushed as written: readable before the run ends
    assert txt.read_text().splitlines()[-1] == "step:0/3 val_loss:10.800000 train_time:0ms step_avg:0.00ms"
    for s in (1, 2, 3):
        log.log_train(s, 3, 100.0 * s)
    log.log_val(3, 3, 7.5, 300.0)
    log.log_memory(1234, 2345)
    log.finish("finished")
    lines = txt.read_text().splitlines()
    # the speedrun's header, then ours
    assert lines[:7] == [
        "print('source')",
        tg.LOG_RULE,
        "Running Python 3.11.7 (main)",
        "Running PyTorch 2.11.0 compiled for CUDA 13.0",
        "line1",
        "line2",
        tg.LOG_RULE,
    ]
    assert lines[7] == "world_size: 8"
    assert "  num_iterations = 3" in lines and "  seed = 4" in lines
    assert lines[-6:] == [
        "step:0/3 val_loss:10.800000 train_time:0ms step_avg:0.00ms",
        "step:1/3 train_time:100ms step_avg:100.00ms",
        "step:2/3 train_time:200ms step_avg:100.00ms",
        "step:3/3 train_time:300ms step_avg:100.00ms",
        "step:3/3 val_loss:7.500000 train_time:300ms step_avg:100.00ms",
        "peak memory allocated: 1234 MiB reserved: 2345 MiB",
    ]
    summary = json.loads(js.read_text())
    assert summary["status"] == "finished" and summary["record"] == "my_record"
    assert summary["final_val_loss"] == 7.5 and summary["train_time_ms"] == 300.0
    assert summary["step_avg_ms"] == 100.0 and summary["steps_done"] == 3 and summary["num_iterations"] == 3
    assert summary["val_losses"] == [
        dict(step=0, val_loss=10.8, train_time_ms=0.0),
        dict(step=3, val_loss=7.5, train_time_ms=300.0),
    ]
    assert (summary["peak_memory_allocated_mib"], summary["peak_memory_reserved_mib"]) == (1234, 2345)
    assert summary["log_file"] == "run1.txt" and summary["hyperparameters"] == {"num_iterations": 3, "seed": 4}


def test_run_logs_are_never_overwritten(tmp_path):
    tg.RunLog(tmp_path, "same", console=False).finish("finished")
    before = (tmp_path / "same.txt").read_bytes(), (tmp_path / "same.json").read_bytes()
    with pytest.raises(tg.UserError, match="already exists; run logs are never overwritten"):
        tg.RunLog(tmp_path, "same", console=False)
    assert ((tmp_path / "same.txt").read_bytes(), (tmp_path / "same.json").read_bytes()) == before


def test_disabled_log_writes_nothing(tmp_path):
    log = tg.RunLog(tmp_path / "x", "r", enabled=False)
    log.write("hello")
    log.log_val(1, 1, 3.0, 1.0)
    log.finish("finished")
    assert not (tmp_path / "x").exists()


def test_unwritable_records_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(tg.UserError, match=f"cannot write the run log in {blocker}/rec: .* writable --records_dir"):
        tg.RunLog(blocker / "rec", "r", console=False)
