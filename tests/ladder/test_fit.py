"""The scaling-law fit: it recovers laws it is given, shrugs off a diverged rung
(the Huber loss), puts the truth inside its bootstrap interval, and its
compute-optimal point is where a brute-force search finds the lowest loss."""

from __future__ import annotations

import math
import random

import pytest

from fmforge.ladder.fit import Point, bootstrap, fit_law, shared_rule
from fmforge.ladder.run import SEED_NOISE, fit_ladder
from fmforge.plan.scaling import CHINCHILLA, ScalingLaw, interval, ladder_prediction


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
    laws, sigma = bootstrap(points, law, samples=60, seed=1)
    assert len(laws) == 60  # the rungs' noise is redrawn, no rung is lost: no resample is dropped
    lo, hi = interval(laws, 2 * sizes[-1])
    assert lo <= true.predict(2 * sizes[-1]) <= hi
    assert law.predict(2 * sizes[-1]) == pytest.approx(true.predict(2 * sizes[-1]), rel=0.02)


def _synthetic_ladder(rng: random.Random, sigma: float):
    """A ladder of 5 rungs doubling in size (16x from first to last, as the default
    ladder spans) drawn from a random known law, each rung's loss off the law by
    the rung-to-rung noise ``sigma`` (relative, normal in log)."""
    n0 = 10 ** rng.uniform(4, 6)
    alpha = rng.uniform(0.15, 0.6)
    true = ScalingLaw(E=rng.uniform(0.3, 1.5), A=rng.uniform(0.5, 2.0) * n0 ** alpha, alpha=alpha,
                      tokens_per_param=20)
    sizes = [n0 * 2 ** k for k in range(5)]
    points = [Point(n, 20 * n, true.predict(n) * math.exp(rng.gauss(0, sigma))) for n in sizes]
    return true, sizes, points


@pytest.mark.slow
def test_the_interval_plan_shows_holds_the_truth_at_twice_the_largest_rung_in_most_ladders():
    # Issue 29, defect 7: 200 ladders drawn from known laws with the rung-to-rung
    # noise measured on the demo corpus (one rung, three seeds: 0.77%); the 90%
    # interval `plan` shows for a model twice the largest rung must hold the true
    # value in at least 85% of them (measured: 189). The old bootstrap (resamples of
    # the rungs, refitted once from the full fit, short resamples dropped) held it
    # in 67 of the first 100. And the intervals must stay useful: not so wide that
    # holding is free (measured: a median half-width of 3.7%).
    rng = random.Random(2026)
    held, widths = 0, []
    for draw in range(200):
        true, sizes, points = _synthetic_ladder(rng, SEED_NOISE)
        ladder = fit_ladder(points, 20.0, samples=100, seed=draw)
        ladder["rungs"] = [{"non_embedding_params": n} for n in sizes]
        shown = ladder_prediction(ladder, 2 * sizes[-1], None)
        lo, hi = shown["interval_90"]
        held += lo <= true.predict(2 * sizes[-1]) <= hi
        widths.append((hi - lo) / 2 / shown["bits_per_byte"])
    assert held >= 170, f"the 90% interval held the truth in {held} of 200 ladders"
    assert sorted(widths)[100] < 0.08  # median half-width under 8% of the prediction


