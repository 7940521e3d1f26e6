"""The benchmark scripts run: the node check's smoke mode end to end (its GPU mode is the same code)."""

import re
import subprocess
import sys

from conftest import REPO, cpu_env


def run_check(*argv):
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), *argv],
        cwd=REPO,
        env=cpu_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gpu_check_smoke_writes_one_report(tmp_path):
    out = tmp_path / "check"
    proc = run_check("--smoke", f"--out={out}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (out / "gpu_check.md").read_text()
    assert "Smoke run on CPU" in report and "| torch | " in report and "| coordinate-descent tuning | off |" in report
    for part, file in [
        ("gpu-marked tests", "gpu_tests.txt"),
        ("Newton-Schulz benchmark", "newton_schulz.txt"),
        ("record configuration, 1 GPU", "train.txt"),
    ]:
        assert f"| {part} | passed" in report, part
        assert (out / file).read_text().strip() and (out / file).read_text().rstrip() in report
    assert "skipped" in report.split("| gpu-marked tests |")[1].splitlines()[0]  # no GPU: the gpu tests skip
    train = (out / "train.txt").read_text()
    assert "ms per step, steps 2-3" in train and "final val loss" in train
    # what --ns_impl=auto timed and chose, and the run's whole log kept beside the table
    assert re.search(
        r"^\| Newton-Schulz \(what --ns_impl timed and chose\) +\| torch \(--ns_impl=auto\) \|$", train, re.M
    )
    log = (out / "train.log.txt").read_text()
    assert log.startswith((REPO / "train_gpt.py").read_text()) and "newton_schulz: torch (--ns_impl=auto)" in log
    assert "workload" in (out / "newton_schulz.txt").read_text()


def test_gpu_check_refuses_to_overwrite_and_needs_a_gpu(tmp_path):
    (tmp_path / "old.md").write_text("keep")
    proc = run_check(f"--out={tmp_path}", "--smoke")
    assert proc.returncode == 2 and "results are never overwritten" in proc.stderr
    assert (tmp_path / "old.md").read_text() == "keep"
    proc = run_check(f"--out={tmp_path / 'new'}")
    assert proc.returncode == 2 and "no CUDA GPU is visible" in proc.stderr and not (tmp_path / "new").exists()
