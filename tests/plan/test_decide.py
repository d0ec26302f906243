"""Train, customize or buy: the arithmetic behind each option, and how it is read."""

import pytest

from fmforge.hardware import get_hardware
from fmforge.model.counting import count_params, from_hf_config, lora_flops_per_token
from fmforge.plan.decide import HOURS_PER_MONTH, compare_options

QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
            "max_position_embeddings": 4096}


def _options(**kw):
    args = dict(data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1)
    d = compare_options(get_hardware(kw.pop("gpu", "l4")), **{**args, **kw})
    return d, {o.option: o for o in d.options}


def test_buy_is_tokens_times_price_and_owning_is_always_on_gpus():
    d, o = _options()
    assert o["buy"].monthly_usd == pytest.approx(5e8 / 1e6 * 3) and o["buy"].one_time_usd == 0
    l4 = get_hardware("l4")
    for own in (o["train"], o["customize"]):
        assert own.monthly_usd == pytest.approx(own.serve_gpus * HOURS_PER_MONTH * l4.price_per_hour)
        assert own.total_usd == pytest.approx(own.one_time_usd + 12 * own.monthly_usd)
        assert own.payback_months == pytest.approx(own.one_time_usd / (o["buy"].monthly_usd - own.monthly_usd))


def test_more_traffic_costs_buyers_linearly_and_owners_in_whole_gpus():
    _, small = _options(monthly_tokens=1e12)
    _, large = _options(monthly_tokens=2e12)
    assert large["buy"].monthly_usd == pytest.approx(2 * small["buy"].monthly_usd)
    # 1e12 tokens × 2 × 8e9 FLOPs / (121e12 × 0.1) / 3600 = 367,309 GPU-hours a month = 504 L4s always on
    assert small["customize"].serve_gpus == 504 and large["customize"].serve_gpus == 1007
    assert large["customize"].one_time_usd == small["customize"].one_time_usd  # fine-tuning does not change


def test_lora_cost_is_its_flops_over_the_data():
    _, o = _options()
    # 2 epochs × 2e8 tokens × 4 × 8e9 FLOPs / (0.40 × 121e12) / 3600 = 73.46 GPU-hours, 3.1 days on one L4
    assert o["customize"].gpu_hours == pytest.approx(73.46, rel=1e-3)
    assert o["customize"].time_to_first_model_days == pytest.approx(73.46 / 24, rel=1e-3)
    _, twice = _options(lora_epochs=4.0)
    assert twice["customize"].gpu_hours == pytest.approx(2 * o["customize"].gpu_hours)
    arch = from_hf_config(QWEN2_7B)
    _, hf = _options(base_params=count_params(arch).total, base_arch=arch, gpu="h100-sxm", num_gpus=8)
    assert hf["customize"].flops_per_token == lora_flops_per_token(arch)


def test_a_toy_model_is_not_crowned_cheapest():
    d, o = _options()
    assert o["train"].model_params == pytest.approx(1e7) and o["train"].total_usd < o["customize"].total_usd
    assert "not a like-for-like alternative" in d.reasoning[-1] and "cheapest is customize" in d.reasoning[-1]


def test_a_budget_beyond_the_data_is_capped_by_the_data():
    _, o = _options(gpu="h100-sxm", num_gpus=8, budget_usd=100_000)
    assert o["train"].model_params == pytest.approx(4 * 2e8 / 20)  # 4 epochs at 20 tokens/param
    assert o["train"].one_time_usd < 100_000


def test_a_base_too_big_for_the_gpus_given_runs_on_enough():
    _, o = _options(base_params=4.05e11)
    # 2 bytes × 405e9 × 1.3 = 1,053 GB over (24 − 1) × 0.92 = 21.2 GB usable → 50 L4s
    assert o["customize"].train_gpus == 50
    assert o["customize"].time_to_first_model_days == pytest.approx(o["customize"].gpu_hours / 50 / 24)