def test_the_backtest_predicts_the_largest_rung_from_the_others_and_widens_the_interval():
    # The four smaller rungs lie on a law exactly; the largest measured 5% below it:
    # the law fitted without it predicts it at the law's value, 1/0.95 - 1 = +5.26%
    # above what it measured (pessimistic), and every interval shown is at least
    # that wide around its prediction, with the warning issue 29 asks for.
    true = ScalingLaw(E=0.9, A=60.0, alpha=0.35, tokens_per_param=20)
    sizes = [1e4, 2e4, 4e4, 8e4, 1.6e5]
    points = [Point(n, 20 * n, true.predict(n) * (0.95 if n == sizes[-1] else 1.0)) for n in sizes]
    ladder = fit_ladder(points, 20.0, samples=100)
    bt = ladder["backtest"]
    assert bt["non_embedding_params"] == sizes[-1]
    assert bt["predicted"] == pytest.approx(true.predict(sizes[-1]), rel=1e-3)
    assert bt["error"] == pytest.approx(1 / 0.95 - 1, abs=1e-3)
    ladder["rungs"] = [{"non_embedding_params": n} for n in sizes]
    for params in (sizes[-1], 2 * sizes[-1]):
        shown = ladder_prediction(ladder, params, None)
        lo, hi = shown["interval_90"]
        p = shown["bits_per_byte"]
        assert lo <= p * (1 - 0.0526) and hi >= p * (1 + 0.0526)
        assert shown["backtest_error"] == pytest.approx(0.0526, abs=1e-3)
        assert any("missed its own largest rung by +5.3%" in w and "do not trust it" in w
                   for w in shown["warnings"])
    # further out, wider: twice the largest reaches further than the backtest did
    near = ladder_prediction(ladder, sizes[-1], None)["interval_90"]
    far = ladder_prediction(ladder, 2 * sizes[-1], None)
    assert (far["interval_90"][1] - far["interval_90"][0]) / far["bits_per_byte"] > \
        (near[1] - near[0]) / ladder_prediction(ladder, sizes[-1], None)["bits_per_byte"]


def test_a_ladder_whose_law_holds_is_not_warned_about_its_backtest():
    true = ScalingLaw(E=0.9, A=60.0, alpha=0.35, tokens_per_param=20)
    rng = random.Random(3)
    sizes = [1e4, 2e4, 4e4, 8e4, 1.6e5]
    points = [Point(n, 20 * n, true.predict(n) * (1 + rng.gauss(0, 0.002))) for n in sizes]
    ladder = fit_ladder(points, 20.0, samples=50)
    ladder["rungs"] = [{"non_embedding_params": n} for n in sizes]
    shown = ladder_prediction(ladder, 2 * sizes[-1], None)
    assert abs(ladder["backtest"]["error"]) < 0.02
    assert not any("missed its own largest rung" in w for w in shown["warnings"])
    assert shown["interval_90"][0] <= true.predict(2 * sizes[-1]) <= shown["interval_90"][1]


def test_a_prediction_that_repeats_the_data_past_four_epochs_is_declined_with_a_warning():
    # Muennighoff et al. 2023: past ~4 epochs repeated tokens are worth less and
    # less. Issue 29: a model repeating 0.5M tokens 17 times measured 18.6% worse
    # than its ladder predicted. 5 rungs at 10 tokens per parameter on 500k tokens.
    true = ScalingLaw(E=0.9, A=60.0, alpha=0.35, tokens_per_param=10)
    sizes = [2.5e4, 5e4, 1e5, 2e5, 4e5]
    points = [Point(n, 10 * n, true.predict(n)) for n in sizes]
    ladder = fit_ladder(points, 10.0, samples=20)
    ladder["rungs"] = [{"non_embedding_params": n, "epochs": 10 * n / 5e5} for n in sizes]
    ladder["data_tokens"] = 5e5
    declined = ladder_prediction(ladder, 8e5, None)  # 8M tokens over 500k: 16 epochs
    assert "bits_per_byte" not in declined and "interval_90" not in declined
    assert declined["epochs"] == pytest.approx(16.0)
    assert any("16.0 times" in w and "500k" in w for w in declined["warnings"])
    repeated = ladder_prediction(ladder, 1e5, None)  # 1M tokens over 500k: 2 epochs, within reach
    assert repeated["bits_per_byte"] == pytest.approx(true.predict(1e5), rel=1e-3)
    assert repeated["epochs"] == pytest.approx(2.0)
    assert any("2.0 times" in w for w in repeated["warnings"])  # said, not declined
    fresh = ladder_prediction(ladder, 4e4, None)  # 400k tokens over 500k: every token fresh
    assert fresh["warnings"] == [] and fresh["epochs"] == pytest.approx(0.8)


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
