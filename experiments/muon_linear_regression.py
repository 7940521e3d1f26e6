"""Muon against SGD, SGD with momentum and AdamW on multi-output linear regression.

The study of the thesis notes' "ablations on simple problems" (see experiments/README.md): the simplest
problem where Muon applies, a convex least-squares fit whose exact solution is known, so every optimizer's
distance to it can be measured.

    python experiments/muon_linear_regression.py --out DIR [--force] [options]

Problem: X = [1 | Z] with Z (N x d), W* ((d+1) x D) with N(0, 1) entries, Y = X W* + noise * N(0, 1).
Z is built for a chosen condition number kappa of Z^T Z: a Gaussian matrix made orthogonal to the bias
column and to itself (Z^T Z = N I), then its columns scaled from 1 down to kappa^(-1/2) (log-spaced), so
Z^T Z = N diag(scales^2) has condition number kappa exactly; --correlate also rotates the columns by a
random orthogonal matrix (same spectrum, correlated columns). --condition takes a sweep of kappas, by
default from 1 (well-conditioned) to 1e4. The loss optimized and reported is the squared error per sample,
L(W) = ||Y - X W||_F^2 / N, with gradient 2 X^T (X W - Y) / N (a mini-batch of B rows gives the same
formula with B for N, an unbiased estimate of it). Every optimizer starts at W = 0, runs --steps steps at
each learning rate of one log-spaced grid, full-batch and mini-batch, and is reported at the rate with the
lowest final loss (a diverged run counts as infinite), for every kappa. Writes DIR/results.json,
DIR/conditioning.png (distance to the least-squares solution against kappa), DIR/loss.png and
DIR/singular_values.png (both at the largest kappa), and prints a table.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import train_gpt as tg  # noqa: E402  (Muon's Newton-Schulz, as in the record)
from speedrun.files import atomic_path  # noqa: E402

OPTIMIZERS = ("sgd", "sgd_momentum", "adamw", "muon")
MODES = ("full", "minibatch")
SGD_MOMENTUM = 0.9
# Adam's betas of the optimizer comparison on the speedrun (spec optimizers.md, section 1)
ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
MUON_MOMENTUM = 0.95  # the record's
# A run whose loss leaves the finite numbers or grows this many times above its start has diverged.
DIVERGENCE_FACTOR = 1e4
SINGULAR_VALUE_SNAPSHOTS = 4  # steps along Muon's trajectory whose gradients singular_values.png shows
NS_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
OUTPUT_FILES = ("results.json", "conditioning.png", "loss.png", "singular_values.png")
DEFAULT_CONDITIONS = (1.0, 10.0, 100.0, 1e3, 1e4)
FIGURE_DPI = 110
EXCESS_FLOOR = 1e-12  # loss.png draws loss - least-squares loss no lower than this fraction of the latter
ORTHO_YMAX = 1.2  # the top of singular_values.png's NS panel, at least
LOSS_TEXT = "||Y - X W||_F^2 / N (squared error summed over the D outputs, averaged over the N samples)"
USAGE_ERROR = 2


class StudyError(Exception):
    """A mistake in the options or the output folder: reported in one paragraph, exit code 2."""


# ------------------------------------------------------------------------------------------ problem


@dataclass
class Problem:
    X: Tensor  # (N, d+1) float64, first column ones
    Y: Tensor  # (N, D) float64
    W_star: Tensor
    W_ls: Tensor  # the least-squares solution, float64

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.size(1), self.Y.size(1)


def make_problem(
    n: int,
    d: int,
    outputs: int,
    noise: float,
    g: torch.Generator,
    condition: float | None = None,
    correlate: bool = False,
) -> Problem:
    """Z with i.i.d. N(0, 1) entries (the thesis notes' setting) when condition is None; else Z with
    Z^T Z = N diag(s^2) (or N V diag(s^2) V^T with correlate), s log-spaced from 1 to condition^(-1/2), and
    Z orthogonal to the bias column, so that cond(Z^T Z) = condition exactly."""
    Z = torch.randn(n, d, generator=g, dtype=torch.float64)
    if condition is not None:
        ones = torch.ones(n, 1, dtype=torch.float64)
        Q = torch.linalg.qr(torch.cat([ones, Z], dim=1)).Q[:, 1:]  # orthonormal, orthogonal to the ones
        scales = condition ** (-0.5 * torch.linspace(0, 1, d, dtype=torch.float64)) if d > 1 else torch.ones(1)
        Z = math.sqrt(n) * Q * scales
        if correlate:
            V = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
            Z = Z @ V.mT
    X = torch.cat([torch.ones(n, 1, dtype=torch.float64), Z], dim=1)
    W_star = torch.randn(d + 1, outputs, generator=g, dtype=torch.float64)
    Y = X @ W_star + noise * torch.randn(n, outputs, generator=g, dtype=torch.float64)
    return Problem(X, Y, W_star, least_squares(X, Y))


def least_squares(X: Tensor, Y: Tensor) -> Tensor:
    """argmin_W ||Y - X W||_F, i.e. (X^T X)^{-1} X^T Y, in float64."""
    return torch.linalg.lstsq(X.double(), Y.double()).solution


def loss(X: Tensor, Y: Tensor, W: Tensor) -> float:
    """||Y - X W||_F^2 / N, evaluated in float64."""
    R = X.double() @ W.double() - Y.double()
    return (R.square().sum() / X.size(0)).item()


def gradient(X: Tensor, Y: Tensor, W: Tensor) -> Tensor:
    """The gradient of ||Y - X W||_F^2 / N: 2 X^T (X W - Y) / N, in W's dtype."""
    X, Y = X.to(W.dtype), Y.to(W.dtype)
    return 2 * X.mT @ (X @ W - Y) / X.size(0)


def condition_number(Z: Tensor) -> float:
    """cond(Z^T Z), from the singular values of Z."""
    s = torch.linalg.svdvals(Z.double())
    return (s.max() / s.min()).item() ** 2


def relative_distance(W: Tensor, W_ls: Tensor) -> float:
    return (torch.linalg.norm(W.double() - W_ls) / torch.linalg.norm(W_ls)).item()


def minibatch_indices(n: int, batch_size: int, steps: int, g: torch.Generator) -> Tensor:
    """(steps, batch_size) row indices: shuffled epochs without replacement, an epoch's leftover rows
    skipped. One sequence for every optimizer and learning rate, so all see the same batches."""
    per_epoch = n // batch_size
    epochs = math.ceil(steps / per_epoch)
    batches = [
        torch.randperm(n, generator=g)[: per_epoch * batch_size].view(per_epoch, batch_size) for _ in range(epochs)
    ]
    return torch.cat(batches)[:steps]


# ------------------------------------------------------------------------------------------ optimizers


@dataclass
class Schedule:
    steps: int
    cooldown: float = 0.0  # the fraction of the steps over which lr falls linearly to 0 (the record's shape)
    weight_decay: float = 0.0  # AdamW's
    ns_dtype: torch.dtype = torch.bfloat16  # Muon's Newton-Schulz

    def lr_scale(self, step: int) -> float:
        """The multiplier of lr at step (0-based): 1, then (steps - step) / (cooldown steps) at the end."""
        if self.cooldown == 0:
            return 1.0
        return min(1.0, (self.steps - step) / (self.cooldown * self.steps))


class TorchOptimizer:
    """A torch.optim optimizer driven by gradients computed in closed form."""

    def __init__(self, W: Tensor, opt: torch.optim.Optimizer):
        self.W = W
        self.opt = opt
        self.lr = opt.param_groups[0]["lr"]

    def step(self, grad: Tensor, lr_scale: float) -> None:
        self.opt.param_groups[0]["lr"] = self.lr * lr_scale
        self.W.grad = grad
        self.opt.step()


class MuonMatrix:
    """Muon on one matrix, the record's update without its weight decay, smoothing and master weights:
    m = mu m + (1 - mu) g; u = NS(mu m + (1 - mu) g); W -= lr sqrt(max(1, rows / cols)) u."""

    def __init__(self, W: Tensor, lr: float, momentum: float, ns_dtype: torch.dtype):
        self.W = W
        self.buf = torch.zeros_like(W, dtype=torch.float32)
        self.momentum = momentum
        self.ns_dtype = ns_dtype
        self.step_size = lr * max(1.0, W.size(0) / W.size(1)) ** 0.5

    def step(self, grad: Tensor, lr_scale: float) -> None:
        # Nesterov momentum in the record's form (spec record.md, "Optimizers")
        self.buf.lerp_(grad, 1 - self.momentum)
        nesterov = grad.lerp(self.buf, self.momentum)
        update = tg.newton_schulz_torch(nesterov, self.ns_dtype)
        self.W.sub_(self.step_size * lr_scale * update.to(self.W.dtype))


def make_optimizer(name: str, W: Tensor, lr: float, schedule: Schedule):
    if name == "sgd":
        return TorchOptimizer(W, torch.optim.SGD([W], lr=lr))
    if name == "sgd_momentum":
        return TorchOptimizer(W, torch.optim.SGD([W], lr=lr, momentum=SGD_MOMENTUM))
    if name == "adamw":
        opt = torch.optim.AdamW([W], lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=schedule.weight_decay)
        return TorchOptimizer(W, opt)
    if name == "muon":
        return MuonMatrix(W, lr, MUON_MOMENTUM, schedule.ns_dtype)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass
class Run:
    losses: list[float]  # full-data loss before step 1 and after every step; cut short on divergence
    W: Tensor
    diverged: bool
    gradients: dict[int, Tensor]  # step -> the gradient the optimizer received there (those asked for)

    @property
    def final_loss(self) -> float:
        return math.inf if self.diverged else self.losses[-1]


def train(
    problem: Problem,
    name: str,
    lr: float,
    schedule: Schedule,
    batches: Tensor | None = None,
    keep_gradients: tuple[int, ...] = (),
) -> Run:
    """Optimize from W = 0 in float32; batches: (steps, B) row indices, or None for full batch."""
    X, Y = problem.X.float(), problem.Y.float()
    W = torch.zeros(problem.shape, dtype=torch.float32)
    opt = make_optimizer(name, W, lr, schedule)
    losses = [loss(problem.X, problem.Y, W)]
    limit = DIVERGENCE_FACTOR * losses[0]
    kept = {}
    for step in range(schedule.steps):
        if batches is None:
            g = gradient(X, Y, W)
        else:
            rows = batches[step]
            g = gradient(X[rows], Y[rows], W)
        if step in keep_gradients:
            kept[step] = g.clone()
        opt.step(g, schedule.lr_scale(step))
        losses.append(loss(problem.X, problem.Y, W))
        if not math.isfinite(losses[-1]) or losses[-1] > limit:
            return Run(losses, W, True, kept)
    return Run(losses, W, False, kept)


def lr_grid(lr_min: float, lr_max: float, points: int) -> list[float]:
    if points == 1:
        return [lr_min]
    ratio = math.log(lr_max / lr_min)
    return [lr_min * math.exp(ratio * i / (points - 1)) for i in range(points)]


def snapshot_steps(steps: int) -> tuple[int, ...]:
    """SINGULAR_VALUE_SNAPSHOTS steps from the first to the last, spaced geometrically (the gradient
    changes fastest early); fewer when the run is too short to hold that many."""
    last = SINGULAR_VALUE_SNAPSHOTS - 1
    return tuple(sorted({round(steps ** (i / last)) - 1 for i in range(SINGULAR_VALUE_SNAPSHOTS)}))


def sweep(problem: Problem, name: str, grid: list[float], schedule: Schedule, batches: Tensor | None) -> dict:
    """Every learning rate of the grid; the entry for the best one (lowest final loss)."""
    runs = [train(problem, name, lr, schedule, batches) for lr in grid]
    finals = [r.final_loss for r in runs]
    best = min(range(len(grid)), key=lambda i: finals[i])
    ok = math.isfinite(finals[best])
    return {
        "lr_grid": grid,
        "final_loss_per_lr": [f if math.isfinite(f) else None for f in finals],
        "diverged_per_lr": [r.diverged for r in runs],
        "best_lr": grid[best] if ok else None,
        "best_lr_at_grid_edge": ok and len(grid) > 1 and best in (0, len(grid) - 1),
        "loss_curve": runs[best].losses if ok else None,
        "final_loss": finals[best] if ok else None,
        "distance_to_ls": relative_distance(runs[best].W, problem.W_ls) if ok else None,
    }


def singular_values(problem: Problem, lr: float, schedule: Schedule) -> dict:
    """Singular values of the full-batch gradient G_t and of NS(G_t) at a few steps of Muon's run."""
    run = train(problem, "muon", lr, schedule, keep_gradients=snapshot_steps(schedule.steps))
    picks = sorted(run.gradients)  # a diverged run keeps only the steps it reached
    G = [run.gradients[t] for t in picks]
    return {
        "optimizer": "muon",
        "mode": "full",
        "lr": lr,
        "steps": picks,
        "gradient": [torch.linalg.svdvals(g.double()).tolist() for g in G],
        "orthogonalized": [
            torch.linalg.svdvals(tg.newton_schulz_torch(g, schedule.ns_dtype).double()).tolist() for g in G
        ],
    }


def study_one(args: argparse.Namespace, condition: float) -> dict:
    """Every optimizer at every rate of the grid, full batch and mini-batch, on the problem of one condition
    number. The generator restarts from --seed for each: every condition number scales the same Gaussian
    draws and sees the same W*, noise and mini-batches."""
    g = torch.Generator().manual_seed(args.seed)
    problem = make_problem(args.n, args.d, args.outputs, args.noise, g, condition, args.correlate)
    batches = {"full": None, "minibatch": minibatch_indices(args.n, args.batch_size, args.steps, g)}
    grid = lr_grid(args.lr_min, args.lr_max, args.lr_points)
    schedule = Schedule(args.steps, args.cooldown, args.weight_decay, NS_DTYPES[args.ns_dtype])
    runs = {mode: {name: sweep(problem, name, grid, schedule, batches[mode]) for name in OPTIMIZERS} for mode in MODES}
    muon_lr = runs["full"]["muon"]["best_lr"]
    return {
        "condition": condition,
        "condition_measured": condition_number(problem.X[:, 1:]),
        "least_squares_loss": loss(problem.X, problem.Y, problem.W_ls),
        "initial_loss": loss(problem.X, problem.Y, torch.zeros(problem.shape)),
        "runs": runs,
        "singular_values": singular_values(problem, muon_lr, schedule) if muon_lr is not None else None,
    }


def study(args: argparse.Namespace) -> dict:
    return {
        "settings": {
            "n": args.n,
            "d": args.d,
            "outputs": args.outputs,
            "noise": args.noise,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "cooldown": args.cooldown,
            "lr_grid": lr_grid(args.lr_min, args.lr_max, args.lr_points),
            "conditions": args.condition,
            "correlate": args.correlate,
            "seed": args.seed,
            "ns_dtype": args.ns_dtype,
            "weight_decay": args.weight_decay,
            "sgd_momentum": SGD_MOMENTUM,
            "adam_betas": list(ADAM_BETAS),
            "adam_eps": ADAM_EPS,
            "muon_momentum": MUON_MOMENTUM,
            "init": "W = 0",
            "loss": LOSS_TEXT,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "sweep": [study_one(args, condition) for condition in args.condition],
    }


# ------------------------------------------------------------------------------------------ output


def render_table(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"N={s['n']} d={s['d']} D={s['outputs']} noise={s['noise']} batch={s['batch_size']} steps={s['steps']} "
        f"cooldown={s['cooldown']} seed={s['seed']}{' correlated columns' if s['correlate'] else ''}; "
        f"loss = {LOSS_TEXT}; kappa = cond(Z^T Z)",
        "",
        f"{'kappa':>8} {'optimizer':<13} {'mode':<10} {'best lr':>10} {'final loss':>12} {'||W-W_ls||/||W_ls||':>20}",
    ]
    edge = False
    for point in results["sweep"]:
        kappa = f"{point['condition']:>8.3g}"
        lines.append(
            f"{kappa} least-squares loss {point['least_squares_loss']:.6g}, loss at W = 0 "
            f"{point['initial_loss']:.6g}, measured kappa {point['condition_measured']:.4g}"
        )
        for mode in MODES:
            for name in OPTIMIZERS:
                r = point["runs"][mode][name]
                if r["best_lr"] is None:
                    lines.append(f"{kappa} {name:<13} {mode:<10} {'every lr diverged':>44}")
                    continue
                mark = "*" if r["best_lr_at_grid_edge"] else " "
                edge |= r["best_lr_at_grid_edge"]
                lines.append(
                    f"{kappa} {name:<13} {mode:<10} {r['best_lr']:>9.3g}{mark} {r['final_loss']:>12.6g} "
                    f"{r['distance_to_ls']:>20.3e}"
                )
    if edge:
        lines.append("* best lr at an end of the grid: widen --lr-min/--lr-max to be sure it is the best")
    return "\n".join(lines) + "\n"


def load_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise StudyError(
            f"drawing the figures needs matplotlib, which failed to import ({type(e).__name__}: {e}). "
            "Install it (pip install matplotlib) or pass --no-figures to write only results.json."
        ) from None
    return Figure


def conditioning_figure(Figure, results: dict):
    """Distance to the least-squares solution against the condition number, one line per optimizer at its
    best rate of each setting; one panel per mode."""
    s = results["settings"]
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, len(MODES), sharey=True)
    kappas = [p["condition"] for p in results["sweep"]]
    for ax, mode in zip(axes, MODES):
        for i, name in enumerate(OPTIMIZERS):
            distance = [p["runs"][mode][name]["distance_to_ls"] for p in results["sweep"]]
            shown = [(k, x) for k, x in zip(kappas, distance) if x is not None]  # None: every rate diverged
            if shown:
                ax.plot(*zip(*shown), marker="o", color=f"C{i}", label=name)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="condition number of ZᵀZ",
            title="full batch" if mode == "full" else f"mini-batch (B = {s['batch_size']})",
        )
        ax.legend(fontsize="small")
    axes[0].set_ylabel("||W - W_ls||_F / ||W_ls||_F after the last step")
    fig.suptitle(
        f"Linear regression, N={s['n']}, d={s['d']}, D={s['outputs']}, noise {s['noise']}, {s['steps']} steps"
        f"{', correlated columns' if s['correlate'] else ''}: each optimizer at its best lr of the grid per point"
    )
    return fig


def loss_figure(Figure, results: dict):
    """At the largest condition number of the sweep. Top row: the loss with the least-squares loss dashed;
    bottom row: the loss above it, where the optimizers' endpoints differ by orders of magnitude that the top
    row cannot show (values below EXCESS_FLOOR of the least-squares loss are drawn at that floor)."""
    point = results["sweep"][-1]
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, len(MODES), sharey="row", sharex=True)
    s = results["settings"]
    ls = point["least_squares_loss"]
    floor = EXCESS_FLOOR * ls
    for column, mode in enumerate(MODES):
        top, bottom = axes[0, column], axes[1, column]
        for i, name in enumerate(OPTIMIZERS):
            r = point["runs"][mode][name]
            if r["loss_curve"] is None:
                continue
            label = f"{name} (lr {r['best_lr']:.3g})"
            top.plot(r["loss_curve"], color=f"C{i}", lw=1.2, label=label)
            bottom.plot([max(x - ls, floor) for x in r["loss_curve"]], color=f"C{i}", lw=1.2, label=label)
        top.axhline(ls, color="k", ls="--", lw=1, label=f"least squares {ls:.4g}")
        top.set(yscale="log", title="full batch" if mode == "full" else f"mini-batch (B = {s['batch_size']})")
        bottom.set(yscale="log", xlabel="step")
        top.legend(fontsize="small")
    axes[0, 0].set_ylabel("loss ||Y - XW||² / N (all N samples)")
    axes[1, 0].set_ylabel("loss minus the least-squares loss")
    axes[1, 0].set_title(f"(gaps below {floor:.1e} are drawn at {floor:.1e})", fontsize="small")
    schedule = f", lr cooldown over the last {s['cooldown']:g} of the steps" if s["cooldown"] else ", constant lr"
    fig.suptitle(
        f"Linear regression, N={s['n']}, d={s['d']}, D={s['outputs']}, noise {s['noise']}, "
        f"cond(ZᵀZ) = {point['condition']:g}{schedule}: each optimizer at its best lr of the grid"
    )
    return fig


