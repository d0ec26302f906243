"""The scaling-law fit: it recovers laws it is given, shrugs off a diverged rung
(the Huber loss), puts the truth inside its bootstrap interval, and its
compute-optimal point is where a brute-force search finds the lowest loss."""

from __future__ import annotations

import math
import random

import pytest

from fmforge.ladder.fit import Point, bootstrap, fit_law, shared_rule
from fmforge.plan.scaling import CHINCHILLA, ScalingLaw, interval


def test_recovers_a_one_variable_law_from_its_points():
    true = ScalingLaw(E=1.2, A=40.0, alpha=0.35, tokens_per_param=20)
    points = [Point(n, 20 * n, true.predict(n)) for n in (1e4, 3e4, 1e5, 3e5, 1e6)]
    law, _, _ = fit_law(points)
    assert law.one_variable and law.tokens_per_param == pytest.approx(20)
    assert (law.E, law.A, law.alpha) == pytest.approx((1.2, 40.0, 0.35), rel=1e-3)


def test_recovers_chinchillas_law_from_a_grid_of_sizes_and_token_counts():
    points = [Point(n, d, CHINCHILLA.predict(n, d))
              for n in (1e7, 4e7, 1.6e8, 6.4e8) for d in (2e8, 1e9, 5e9)]
    assert shared_rule(points) is None  # N and D vary apart: the two-variable law
    law, _, _ = fit_law(points)
    assert not law.one_variable
    got = (law.E, law.A, law.alpha, law.B, law.beta)
    assert got == pytest.approx((1.69, 406.4, 0.34, 410.7, 0.28), rel=0.02)


def test_one_diverged_rung_barely_moves_the_fit():
    true = ScalingLaw(E=1.0, A=30.0, alpha=0.4, tokens_per_param=10)
    sizes = (1e4, 2e4, 5e4, 1e5, 2e5, 5e5)
    points = [Point(n, 10 * n, true.predict(n)) for n in sizes]
    points[3] = Point(points[3].params, points[3].tokens, points[3].loss * 1.15)  # a bad run
    law, _, _ = fit_law(points)
    # Least squares would bend toward the outlier; the Huber fit follows the rest.
    assert law.predict(1e6) == pytest.approx(true.predict(1e6), rel=0.01)


def test_the_bootstrap_interval_holds_the_truth_at_twice_the_largest_rung():
    true = ScalingLaw(E=1.1, A=25.0, alpha=0.33, tokens_per_param=20)
    rng = random.Random(5)
    sizes = (2e4, 4e4, 8e4, 1.6e5, 3.2e5, 6.4e5)
    points = [Point(n, 20 * n, true.predict(n) * (1 + rng.gauss(0, 0.004))) for n in sizes]
    law, theta, _ = fit_law(points)
    laws = bootstrap(points, theta, law.tokens_per_param, samples=60, seed=1)
    assert len(laws) >= 30  # resamples with fewer than 4 distinct sizes are left out
    lo, hi = interval(laws, 2 * sizes[-1])
    assert lo <= true.predict(2 * sizes[-1]) <= hi
    assert law.predict(2 * sizes[-1]) == pytest.approx(true.predict(2 * sizes[-1]), rel=0.02)


def test_the_optimum_is_where_a_search_along_the_compute_finds_the_lowest_loss():
    law = ScalingLaw(E=1.5, A=300.0, alpha=0.3, B=500.0, beta=0.3)
    compute = 1e20
    n_opt, d_opt = law.optimum(compute)
    assert 6 * n_opt * d_opt == pytest.approx(compute)
    best = min((law.predict(n, compute / (6 * n)), n)
               for n in (10 ** (6 + i / 200) for i in range(1200)))
    assert n_opt == pytest.approx(best[1], rel=0.02)
    one = ScalingLaw(E=1.0, A=10.0, alpha=0.3, tokens_per_param=20)
    n1, d1 = one.optimum(compute)
    assert d1 == pytest.approx(20 * n1) and 6 * n1 * d1 == pytest.approx(compute)


def test_the_one_variable_law_refuses_another_token_rule():
    one = ScalingLaw(E=1.0, A=10.0, alpha=0.3, tokens_per_param=20)
    assert one.predict(1e5, 2e6) == one.predict(1e5)
    with pytest.raises(ValueError, match="20 tokens per parameter"):
        one.predict(1e5, 1e7)


def test_too_few_sizes_or_bad_points_are_refused():
    with pytest.raises(ValueError, match="at least 3 sizes"):
        fit_law([Point(1e4, 2e5, 2.0), Point(1e4, 2e5, 1.9), Point(2e4, 4e5, 1.8)])
    with pytest.raises(ValueError, match="positive, finite"):
        fit_law([Point(1e4, 2e5, 2.0), Point(2e4, 4e5, math.nan), Point(4e4, 8e5, 1.7)])
