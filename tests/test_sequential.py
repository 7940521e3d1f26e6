"""records/sequential.py against independent computations: scipy's bivariate normal for two looks, Monte
Carlo of the z-statistics for the default plan, the t-test for one look, hand-written conditional power;
and a smoke run of the benchmark."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from records import sequential

REPO = Path(__file__).resolve().parent.parent
DEFAULT = sequential.Design(tuple(range(10, 51, 5)))


def obf(t: float, alpha: float) -> float:
    return 2 * (1 - stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t)))


def test_spending_function():
    spent = DEFAULT.spending()
    assert spent[-1] == pytest.approx(0.01, rel=1e-12)
    assert np.all(np.diff(spent) > 0)
    assert spent[3] == pytest.approx(obf(25 / 50, 0.01), rel=1e-12)


@pytest.mark.parametrize("looks", [(10, 20), (20, 50), (5, 6)])
def test_two_look_boundaries_against_bivariate_normal(looks):
    d = sequential.Design(looks)
    c1, c2 = d.z_boundaries()
    t1 = looks[0] / looks[1]
    assert stats.norm.sf(c1) == pytest.approx(obf(t1, 0.01), rel=1e-9)
    rho = math.sqrt(t1)
    # P(Z1 < c1, Z2 >= c2) = P(Z1 < c1) - P(Z1 < c1, Z2 < c2)
    joint = stats.multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([c1, c2])
    crossed_second = stats.norm.cdf(c1) - joint
    assert crossed_second == pytest.approx(0.01 - obf(t1, 0.01), rel=1e-4)


def test_default_boundaries_spend_alpha_by_monte_carlo():
    """z at the looks from independent normal increments; the crossing frequency at each look against the
    spending function's increments."""
    rng = np.random.default_rng(1)
    looks = np.array(DEFAULT.looks)
    sims = 400_000
    increments = rng.standard_normal((sims, len(looks))) * np.sqrt(np.diff(np.concatenate([[0], looks])))
    z = np.cumsum(increments, axis=1) / np.sqrt(looks)
    crossed = z >= DEFAULT.z_boundaries()
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    cumulative = np.array([np.mean((first >= 0) & (first <= k)) for k in range(len(looks))])
    se = np.sqrt(DEFAULT.spending() * (1 - DEFAULT.spending()) / sims)
    assert np.all(np.abs(cumulative - DEFAULT.spending()) <= 4 * se + 1e-6)
    assert cumulative[-1] == pytest.approx(0.01, abs=4 * se[-1])


def test_exit_probabilities_with_drift_by_monte_carlo():
    rng = np.random.default_rng(2)
    looks, bounds, drift = (4, 9, 16), (3.0, 2.5, 2.2), 0.3
    probs = sequential.exit_probabilities(looks, bounds, drift)
    x = rng.standard_normal((200_000, 16)) + drift
    z = np.cumsum(x, axis=1)[:, np.array(looks) - 1] / np.sqrt(looks)
    crossed = z >= np.array(bounds)
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    mc = np.array([np.mean(first == k) for k in range(3)])
    assert np.allclose(probs, mc, atol=4 * np.sqrt(mc * (1 - mc) / 200_000) + 1e-4)


def test_t_boundaries_have_the_z_boundaries_nominal_level():
    p = stats.norm.sf(DEFAULT.z_boundaries())
    assert np.allclose(stats.t.sf(DEFAULT.t_boundaries(), np.array(DEFAULT.looks) - 1), p, rtol=1e-8)


def test_stagewise_p():
    # one look: the plain one-sided t-test
    one = sequential.Design((12,))
    x = np.random.default_rng(3).normal(2.9195, 0.0008, 12)
    t = sequential.t_statistic(x, 2.92)
    assert sequential.stagewise_p(one, 0, t) == pytest.approx(
        stats.ttest_1samp(x, 2.92, alternative="less").pvalue, rel=1e-9
    )
    # stopping exactly on look k's boundary: the alpha spent by look k
    for k in (2, 5, 8):
        assert sequential.stagewise_p(DEFAULT, k, DEFAULT.t_boundaries()[k]) == pytest.approx(
            DEFAULT.spending()[k], rel=1e-6
        )
    # later looks and smaller statistics give larger p-values
    assert sequential.stagewise_p(DEFAULT, 6, 2.0) < sequential.stagewise_p(DEFAULT, 6, 1.0)
    assert sequential.stagewise_p(DEFAULT, 3, 4.5) < sequential.stagewise_p(DEFAULT, 8, 4.5)


def test_conditional_power_by_hand():
    n, big_n, t = 20, 50, 1.5
    final = DEFAULT.t_boundaries()[-1]
    theta = t / math.sqrt(n)  # current estimate, std units per run
    # final z = (t sqrt(n) + R) / sqrt(N), R ~ N(theta (N - n), N - n)
    expected = 1 - stats.norm.cdf((final * math.sqrt(big_n) - t * math.sqrt(n) - theta * (big_n - n)) / math.sqrt(30))
    assert sequential.conditional_power(DEFAULT, 2, t) == pytest.approx(expected, rel=1e-12)


def test_decide_by_hand():
    rng = np.random.default_rng(4)
    x = rng.normal(2.9192, 0.0006, 50)
    for k, n in enumerate(DEFAULT.looks):
        look = sequential.decide(DEFAULT, k, x)
        t = (2.92 - x[:n].mean()) / (x[:n].std(ddof=1) / math.sqrt(n))
        assert look.t == pytest.approx(t, rel=1e-12)
        if t >= DEFAULT.t_boundaries()[k]:
            assert look.decision == "passed" and look.p_value <= DEFAULT.spending()[k]
            break
        assert look.decision in ("continue", "futility")
    else:
        pytest.fail("this sample was chosen to pass")


def test_simulation_type_one_and_fixed_power():
    sim = sequential.simulate(DEFAULT, 2.92, 0.0008, 20_000, seed=5, futility=False)
    assert sim.passed <= 0.01 + 3 * sim.passed_se
    assert sim.mean_runs > 49  # almost no batch stops early under the null without futility
    with_futility = sequential.simulate(DEFAULT, 2.92, 0.0008, 20_000, seed=5)
    assert with_futility.passed <= sim.passed and with_futility.mean_runs < 25
    # the fixed t-test's power against a noncentral-t-free Monte Carlo
    rng = np.random.default_rng(6)
    x = rng.normal(2.919547, 0.000798, (20_000, 40))
    p = stats.ttest_1samp(x, 2.92, axis=1, alternative="less").pvalue
    power = sequential.fixed_power(40, 2.919547, 0.000798, 2.92, 0.01)
    assert power == pytest.approx(np.mean(p < 0.01), abs=0.01)
    n = sequential.fixed_n_for_power(power, 2.919547, 0.000798, 2.92, 0.01)
    assert n == 40


def test_benchmark_smoke():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_sequential.py"), "--batches=2000", "--plans=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "type I, futility ignored" in out.stdout and "expected runs at the target" in out.stdout