def singular_value_figure(Figure, results: dict):
    point = results["sweep"][-1]
    sv = point["singular_values"]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    raw, ortho = fig.subplots(1, 2)
    for i, (t, g, u) in enumerate(zip(sv["steps"], sv["gradient"], sv["orthogonalized"])):
        index = range(1, len(g) + 1)
        raw.plot(index, g, marker=".", color=f"C{i}", label=f"step {t}")
        ortho.plot(index, u, marker=".", color=f"C{i}", label=f"step {t}")
    ortho.axhline(1, color="k", ls="--", lw=1)
    every = [x for u in sv["orthogonalized"] for x in u]
    # from 0, so the flatness reads at its true size next to the gradient's spread of decades
    ortho.set_ylim(0, max(ORTHO_YMAX, 1.05 * max(every)))
    raw.set(yscale="log", xlabel="index", ylabel="singular value", title="gradient G_t")
    ortho.set(
        xlabel="index",
        ylabel="singular value",
        title=f"NS(G_t), Newton-Schulz in {results['settings']['ns_dtype']}: "
        f"all in [{min(every):.3f}, {max(every):.3f}]",
    )
    raw.legend(fontsize="small")
    ortho.legend(fontsize="small")
    fig.suptitle(f"Singular values along Muon's full-batch run (lr {sv['lr']:.3g}, cond(ZᵀZ) = {point['condition']:g})")
    return fig


