"""The scaling law's arithmetic (plan/scaling.py) against outside references:
Hoffmann et al. 2022's published exponents of the compute-optimal frontier, the
optimum checked by perturbing it (no formula of the code restated), numpy's
percentiles for the bootstrap interval, and hand-worked ladders for the backtest's
widening, the repetition limit and the interpolation between real shapes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fmforge.plan.errors import PlanError
from fmforge.plan.scaling import (
    CHINCHILLA,
    ScalingLaw,
    Shape,
    backtest_widening,
    interval,
    ladder_prediction,
    read_ladder,
)


def test_chinchilla_is_the_published_approach_3_fit():
    # Hoffmann et al. 2022, eq. 10: E = 1.69, A = 406.4, B = 410.7, alpha = 0.34, beta = 0.28
    assert CHINCHILLA.to_dict() == {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28,
                                    "tokens_per_param": None}
    # Chinchilla itself, 70B on 1.4T tokens, by hand: 1.69 + 406.4 / 7e10^0.34 + 410.7 / 1.4e12^0.28
    #   7e10^0.34 = e^(0.34 × 24.972) = 4,867.6; 1.4e12^0.28 = e^(0.28 × 27.967) = 2,514.5
    assert CHINCHILLA.predict(7e10, 1.4e12) == pytest.approx(1.69 + 406.4 / 4867.6 + 410.7 / 2514.5, rel=1e-4)
    assert CHINCHILLA.predict(7e10, 1.4e12) == pytest.approx(1.937, abs=1e-3)


def test_the_two_variable_optimum_follows_the_published_exponents():
    """Hoffmann et al. 2022, Table 2, Approach 3: N_opt ∝ C^0.46, D_opt ∝ C^0.54."""
    n1, d1 = CHINCHILLA.optimum(1e22)
    n2, d2 = CHINCHILLA.optimum(1e24)
    assert math.log(n2 / n1) / math.log(100) == pytest.approx(0.46, abs=0.01)
    assert math.log(d2 / d1) / math.log(100) == pytest.approx(0.54, abs=0.01)
    assert 6 * n1 * d1 == pytest.approx(1e22)


@pytest.mark.parametrize("compute", [1e18, 1e22, 5.76e23])
def test_the_optimum_is_the_lowest_loss_for_its_compute(compute):
    n, d = CHINCHILLA.optimum(compute)
    assert 6 * n * d == pytest.approx(compute)
    best = CHINCHILLA.predict(n, d)
    for k in (0.8, 0.95, 1.05, 1.25):  # the same compute, moved along C = 6·N·D
        assert CHINCHILLA.predict(n * k, d / k) > best
    # in 8 FLOPs per parameter and token the same compute buys 6/8 of the tokens×parameters
    n8, d8 = CHINCHILLA.optimum(compute, flops_per_param_token=8.0)
    assert 8 * n8 * d8 == pytest.approx(compute)


def test_the_one_variable_optimum_keeps_its_rule():
    law = ScalingLaw(E=0.9, A=12.0, alpha=0.3, tokens_per_param=20.0)
    n, d = law.optimum(1.2e16)  # 6 × N × 20N = 120·N² = 1.2e16 → N = 1e7, D = 2e8
    assert n == pytest.approx(1e7) and d == pytest.approx(2e8)


def test_the_one_variable_law_predicts_only_at_its_rule():
    law = ScalingLaw(E=0.9, A=12.0, alpha=0.3, tokens_per_param=20.0)
    # 0.9 + 12 / 1e6^0.3 = 0.9 + 12 / 63.0957 = 1.090187
    assert law.predict(1e6) == pytest.approx(1.090187, rel=1e-6)
    assert law.predict(1e6, 2e7) == law.predict(1e6) == law.predict(1e6, 2.09e7)  # within 5% of 20 per param
    with pytest.raises(ValueError, match="fitted to models trained on 20 tokens per parameter; 22,000,000 tokens "
                                         "for 1,000,000 parameters is 22 per parameter"):
        law.predict(1e6, 2.2e7)
    with pytest.raises(ValueError, match="positive parameter count, got 0"):
        law.predict(0)
    two = ScalingLaw(E=1.0, A=10.0, alpha=0.5, B=100.0, beta=0.5)
    assert two.predict(1e4, 1e6) == pytest.approx(1.0 + 10 / 100 + 100 / 1000)
    for tokens in (None, 0, -5.0):
        with pytest.raises(ValueError, match="needs the number of training tokens"):
            two.predict(1e4, tokens)
    assert not two.one_variable and law.one_variable
    assert ScalingLaw.from_dict({**two.to_dict(), "extra": 1}) == two
    assert ScalingLaw.from_dict({"E": 1, "A": 2, "alpha": 0.3}) == ScalingLaw(1, 2, 0.3)


@pytest.mark.parametrize("law, named", [
    (ScalingLaw(E=1, A=10, alpha=0.0, B=5, beta=0.3), "alpha = 0"),
    (ScalingLaw(E=1, A=10, alpha=0.3, B=5, beta=-0.1), "beta = -0.1"),
    (ScalingLaw(E=1, A=-1, alpha=0.3, B=5, beta=0.3), "alpha = 0.3"),
    (ScalingLaw(E=1, A=10, alpha=0.3, B=0, beta=0.3), "beta = 0.3"),
    (ScalingLaw(E=1, A=10, alpha=-0.2, tokens_per_param=20), "alpha = -0.2"),
])
def test_a_law_that_does_not_fall_with_scale_has_no_optimum(law, named):
    with pytest.raises(PlanError, match=f"the ladder's fitted law has no optimum: {named} \\(a term"):
        law.optimum(1e20)
    with pytest.raises(PlanError, match="run `fmforge ladder CONFIG` again"):
        law.optimum_over(1e20, [Shape(1e6, 2e6, 6e6, {"d_model": 64, "n_layers": 2})])


def test_the_one_variable_law_ignores_its_unused_data_term():
    law = ScalingLaw(E=1, A=10, alpha=0.3, B=0.0, beta=0.0, tokens_per_param=20)
    assert law.optimum(1.2e16)[0] == pytest.approx(1e7)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="compute must be positive"):
            law.optimum(bad)
        with pytest.raises(ValueError, match="compute must be positive"):
            law.optimum_over(bad, [Shape(1e6, 2e6, 6e6, {"d_model": 64, "n_layers": 2})])
    with pytest.raises(ValueError, match="no shapes"):
        law.optimum_over(1e15, [])


def _shape(n: float, d_model: int) -> Shape:
    # a synthetic family: FLOPs per token = 6·N exactly, twice N in all
    return Shape(n, 2 * n, 6 * n, {"d_model": d_model, "n_layers": 2, "n_heads": 2})


SHAPES = [_shape(4e6, 128), _shape(1e6, 64), _shape(16e6, 256)]  # given out of order on purpose


def test_the_one_variable_optimum_interpolates_between_the_shapes_around_it():
    law = ScalingLaw(E=1, A=10, alpha=0.3, tokens_per_param=20)
    # cost of N trained by the rule: 20·N·6N = 120·N²; 1.5e6 parameters cost 2.7e14
    opt = law.optimum_over(120 * 1.5e6 ** 2, SHAPES)
    assert opt["non_embedding_params"] == pytest.approx(1.5e6)
    assert opt["tokens"] == pytest.approx(3e7) and opt["flops_per_token"] == pytest.approx(9e6)
    assert opt["params"] == pytest.approx(3e6) and opt["compute_flops"] == pytest.approx(2.7e14)
    # log(1.5) / log(4) = 0.29 of the way from 1M to 4M: the nearer is 1M, costing 1.2e14 / 2.7e14 = 44%
    assert opt["shape"]["d_model"] == 64
    assert opt["how"] == ("between the family's shapes d_model 64 x 2 layers (1,000,000 non-embedding parameters) "
                          "and d_model 128 x 2 layers (4,000,000 non-embedding parameters) (interpolated); the "
                          "nearer, d_model 64 x 2 layers (1,000,000 non-embedding parameters), trained by the rule "
                          "costs 44% of the budget")
    upper = law.optimum_over(120 * 8e6 ** 2, SHAPES)  # 8M: between 4M and 16M, nearer 16M (t = 0.5 → the larger)
    assert upper["non_embedding_params"] == pytest.approx(8e6)
    assert "between the family's shapes d_model 128" in upper["how"] and upper["shape"]["d_model"] == 256
    exact = law.optimum_over(120 * 4e6 ** 2, SHAPES)  # exactly a shape's cost
    assert exact["non_embedding_params"] == pytest.approx(4e6) and exact["shape"]["d_model"] == 128
    assert "costs 100% of the budget" in exact["how"]


def test_beyond_the_family_the_optimum_is_extrapolated_along_its_end():
    law = ScalingLaw(E=1, A=10, alpha=0.3, tokens_per_param=20)
    small = law.optimum_over(120 * 0.5e6 ** 2, SHAPES)
    assert small["non_embedding_params"] == pytest.approx(0.5e6) and small["shape"]["d_model"] == 64
    assert small["how"] == ("beyond the family's smallest shape d_model 64 x 2 layers (1,000,000 non-embedding "
                            "parameters) (extrapolated)")
    big = law.optimum_over(120 * 64e6 ** 2, SHAPES)
    assert big["non_embedding_params"] == pytest.approx(64e6) and big["shape"]["d_model"] == 256
    assert big["how"].startswith("beyond the family's largest shape d_model 256")
    one = law.optimum_over(120 * 3e6 ** 2, [_shape(1e6, 64)])  # one shape: FLOPs per token scaled with N
    assert one["non_embedding_params"] == pytest.approx(3e6) and one["params"] == pytest.approx(6e6)
    assert one["flops_per_token"] == pytest.approx(1.8e7) and one["tokens"] == pytest.approx(6e7)
    assert one["how"] == "scaled from d_model 64 x 2 layers (1,000,000 non-embedding parameters)"


def test_the_two_variable_optimum_is_the_shape_of_lowest_loss_on_what_the_budget_buys():
    law = ScalingLaw(E=1.0, A=100.0, alpha=0.5, B=1000.0, beta=0.5)
    compute = 6e15

    def loss(n):  # each shape trained on compute / 6N tokens, the law written out
        return 1.0 + 100.0 / math.sqrt(n) + 1000.0 / math.sqrt(compute / (6 * n))

    # 1M: 0.1 + 1000/31,623 = 0.132; 4M: 0.05 + 1000/15,811 = 0.113; 16M: 0.025 + 1000/7,906 = 0.151
    best_n = min((s.non_embedding_params for s in SHAPES), key=loss)
    opt = law.optimum_over(compute, SHAPES)
    assert opt["non_embedding_params"] == best_n == 4e6
    assert opt["tokens"] == pytest.approx(compute / 2.4e7) and opt["params"] == 8e6
    assert opt["how"].startswith("the family's shape d_model 128 x 2 layers") and \
        opt["how"].endswith("of lowest predicted loss, trained on what the budget buys")
    assert law.optimum_over(6e10, SHAPES)["how"].startswith("the family's smallest shape d_model 64")
    assert law.optimum_over(6e20, SHAPES)["how"].startswith("the family's largest shape d_model 256")


def test_the_interval_is_numpys_linear_percentile():
    laws = [ScalingLaw(E=e, A=0.0, alpha=0.5, B=0.0, beta=0.5) for e in np.linspace(1.0, 2.0, 37)[::-1]]
    values = [law.predict(1e6, 1e6) for law in laws]
    assert interval(laws, 1e6, 1e6) == pytest.approx(tuple(np.percentile(values, [5, 95])))
    assert interval(laws, 1e6, 1e6, level=0.5) == pytest.approx(tuple(np.percentile(values, [25, 75])))
    single = [ScalingLaw(E=1.5, A=0.0, alpha=0.5, B=0.0, beta=0.5)]
    assert interval(single, 1e6, 1e6) == (1.5, 1.5)
    with pytest.raises(ValueError, match="no bootstrap fits"):
        interval([], 1e6, 1e6)


def test_read_ladder(tmp_path):
    assert read_ladder(tmp_path) is None
    (tmp_path / "ladder").mkdir()
    (tmp_path / "ladder" / "ladder.json").write_text(json.dumps({"law": {"E": 1}}))
    assert read_ladder(tmp_path) == {"law": {"E": 1}}


def test_the_backtest_widens_with_the_distance_in_log_n():
    ladder = {"rungs": [{"non_embedding_params": 2.5e5}, {"non_embedding_params": 1e6}],
              "backtest": {"error": -0.02, "reach": 2.0}}
    # 8× the largest rung is three doublings, the backtest reached one: 3 × 2%
    assert backtest_widening(ladder, 8e6) == pytest.approx(0.06)
    assert backtest_widening(ladder, 1.5e6) == pytest.approx(0.02)  # log2(1.5) = 0.58 < 1: the error itself
    assert backtest_widening(ladder, 5e5) == pytest.approx(0.02)  # inside the rungs
    assert backtest_widening({**ladder, "backtest": {"error": 0.02, "reach": 1.0}}, 8e6) == pytest.approx(0.02)
    assert backtest_widening({**ladder, "backtest": {"error": 0.02}}, 8e6) == pytest.approx(0.02)
    assert backtest_widening({**ladder, "backtest": {"error": None}}, 8e6) is None
    assert backtest_widening({"rungs": []}, 8e6) is None


ONE_VAR = {"E": 0.9, "A": 12.0, "alpha": 0.3, "tokens_per_param": 20.0}


def _ladder(**kw):
    base = {"law": ONE_VAR, "rungs": [{"non_embedding_params": 1e5, "epochs": 0.4},
                                      {"non_embedding_params": 5e5, "epochs": 0.9}],
            "bootstrap": [{**ONE_VAR, "E": e} for e in (0.88, 0.89, 0.9, 0.91, 0.92)]}
    return {**base, **kw}


def test_a_prediction_reports_how_far_it_reaches_and_its_interval():
    out = ladder_prediction(_ladder(), 1e6, 123.0)  # tokens ignored: trained by the rule
    # 0.9 + 12 / 1e6^0.3 = 1.090187
    assert out["bits_per_byte"] == pytest.approx(1.090187, rel=1e-6)
    assert out["tokens"] == 2e7 and out["extrapolation"] == 2.0 and out["warnings"] == []
    # the bootstrap E's 0.88-0.92: 5th and 95th percentiles of five values, 0.882 and 0.918
    assert out["interval_90"] == pytest.approx([0.882 + 0.190187, 0.918 + 0.190187], rel=1e-6)
    assert "backtest_error" not in out and "epochs" not in out
    assert ladder_prediction(_ladder(rungs=[{"non_embedding_params": 3e5}]), 1e6, None)["extrapolation"] == 3.333


def test_a_two_variable_prediction_needs_tokens():
    law = {"E": 1.0, "A": 10.0, "alpha": 0.5, "B": 100.0, "beta": 0.5}
    assert ladder_prediction({"law": law}, 1e4, None) == {"non_embedding_params": 1e4, "warnings": [],
                                                          "note": "the two-variable law needs a token count"}
    out = ladder_prediction({"law": law}, 1e4, 1e6)
    assert out["bits_per_byte"] == pytest.approx(1.2) and out["tokens"] == 1e6


def test_repeating_the_data_warns_past_one_pass_and_declines_past_four():
    # 1e6 parameters by the rule: 2e7 tokens
    fresh = ladder_prediction(_ladder(data_tokens=2e7), 1e6, None)
    assert fresh["epochs"] == 1.0 and fresh["warnings"] == [] and "bits_per_byte" in fresh
    twice = ladder_prediction(_ladder(data_tokens=1e7), 1e6, None)
    assert twice["epochs"] == 2.0 and twice["data_tokens"] == 1e7 and "bits_per_byte" in twice
    assert twice["warnings"] == [
        "this model would pass over the run's 10M training tokens 2.0 times: the law predicts it as if every "
        "token were fresh; up to ~4 epochs repeated tokens are worth nearly as much (Muennighoff et al. 2023), "
        "so expect it a little worse than predicted"]
    four = ladder_prediction(_ladder(data_tokens=5e6), 1e6, None)  # exactly 4 passes: still predicted
    assert four["epochs"] == 4.0 and "bits_per_byte" in four
    over = ladder_prediction(_ladder(data_tokens=4e6), 1e6, None)  # 5 passes
    assert "bits_per_byte" not in over and "interval_90" not in over
    assert over["note"] == "not predicted: repeats its data 5.0x"
    assert over["warnings"][0].startswith(
        "not predicted: a model of 1M non-embedding parameters trained on 20M tokens would pass over the run's "
        "4M training tokens 5.0 times; past ~4 epochs")
    assert "(its rungs saw their data at most 0.9 times)" in over["warnings"][0]


def test_a_backtest_miss_widens_the_interval_and_past_three_percent_is_a_warning():
    ladder = _ladder(backtest={"error": 0.05, "reach": 5.0})
    out = ladder_prediction(ladder, 1e6, None)  # 2× the largest rung, within the backtest's reach of 5×
    p = out["bits_per_byte"]
    assert out["backtest_error"] == 0.05
    assert out["interval_90"] == pytest.approx([p * 0.95, p * 1.05])
    assert out["interval_bootstrap"] == pytest.approx([0.882 + 0.190187, 0.918 + 0.190187], rel=1e-6)
    assert out["warnings"] == ["on your data, this ladder missed its own largest rung by +5.0% (the law fitted "
                               "without it): do not trust it at 2x; the interval is widened to ±5.0%"]
    small = ladder_prediction(_ladder(backtest={"error": -0.001, "reach": 5.0}), 1e6, None)
    assert small["warnings"] == [] and "interval_bootstrap" not in small  # the bootstrap's is wider already
    at = ladder_prediction(_ladder(backtest={"error": 0.03, "reach": 5.0}), 1e6, None)
    assert at["warnings"] == []  # 3% is within what a ladder is held to
    bare = ladder_prediction(_ladder(bootstrap=[], backtest={"error": -0.04, "reach": 5.0}), 1e6, None)
    assert "interval_90" not in bare
    assert bare["warnings"] == ["on your data, this ladder missed its own largest rung by -4.0% (the law fitted "
                                "without it): do not trust it at 2x"]


def test_the_two_variable_optimum_trains_each_shape_on_what_its_real_flops_buy():
    """A shape whose FLOPs per token are 4x its 6·N (a wide head, long context) gets a quarter of the
    tokens 6·N would promise; the law must see those."""
    law = ScalingLaw(E=1.0, A=100.0, alpha=0.5, B=1000.0, beta=0.5)
    small = Shape(1e6, 2e6, 6e6, {"d_model": 64, "n_layers": 2})
    costly = Shape(4e6, 8e6, 4 * 6 * 4e6, {"d_model": 128, "n_layers": 2})
    # 6e15 FLOPs: small trains 1e9 tokens, 0.1 + 1000/31,623 = 0.132; costly 6.25e7 tokens,
    # 0.05 + 1000/7,906 = 0.176 (at 6·N it would have looked like 2.5e8 tokens and 0.113)
    opt = law.optimum_over(6e15, [small, costly])
    assert opt["shape"]["d_model"] == 64 and opt["tokens"] == pytest.approx(1e9)
