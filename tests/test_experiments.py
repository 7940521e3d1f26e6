"""experiments/muon_linear_regression.py: the gradient against autograd, the least-squares solution
against numpy, each optimizer's progress, Muon's first step, Newton-Schulz's singular values, the lr
sweep, and the command line (outputs, refusing to overwrite, bad options, missing matplotlib)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt
from experiments import muon_linear_regression as mlr

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "muon_linear_regression.py"
TINY = [
    "--n",
    "128",
    "--d",
    "6",
    "--outputs",
    "3",
    "--steps",
    "12",
    "--batch-size",
    "16",
    "--lr-points",
    "3",
    "--lr-min",
    "0.01",
    "--lr-max",
    "0.3",
    "--condition",
    "1",
    "100",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A learning rate per optimizer at which 40 steps of the small problem below go most of the way down.
WORKING_LR = {"sgd": 0.1, "sgd_momentum": 0.03, "adamw": 0.05, "muon": 0.05}
# Newton-Schulz's band for a well-conditioned matrix. With the record's coefficients the five steps map a
# singular value s of G / ||G||_F to p5(...p1(s)); evaluated in float64 that composition stays within
# [0.978, 1.032] for every s >= 0.01 (all of a 33 x 16 Gaussian matrix's are). bf16 rounding moves it:
# over 200 seeded Gaussian 33 x 16 matrices the bf16 result spanned [0.964, 1.049]. The band below adds
# about 0.02 of margin either side; the [0.7, 1.2] of the original (3.4445, -4.775, 2.0315) iteration
# would be too loose to notice a wrong coefficient.
NS_BAND = (0.94, 1.07)


def small_problem(n=256, d=8, outputs=4, noise=0.3, seed=3):
    return mlr.make_problem(n, d, outputs, noise, torch.Generator().manual_seed(seed))


def test_problem_is_x_with_bias_column_times_w_star_plus_noise():
    p = small_problem(noise=0.0)
    assert torch.equal(p.X[:, 0], torch.ones(256, dtype=torch.float64))
    assert p.X.shape == (256, 9) and p.Y.shape == (256, 4) and p.W_star.shape == (9, 4)
    torch.testing.assert_close(p.Y, p.X @ p.W_star, rtol=0, atol=0)
    torch.testing.assert_close(p.W_ls, p.W_star, rtol=0, atol=1e-10)  # without noise the fit is exact
    noisy = small_problem(n=20_000, noise=0.5)
    residual = noisy.Y - noisy.X @ noisy.W_star
    assert abs(residual.std().item() - 0.5) < 0.01  # 80,000 draws: the std's error is about 0.5 / 400


def test_gradient_and_loss_match_autograd():
    p = small_problem()
    W = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    objective = (p.Y - p.X @ W).square().sum() / p.X.size(0)
    objective.backward()
    torch.testing.assert_close(mlr.gradient(p.X, p.Y, W.detach()), W.grad, rtol=1e-12, atol=1e-12)
    assert mlr.loss(p.X, p.Y, W.detach()) == pytest.approx(objective.item(), rel=1e-12)
    rows = torch.arange(0, 256, 7)  # a mini-batch: the same formula over its rows
    W.grad = None
    ((p.Y[rows] - p.X[rows] @ W).square().sum() / len(rows)).backward()
    torch.testing.assert_close(mlr.gradient(p.X[rows], p.Y[rows], W.detach()), W.grad, rtol=1e-12, atol=1e-12)


def test_least_squares_solution_matches_numpy_and_zeroes_the_gradient():
    p = small_problem()
    expected, *_ = np.linalg.lstsq(p.X.numpy(), p.Y.numpy(), rcond=None)
    np.testing.assert_allclose(p.W_ls.numpy(), expected, rtol=1e-10, atol=1e-12)
    at_zero = torch.linalg.norm(mlr.gradient(p.X, p.Y, torch.zeros(9, 4, dtype=torch.float64)))
    at_ls = torch.linalg.norm(mlr.gradient(p.X, p.Y, p.W_ls))
    assert at_ls < 1e-12 * at_zero
    nudged = p.W_ls + 1e-3
    assert mlr.loss(p.X, p.Y, nudged) > mlr.loss(p.X, p.Y, p.W_ls)


@pytest.mark.parametrize("mode", mlr.MODES)
@pytest.mark.parametrize("name", mlr.OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name, mode):
    g = torch.Generator().manual_seed(3)
    p = mlr.make_problem(256, 8, 4, 0.3, g)
    batches = mlr.minibatch_indices(256, 32, 40, g) if mode == "minibatch" else None
    run = mlr.train(p, name, WORKING_LR[name], mlr.Schedule(40), batches)
    least = mlr.loss(p.X, p.Y, p.W_ls)
    assert not run.diverged and len(run.losses) == 41
    assert run.losses[0] == pytest.approx(mlr.loss(p.X, p.Y, torch.zeros(9, 4)))
    # at least 90% of the way from the loss at W = 0 down to the least-squares loss
    assert run.final_loss - least < 0.1 * (run.losses[0] - least)


def test_muon_first_step_is_the_scaled_orthogonalized_gradient():
    # From W = 0 and a zero buffer, mu m + (1 - mu) g = (1 - mu^2) g, and Newton-Schulz divides by the norm.
    p = small_problem()
    lr = 0.05
    run = mlr.train(p, "muon", lr, mlr.Schedule(1, ns_dtype=torch.float32))
    g0 = (2 * p.X.mT @ (p.X @ torch.zeros(9, 4, dtype=torch.float64) - p.Y) / 256).float()
    expected = -lr * math.sqrt(9 / 4) * train_gpt.newton_schulz_torch(g0, torch.float32)
    torch.testing.assert_close(run.W, expected, rtol=1e-5, atol=1e-6)


def test_cooldown_falls_linearly_to_zero_over_its_fraction():
    schedule = mlr.Schedule(10, cooldown=0.5)
    assert [schedule.lr_scale(t) for t in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert {mlr.Schedule(10).lr_scale(t) for t in range(10)} == {1.0}


def test_minibatches_draw_each_row_at_most_once_per_epoch():
    batches = mlr.minibatch_indices(100, 30, 7, torch.Generator().manual_seed(0))
    assert batches.shape == (7, 30)
    for epoch in range(0, 7, 3):  # 3 batches of 30 per epoch of 100 rows
        rows = batches[epoch : epoch + 3].flatten()
        assert len(set(rows.tolist())) == len(rows) and 0 <= rows.min() and rows.max() < 100


def test_orthogonalized_gradient_has_singular_values_near_one():
    # The gradient at W = 0 of the default shape (33 x 16): about -2 W*, a Gaussian matrix.
    p = mlr.make_problem(4096, 32, 16, 0.5, torch.Generator().manual_seed(0))
    G = mlr.gradient(p.X.float(), p.Y.float(), torch.zeros(33, 16))
    raw = torch.linalg.svdvals(G.double())
    assert raw.max() / raw.min() > 2  # far from flat before Newton-Schulz, so the check below means something
    flat = torch.linalg.svdvals(train_gpt.newton_schulz_torch(G).double())
    assert NS_BAND[0] <= flat.min() and flat.max() <= NS_BAND[1], flat


def test_sweep_skips_diverged_rates_and_takes_the_lowest_final_loss():
    p = small_problem()
    grid = [1e-3, 0.1, 100.0]  # 100 makes plain SGD blow up (the Hessian's eigenvalues are about 2)
    result = mlr.sweep(p, "sgd", grid, mlr.Schedule(20), None)
    assert result["diverged_per_lr"] == [False, False, True]
    assert result["final_loss_per_lr"][2] is None
    finals = [mlr.train(p, "sgd", lr, mlr.Schedule(20)).losses[-1] for lr in grid[:2]]
    assert result["final_loss_per_lr"][:2] == pytest.approx(finals)
    assert result["best_lr"] == grid[int(np.argmin(finals))] == 0.1
    assert result["best_lr_at_grid_edge"] is False
    assert result["final_loss"] == pytest.approx(min(finals))
    assert result["loss_curve"][-1] == result["final_loss"] and len(result["loss_curve"]) == 21
    everything = mlr.sweep(p, "sgd", [100.0, 1000.0], mlr.Schedule(20), None)
    assert everything["best_lr"] is None and everything["final_loss"] is None


def test_command_writes_results_and_figures_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *TINY], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    table = [line.split() for line in done.stdout.splitlines()]
    rows = [r for r in table if len(r) > 2 and r[1] in mlr.OPTIMIZERS]
    expected = [(k, n, m) for k in ("1", "100") for m in mlr.MODES for n in mlr.OPTIMIZERS]
    assert [(r[0], r[1], r[2]) for r in rows] == expected

    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["n"] == 128 and results["settings"]["steps"] == 12
    assert results["settings"]["lr_grid"] == pytest.approx([0.01, math.sqrt(0.01 * 0.3), 0.3])
    assert [p["condition"] for p in results["sweep"]] == [1, 100]
    for point in results["sweep"]:
        assert point["condition_measured"] == pytest.approx(point["condition"], rel=1e-9)
        for mode in mlr.MODES:
            for name in mlr.OPTIMIZERS:
                r = point["runs"][mode][name]
                assert set(r) >= {"lr_grid", "best_lr", "loss_curve", "final_loss", "distance_to_ls"}
                assert len(r["loss_curve"]) == 13 and r["final_loss"] == r["loss_curve"][-1]
                assert r["final_loss"] >= point["least_squares_loss"] and r["distance_to_ls"] > 0
                assert r["final_loss"] == min(f for f in r["final_loss_per_lr"] if f is not None)
                kappa = f"{point['condition']:g}"
                printed = next(row for row in rows if row[:3] == [kappa, name, mode])
                assert float(printed[4]) == pytest.approx(r["final_loss"], rel=1e-5)
    sv = results["sweep"][-1]["singular_values"]
    assert sv["steps"][0] == 0 and sv["steps"][-1] == 11
    assert len(sv["gradient"][0]) == len(sv["orthogonalized"][0]) == 3  # min(d + 1, D) singular values
    for name in mlr.OUTPUT_FILES[1:]:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    umask = os.umask(0)
    os.umask(umask)
    for name in mlr.OUTPUT_FILES:  # as open() would create them, not mkstemp's 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask

    before = {name: (out / name).read_bytes() for name in mlr.OUTPUT_FILES}
    assert mlr.main(["--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "already holds results.json, conditioning.png, loss.png, singular_values.png" in err and "--force" in err
    assert before == {name: (out / name).read_bytes() for name in mlr.OUTPUT_FILES}
    assert mlr.main(["--out", str(out), *TINY, "--seed", "1", "--force", "--no-figures"]) == 0
    assert json.loads((out / "results.json").read_text())["settings"]["seed"] == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(mlr.OUTPUT_FILES)  # no temporary files left


@pytest.mark.parametrize(
    "options, named",
    [
        (["--n", "0"], "--n"),
        (["--steps", "-3"], "--steps"),
        (["--d", "two"], "--d"),
        (["--noise", "nan"], "--noise"),
        (["--lr-min", "0"], "--lr-min"),
        (["--cooldown", "1.5"], "--cooldown"),
        (["--n", "5", "--d", "8"], "--n"),
        (["--n", "100", "--batch-size", "101"], "--batch-size"),
        (["--lr-min", "0.5", "--lr-max", "0.1"], "--lr-max"),
        (["--ns-dtype", "fp16"], "--ns-dtype"),
        (["--condition", "0.5"], "--condition"),
        (["--condition", "inf"], "--condition"),
    ],
)
def test_bad_options_exit_2_naming_the_option(options, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        mlr.main(["--out", str(tmp_path / "x"), *options])
    assert stop.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert mlr.main(["--out", str(target), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"


def test_missing_matplotlib_is_reported_before_the_study(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib..." raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert mlr.main(["--out", str(tmp_path), *TINY]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "--no-figures" in err
    assert "None in sys.modules" in err  # the real import error is shown
    assert not (tmp_path / "results.json").exists()


# ------------------------------------------------------------------------------------------ conditioning


@pytest.mark.parametrize("correlate", [False, True])
def test_condition_number_of_the_inputs_is_the_one_asked_for(correlate):
    g = torch.Generator().manual_seed(4)
    p = mlr.make_problem(512, 8, 4, 0.3, g, condition=1e3, correlate=correlate)
    Z = p.X[:, 1:]
    eig = torch.linalg.eigvalsh(Z.mT @ Z)
    assert (eig.max() / eig.min()).item() == pytest.approx(1e3, rel=1e-9)
    assert torch.equal(p.X[:, 0], torch.ones(512, dtype=torch.float64))
    assert Z.sum(0).abs().max().item() < 1e-9  # orthogonal to the bias column
    off = (Z.mT @ Z - torch.diag(torch.diagonal(Z.mT @ Z))).abs().max().item()
    assert (off > 1.0) == correlate  # scaled columns stay orthogonal; rotated ones are correlated
    torch.testing.assert_close(p.W_ls, mlr.least_squares(p.X, p.Y))


def test_ill_conditioning_slows_plain_sgd_and_the_sweep_is_small_enough_for_ci():
    """At a small size, with tolerances: plain SGD's distance to W_ls at its best rate grows with the condition
    number (its rate is capped by the largest curvature, the smallest direction then barely moves)."""
    args = mlr.parse_args(["--out", "unused", *TINY[:-3], "--condition", "1000", "1", "1", "--steps", "40"])
    results = mlr.study(args)
    assert args.condition == [1.0, 1000.0]
    full = [p["runs"]["full"]["sgd"]["distance_to_ls"] for p in results["sweep"]]
    assert full[0] < 1e-2 < full[1]


# ----------------------------------------------------------------------------------- the published setting


def test_published_comparison_commands(capsys):
    from experiments import published_comparison as pc

    assert pc.main(["--dry-run", "--runs", "2", "--launch", "python train_gpt.py", "--", "--preset=tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train, last = [line.split() for line in lines[:-1]], lines[-1].split()
    assert len(train) == 2 * len(pc.CONFIGURATIONS)
    for command in train:
        assert command[:2] == ["python", "train_gpt.py"] and "--snoo_k=0" in command and command[-1] == "--preset=tiny"
    published = next(c for c in train if "--record=cmp-muon-published" in c)
    for option in ("--update_smoothing=0", "--muon_lr=0.02", "--muon_momentum=0.95", "--muon_momentum_start=0.95"):
        assert option in published
    record = next(c for c in train if "--record=cmp-muon-record" in c)
    assert not any(o.startswith(("--update_smoothing", "--muon_lr")) for o in record)  # the record's own settings
    optimizers = {o.split("=")[1] for c in train for o in c if o.startswith("--matrix_optimizer=")}
    assert optimizers == {"muon", "adam", "shampoo", "soap"}
    assert last[1:] == ["records/compare.py", *(f"records/cmp-{name}" for name in pc.CONFIGURATIONS)]