def write_outputs(out: Path, results: dict, Figure) -> list[Path]:
    """results.json and, with Figure, the figures, each written through a temporary file and renamed;
    returns the files written."""
    writers = {"results.json": lambda p: p.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")}
    if Figure is not None:
        # The temporary file's name ends in .tmp: the format is given, not read from it.
        writers["conditioning.png"] = lambda p: conditioning_figure(Figure, results).savefig(
            p, format="png", dpi=FIGURE_DPI
        )
        writers["loss.png"] = lambda p: loss_figure(Figure, results).savefig(p, format="png", dpi=FIGURE_DPI)
        if results["sweep"][-1]["singular_values"] is not None:  # None when every Muon run diverged
            writers["singular_values.png"] = lambda p: singular_value_figure(Figure, results).savefig(
                p, format="png", dpi=FIGURE_DPI
            )
    try:
        for name, write in writers.items():
            with atomic_path(out / name) as temp:
                write(temp)
    except OSError as e:
        raise StudyError(f"cannot write into --out {out}: {e.strerror or e}.") from None
    return [out / name for name in writers]


def prepare_output(out: Path, force: bool, figures: bool) -> None:
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file; give a folder (it is created if missing).")
    names = OUTPUT_FILES if figures else OUTPUT_FILES[:1]
    present = [n for n in names if (out / n).exists()]
    if present and not force:
        raise StudyError(
            f"--out {out} already holds {', '.join(present)}; give --force to overwrite, or another folder."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StudyError(f"cannot create --out {out}: {e.strerror or e}.") from None


# ------------------------------------------------------------------------------------------ CLI


def _number(text: str, kind, least, strict: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < least or (strict and value == least):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, 0, True, "a positive whole number")


def _non_negative_int(text: str) -> int:
    return _number(text, int, 0, False, "a whole number >= 0")


def _positive_float(text: str) -> float:
    return _number(text, float, 0.0, True, "a positive number")


def _non_negative_float(text: str) -> float:
    return _number(text, float, 0.0, False, "a number >= 0")


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {text!r}")
    return value


def _condition(text: str) -> float:
    value = _positive_float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a condition number >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="muon_linear_regression.py",
        description="SGD, SGD with momentum, AdamW and Muon on multi-output linear regression across condition "
        "numbers of the inputs, each at its best learning rate of a log-spaced grid, full-batch and mini-batch; "
        "writes results.json, conditioning.png, loss.png and singular_values.png into --out.",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite results and figures already in --out")
    parser.add_argument("--no-figures", action="store_true", help="write only results.json (no matplotlib needed)")
    parser.add_argument("--n", type=_positive_int, default=4096, help="samples N (default %(default)s)")
    parser.add_argument(
        "--d", type=_positive_int, default=32, metavar="d", help="features d, plus a bias column (default %(default)s)"
    )
    parser.add_argument(
        "--outputs", type=_positive_int, default=16, metavar="D", help="outputs D (default %(default)s)"
    )
    parser.add_argument("--noise", type=_non_negative_float, default=0.5, help="noise scale e (default %(default)s)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="mini-batch rows B (default %(default)s)")
    parser.add_argument("--steps", type=_positive_int, default=200, help="steps per run (default %(default)s)")
    parser.add_argument(
        "--lr-min", type=_positive_float, default=1e-4, help="smallest lr of the grid (default %(default)s)"
    )
    parser.add_argument(
        "--lr-max", type=_positive_float, default=1.0, help="largest lr of the grid (default %(default)s)"
    )
    parser.add_argument(
        "--lr-points",
        type=_positive_int,
        default=9,
        help="lrs in the grid, log-spaced from --lr-min to --lr-max (default %(default)s)",
    )
    parser.add_argument(
        "--cooldown",
        type=_fraction,
        default=0.0,
        help="fraction of the steps over which every lr falls linearly to 0, as in the record's "
        "cooldown (default %(default)s: constant lr)",
    )
    parser.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=0.0,
        help="AdamW's decoupled weight decay (default %(default)s: any decay biases it away from "
        "the least-squares solution)",
    )
    parser.add_argument(
        "--ns-dtype",
        choices=sorted(NS_DTYPES),
        default="bf16",
        help="Muon's Newton-Schulz precision (default %(default)s, as in the record)",
    )
    parser.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the data and the mini-batches (default %(default)s)"
    )
    parser.add_argument(
        "--condition",
        type=_condition,
        nargs="+",
        default=list(DEFAULT_CONDITIONS),
        metavar="KAPPA",
        help="condition numbers of Z^T Z to sweep, each >= 1, taken in increasing order (default: %(default)s)",
    )
    parser.add_argument(
        "--correlate",
        action="store_true",
        help="rotate Z's scaled columns by a random orthogonal matrix: correlated inputs, same condition number",
    )
    args = parser.parse_args(argv)
    if args.n < args.d + 1:
        parser.error(
            f"--n {args.n} is below d + 1 = {args.d + 1}: the least-squares solution needs at least as "
            "many samples as columns of X; raise --n or lower --d"
        )
    if args.batch_size > args.n:
        parser.error(f"--batch-size {args.batch_size} is above --n {args.n}; give at most --n rows per batch")
    if args.lr_max < args.lr_min:
        parser.error(f"--lr-max {args.lr_max} is below --lr-min {args.lr_min}")
    args.condition = sorted(set(args.condition))  # the figures at "the largest" mean the last
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        Figure = None if args.no_figures else load_matplotlib()  # before the study: fail in seconds, not later
        prepare_output(args.out, args.force, not args.no_figures)
        start = time.perf_counter()
        results = study(args)
        results["study_seconds"] = time.perf_counter() - start
        written = write_outputs(args.out, results, Figure)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    sys.stdout.write(render_table(results))
    print(
        f"study took {results['study_seconds']:.1f} s on {results['settings']['threads']} thread(s); "
        f"wrote {', '.join(map(str, written))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
