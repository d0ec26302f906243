"""Budget sizing (Chinchilla) and the data a run has."""

import json
import math

import pytest

from fmforge.hardware import get_hardware
from fmforge.plan.errors import PlanError
from fmforge.plan.sizing import chinchilla_loss, data_tokens_from_run, fitted_optimum, size_for_budget


def test_chinchilla_optimum_and_its_published_anchor():
    # Chinchilla itself: 70B params on 1.4T tokens, 20 tokens/param, C = 6·N·D = 5.88e23
    h100 = get_hardware("h100-sxm")
    gpu_hours = 5.88e23 / (0.4 * h100.peak_flops) / 3600
    big, small = size_for_budget(h100, 0.4, gpu_hours=gpu_hours).options
    assert big.params == pytest.approx(70e9, rel=1e-6) and big.tokens == pytest.approx(1.4e12, rel=1e-6)
    assert small.params == pytest.approx(35e9, rel=1e-6) and small.tokens_per_param == pytest.approx(80)
    assert small.train_flops == big.train_flops  # the same compute, half the serving cost
    assert small.inference_flops_per_token == big.inference_flops_per_token / 2


def test_four_times_the_budget_doubles_params_and_tokens():
    h100 = get_hardware("h100-sxm")
    one = size_for_budget(h100, 0.4, budget_usd=10_000).options[0]
    four = size_for_budget(h100, 0.4, budget_usd=40_000).options[0]
    assert four.params == pytest.approx(2 * one.params) and four.tokens == pytest.approx(2 * one.tokens)


def test_fitted_optimum_minimises_the_fit():
    n, d = fitted_optimum(1e22)
    assert 6 * n * d == pytest.approx(1e22)
    for f in (0.8, 1.25):  # any other split of the same compute scores worse
        assert chinchilla_loss(n, d) < chinchilla_loss(n * f, d / f)
    assert 50 < d / n < 90  # well above 20 (Besiroglu et al. 2024)


def test_data_limited_model_is_priced():
    h100 = get_hardware("h100-sxm")
    s = size_for_budget(h100, 0.4, budget_usd=50_000, data_tokens=5e10)
    big = s.options[0]
    assert big.epochs_of_data == pytest.approx(big.tokens / 5e10)
    assert big.more_tokens_needed == pytest.approx(big.tokens / 4 - 5e10)
    # 4 epochs × 5e10 = 2e11 tokens → 1e10 params; 6·N·D = 1.2e22 FLOPs / (0.4 × 989e12) / 3600 = 8,426 h
    note = s.data_notes[-1]
    assert note.startswith("Data-limited") and "1e+10-parameter" in note and "8,426" in note


def test_data_tokens_from_the_run_stages(tmp_path):
    assert data_tokens_from_run(tmp_path) is None
    (tmp_path / "data").mkdir()
    card = {"splits": {"train": {"bytes": 4_000_000}, "val": {"bytes": 1000}}}
    (tmp_path / "data" / "data_card.json").write_text(json.dumps(card))
    n, source = data_tokens_from_run(tmp_path)
    assert n == 1_000_000 and "estimated" in source
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "meta.json").write_text(json.dumps({"dtype": "uint16", "train_tokens": 123_456}))
    assert data_tokens_from_run(tmp_path)[0] == 123_456
    (tmp_path / "tokens" / "meta.json").write_text("{not json")
    with pytest.raises(PlanError, match="meta.json"):
        data_tokens_from_run(tmp_path)


def test_bad_budgets():
    with pytest.raises(PlanError, match="give a budget"):
        size_for_budget(get_hardware("l4"), 0.4)
    with pytest.raises(PlanError, match="price per GPU-hour above 0"):
        size_for_budget(get_hardware("l4", price_per_hour=0), 0.4, budget_usd=100)
    assert math.isfinite(size_for_budget(get_hardware("l4", price_per_hour=0), 0.4, gpu_hours=10).compute_flops)
