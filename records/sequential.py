"""Group-sequential statistics of a record batch (numpy and scipy only).

A batch looks at its attempt runs after n_1 < n_2 < ... < n_K of them and stops as soon as the
evidence decides. The efficacy boundaries come from Lan-DeMets alpha spending with the O'Brien-Fleming
spending function (Lan & DeMets 1983), one-sided:

    alpha(t) = 2 * (1 - Phi(z_{1 - alpha/2} / sqrt(t))),   t = n_k / n_K (the information fraction)

computed for the z-statistics of the looks, whose joint law is normal with correlation sqrt(n_i / n_j),
by recursive numerical integration of the score process (Armitage, McPherson & Rowe 1969; Jennison &
Turnbull 2000, ch. 19). The std of the runs is unknown, so each look applies its t-statistic at the same
nominal one-sided level as the z boundary: the boundary's p = 1 - Phi(c_k) becomes the t quantile with
n_k - 1 degrees of freedom. Futility (conditional power of the planned maximum under the current
estimates below a threshold) is non-binding: the boundaries spend alpha as if it never stopped a batch.
The batch's p-value follows the stagewise ordering (Fairbanks & Madsen 1982): the null probability of
stopping earlier for efficacy, or at the same look with a larger statistic.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import optimize, special, stats

# Grid of the numerical integration, in units of the std of S at the look: step, and half-width below the
# mean (tests/test_sequential.py checks the result against scipy's bivariate normal and Monte Carlo).
GRID_STEP = 0.02
GRID_WIDTH = 8.0


@dataclasses.dataclass(frozen=True)
class Design:
    """A sequential plan's statistics: the looks (attempt runs at each), one-sided alpha, the target, and
    the futility rule (conditional-power threshold, and the first look, 1-based, that applies it)."""

    looks: tuple[int, ...]
    alpha: float = 0.01
    target: float = 2.92
    futility_threshold: float = 0.05
    futility_from: int = 2

    @property
    def max_runs(self) -> int:
        return self.looks[-1]

    def spending(self) -> np.ndarray:
        """Cumulative alpha spent by each look (O'Brien-Fleming-type Lan-DeMets function)."""
        t = np.asarray(self.looks, dtype=float) / self.max_runs
        return 2 * stats.norm.sf(stats.norm.isf(self.alpha / 2) / np.sqrt(t))

    def z_boundaries(self) -> np.ndarray:
        return np.array(_boundaries(self.looks, self.alpha))

    def nominal_p(self) -> np.ndarray:
        """One-sided nominal p-value of each look's boundary."""
        return stats.norm.sf(self.z_boundaries())

    def t_boundaries(self) -> np.ndarray:
        """Each look's boundary for its t-statistic: the same nominal level, n_k - 1 degrees of freedom."""
        return stats.t.isf(self.nominal_p(), np.asarray(self.looks) - 1)

    def as_dict(self) -> dict:
        return {
            "looks": list(self.looks),
            "alpha": self.alpha,
            "target": self.target,
            "futility_threshold": self.futility_threshold,
            "futility_from_look": self.futility_from,
            "alpha_spent_cumulative": self.spending().tolist(),
            "z_boundaries": self.z_boundaries().tolist(),
            "nominal_p": self.nominal_p().tolist(),
            "t_boundaries": self.t_boundaries().tolist(),
        }


def _simpson_weights(m: int, h: float) -> np.ndarray:
    """Simpson's rule on m (odd) equally spaced points."""
    w = np.ones(m)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w * h / 3


def _normal_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


class _Recursion:
    """The density of S_{n_k} (sum of n_k independent N(drift, 1)) on the continuation region, look by
    look: exit(k, c) is P(first crossing at look k) for a boundary c on Z_k = S / sqrt(n_k), given the
    boundaries already passed to advance()."""

    def __init__(self, looks, drift: float = 0.0):
        self.looks = [float(n) for n in looks]
        self.drift = drift
        self.grid = self.weighted = None  # grid of S and density times Simpson weights, after look k - 1

    def exit(self, k: int, c: float) -> float:
        n = self.looks[k]
        if k == 0:
            return float(special.ndtr(self.drift * math.sqrt(n) - c))
        d = n - self.looks[k - 1]
        return float(self.weighted @ special.ndtr((self.grid + self.drift * d - c * math.sqrt(n)) / math.sqrt(d)))

    def advance(self, k: int, c: float) -> None:
        n = self.looks[k]
        sd, mean = math.sqrt(n), self.drift * n
        hi = min(c * sd, mean + GRID_WIDTH * sd)
        m = max(int(math.ceil((hi - (mean - GRID_WIDTH * sd)) / (GRID_STEP * sd))), 2)
        m += 1 - m % 2  # Simpson needs an odd number of points
        grid = np.linspace(mean - GRID_WIDTH * sd, hi, m)
        if k == 0:
            density = _normal_pdf((grid - mean) / sd) / sd
        else:
            d = n - self.looks[k - 1]
            step = math.sqrt(d)
            density = _normal_pdf((grid[:, None] - self.grid[None, :] - self.drift * d) / step) @ self.weighted / step
        self.grid, self.weighted = grid, density * _simpson_weights(m, grid[1] - grid[0])


def exit_probabilities(looks, z_bounds, drift: float = 0.0) -> np.ndarray:
    """P(first crossing at look k) for boundaries on Z_k = S_{n_k} / sqrt(n_k), where S_n is the sum of n
    independent N(drift, 1). A boundary of +inf never stops."""
    rec = _Recursion(looks, drift)
    out = np.zeros(len(z_bounds))
    for k, c in enumerate(z_bounds):
        out[k] = rec.exit(k, c)
        if k < len(z_bounds) - 1:
            rec.advance(k, c)
    return out


@functools.lru_cache(maxsize=64)
def _boundaries(looks: tuple[int, ...], alpha: float) -> tuple[float, ...]:
    """z boundaries spending exactly the increments of the plan's alpha spending under the null."""
    increments = np.diff(np.concatenate([[0.0], Design(looks, alpha).spending()]))
    rec = _Recursion(looks)
    bounds = []
    for k, spend in enumerate(increments):
        c = optimize.brentq(lambda c: rec.exit(k, c) - spend, -5.0, 40.0, xtol=1e-12)
        bounds.append(float(c))
        rec.advance(k, c)
    return tuple(bounds)


def t_statistic(values: np.ndarray, target: float) -> float:
    """One-sample t-statistic of the mean below the target (positive when the mean is below)."""
    values = np.asarray(values, dtype=float)
    sd = float(np.std(values, ddof=1))
    diff = target - float(np.mean(values))
    if sd == 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / (sd / math.sqrt(len(values)))


def _conditional_power(final: float, n: int, big_n: int, t_stat):
    # S_N = S_n + R with R ~ N(theta (N - n), N - n) in std units, theta = t / sqrt(n) the current trend;
    # the planned maximum passes when S_N >= final * sqrt(N).
    return special.ndtr((t_stat * big_n / math.sqrt(n) - final * math.sqrt(big_n)) / math.sqrt(big_n - n))


def conditional_power(design: Design, look: int, t_stat: float) -> float:
    """Probability that the planned maximum's t-test passes, given look `look` (0-based, before the last)
    and the current estimates of the mean and std carried forward (the trend t / sqrt(n) std per run)."""
    final = float(design.t_boundaries()[-1])
    return float(_conditional_power(final, design.looks[look], design.max_runs, t_stat))


def z_equivalent(t_stat: float, n: int) -> float:
    """The z value with the same one-sided p as a t-statistic with n - 1 degrees of freedom."""
    return float(stats.norm.isf(stats.t.sf(t_stat, n - 1)))


def stagewise_p(design: Design, look: int, t_stat: float) -> float:
    """The batch's p-value by the stagewise ordering when it stops at look `look` (0-based) with this
    t-statistic: null probability of crossing an efficacy boundary before that look, plus that of reaching
    it and seeing a larger statistic there (futility ignored, as it is non-binding)."""
    z = z_equivalent(t_stat, design.looks[look])
    bounds = list(design.z_boundaries()[:look]) + [z]
    return float(min(1.0, np.sum(exit_probabilities(design.looks[: look + 1], bounds))))


@dataclasses.dataclass(frozen=True)
class Look:
    """One look's numbers and its decision: continue, passed, futility, not shown."""

    index: int  # 0-based
    n: int
    mean: float
    std: float
    t: float
    boundary: float
    nominal_p: float
    conditional_power: float | None
    decision: str
    p_value: float | None  # the stagewise p-value when the batch stops here


def decide(design: Design, look: int, values: np.ndarray) -> Look:
    """The decision at look `look` (0-based) from the first design.looks[look] attempt values."""
    n = design.looks[look]
    values = np.asarray(values[:n], dtype=float)
    t_stat = t_statistic(values, design.target)
    boundary = float(design.t_boundaries()[look])
    last = look == len(design.looks) - 1
    cp = None
    if not last and look + 1 >= design.futility_from:
        cp = conditional_power(design, look, t_stat)
    if t_stat >= boundary:
        decision = "passed"
    elif last:
        decision = "not shown"
    elif cp is not None and cp < design.futility_threshold:
        decision = "futility"
    else:
        decision = "continue"
    p = None if decision == "continue" else stagewise_p(design, look, t_stat)
    return Look(
        look,
        n,
        float(np.mean(values)),
        float(np.std(values, ddof=1)),
        t_stat,
        boundary,
        float(design.nominal_p()[look]),
        cp,
        decision,
        p,
    )


# ------------------------------------------------------------------------------------- simulation


@dataclasses.dataclass(frozen=True)
class Simulated:
    batches: int
    passed: float  # fraction of batches that pass
    passed_se: float
    mean_runs: float  # expected attempt runs until the batch stops
    mean_runs_se: float


def simulate(
    design: Design,
    mean: float,
    std: float,
    batches: int,
    seed: int,
    futility: bool = True,
    first_look_scale: float = 1.0,
    first_look_estimate: float | None = None,
    chunk: int = 25_000,
) -> Simulated:
    """Monte Carlo of whole batches of normal final losses, vectorized over batches.
    first_look_scale: the runs of the first look have std first_look_scale * std, the later ones std.
    first_look_estimate: batches drawn conditional on the first look's sample std being this multiple of
    the true std (for normal runs the sample mean, the sample std and the direction of the residuals are
    independent, so rescaling the residuals draws exactly from that conditional law)."""
    rng = np.random.default_rng(seed)
    looks = np.asarray(design.looks)
    bounds = design.t_boundaries()
    final, big_n, first = float(bounds[-1]), design.max_runs, design.looks[0]
    passed = np.zeros(batches, dtype=bool)
    runs = np.zeros(batches)
    for start in range(0, batches, chunk):
        b = min(chunk, batches - start)
        # standardized distance below the target: (target - x) / std
        noise = rng.standard_normal((b, big_n))
        if first_look_estimate is not None:
            head = noise[:, :first]
            centre = head.mean(axis=1, keepdims=True)
            noise[:, :first] = centre + (head - centre) / head.std(axis=1, ddof=1, keepdims=True) * first_look_estimate
        noise[:, :first] *= first_look_scale
        x = (design.target - mean) / std + noise
        s1 = np.cumsum(x, axis=1)[:, looks - 1]
        s2 = np.cumsum(x * x, axis=1)[:, looks - 1]
        m = s1 / looks
        t = m / np.sqrt((s2 - looks * m * m) / (looks - 1) / looks)
        active = np.ones(b, dtype=bool)
        stop_n = np.full(b, float(big_n))
        ok = np.zeros(b, dtype=bool)
        for k, n in enumerate(looks):
            stop = active & (t[:, k] >= bounds[k])
            ok |= stop
            if futility and k + 1 >= design.futility_from and k < len(looks) - 1:
                stop |= active & (_conditional_power(final, n, big_n, t[:, k]) < design.futility_threshold)
            stop_n[stop] = n
            active &= ~stop
        passed[start : start + b] = ok
        runs[start : start + b] = stop_n
    rate = float(passed.mean())
    return Simulated(
        batches,
        rate,
        math.sqrt(rate * (1 - rate) / batches),
        float(runs.mean()),
        float(runs.std(ddof=1) / math.sqrt(batches)),
    )


def fixed_power(n: int, mean: float, std: float, target: float, alpha: float) -> float:
    """Power of one fixed n-run one-sided t-test (noncentral t)."""
    crit = stats.t.isf(alpha, n - 1)
    return float(stats.nct.sf(crit, n - 1, (target - mean) / std * math.sqrt(n)))


def fixed_n_for_power(power: float, mean: float, std: float, target: float, alpha: float, limit: int = 10_000) -> int:
    """The smallest fixed batch whose t-test has at least this power (limit if none up to it)."""
    lo, hi = 2, limit
    if fixed_power(hi, mean, std, target, alpha) < power:
        return limit
    while lo < hi:
        mid = (lo + hi) // 2
        if fixed_power(mid, mean, std, target, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo
