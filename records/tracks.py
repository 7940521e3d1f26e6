"""The public speedrun's optimization track's statistical rules, as published, for that track's logs only.

Source of every constant: KellerJordan/modded-nanogpt, records/track_3_optimization/README.md, section
"Rules" (item 3) and "Pairwise statistical significance" (read at commit f411b3d3). They were derived
for that track's run-to-run spread; nothing here applies to our runs or the medium track by default.
"""

from __future__ import annotations

import math

# "Runs must attain below 3.28 val loss" (Rules, item 3).
TARGET = 3.28
# "a one-sided z-test assuming sigma=0.0013 that achieves p<.001 (hence 3.09 sigma = 0.004 delta below the
# target)" (Rules, item 3); the margin is what both rules compare their statistic with.
SIGMA = 0.0013
MARGIN = 0.004
# "Reducing the step count of result #12 by 200 increases the mean loss from 3.2790 (n=20) to 3.2881 (n=8)
# ... or 0.0045 per 100 steps" (Pairwise statistical significance).
SLOPE_PER_100_STEPS = 0.0045
SLOPE = SLOPE_PER_100_STEPS / 100


def batch_statistic(mean: float, n: int, target: float = TARGET) -> float:
    """(target - mean) * sqrt(n): the rule's "(3.28 - avg_loss) * num_runs**0.5", sigma assumed, so it is
    defined for a single run too."""
    return (target - mean) * math.sqrt(n)


def batch_rule(mean: float, n: int, target: float = TARGET) -> dict:
    value = batch_statistic(mean, n, target)
    return {"statistic": value, "margin": MARGIN, "sigma": SIGMA, "passes": value >= MARGIN}


def pairwise_score(loss_a: float, loss_b: float, steps_a: float, steps_b: float, n_a: int, n_b: int, slope: float):
    """The published "(final_loss_diff + exp_stepbased_loss_diff) / (1/n1 + 1/n2)**0.5": A's loss had it run
    B's steps is about loss_a + (steps_a - steps_b) * slope, so positive means B is ahead at equal steps."""
    return (loss_a - loss_b + (steps_a - steps_b) * slope) / math.sqrt(1 / n_a + 1 / n_b)
