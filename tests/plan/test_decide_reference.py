"""Train, customize or buy, checked against figures worked out by hand from the
published numbers: Chinchilla's compute and size (Hoffmann et al. 2022), the
catalogue's datasheet peaks and memories, the MFU table and the serving rule of
docs/planner.md. Every expected number below is written out, not recomputed."""

import pytest

from fmforge.hardware import get_hardware
from fmforge.model.counting import count_params, from_hf_config, lora_flops_per_token
from fmforge.plan.decide import compare_options, replica_gpus, serving_cost
from fmforge.plan.errors import PlanError

H100 = get_hardware("h100-sxm")  # 989 TFLOP/s bf16, 80 GB, $2.99/h
L4 = get_hardware("l4")  # 121 TFLOP/s bf16, 24 GB, $0.80/h

# Chinchilla: 70B parameters on 1.4T tokens, 5.76e23 FLOPs (Hoffmann et al. 2022, Table 3).
CHINCHILLA_FLOPS = 5.76e23
# those FLOPs on H100s at MFU 0.4: 5.76e23 / (0.4 × 989e12) / 3600 = 404,449 GPU-hours, × $2.99
CHINCHILLA_H100_HOURS = 404_449
CHINCHILLA_BUDGET = 404_448.94 * 2.99  # $1,209,302

QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
            "max_position_embeddings": 4096}


def _by_option(decision):
    return {o.option: o for o in decision.options}


def test_chinchillas_compute_buys_chinchilla_on_enough_gpus_for_its_state():
    d = compare_options(H100, data_tokens=1.4e12, base_params=7e10, api_price_per_m=3, monthly_tokens=1e6,
                        num_gpus=8, budget_usd=CHINCHILLA_BUDGET, mfu=0.4)
    train = _by_option(d)["train"]
    # the published model: 70B on 1.4T tokens (20 tokens per parameter: 69.3B on 1.386T)
    assert train.model_params == pytest.approx(70e9, rel=0.02)
    assert train.tokens == pytest.approx(1.4e12, rel=0.02)
    assert train.gpu_hours == pytest.approx(CHINCHILLA_H100_HOURS, rel=1e-4)
    assert train.one_time_usd == pytest.approx(1_209_302, rel=1e-4)  # the whole budget is spent
    assert train.mfu == 0.4
    # 16 bytes/param × 69.3B = 1,109 GB over (80 − 1) × 0.92 = 72.68 GB usable: 15.3 → 16 GPUs, not the 8 given
    assert train.train_gpus == 16
    assert train.time_to_first_model_days == pytest.approx(404_449 / 16 / 24, rel=1e-4)  # 1,053 days
    assert d.reasoning[0] == ("Train: $1,209,302 buys 404,449 h100-sxm GPU-hours = 5.76e+23 FLOPs at MFU 0.40: "
                              "compute-optimal is 6.93e+10 parameters on 1.39e+12 tokens (1.0 epochs of your data).")
    assert d.reasoning[1] == ("Train: 1,109 GB of weights, gradients and AdamW state need at least 16 h100-sxm GPUs "
                              "under FSDP (not 8); priced on 16.")
    # one pass: 1.386T of 1.4T tokens
    assert "0.99 epoch(s) of yours" in train.needs
    assert train.flops_per_token == pytest.approx(6 * 69.28e9, rel=1e-3)


def test_without_an_mfu_each_option_takes_the_published_size_class():
    d = compare_options(H100, data_tokens=1.4e12, base_params=7e10, api_price_per_m=3, monthly_tokens=1e6,
                        num_gpus=8, budget_usd=CHINCHILLA_BUDGET)
    o = _by_option(d)
    # 20B-200B parameters: 0.38 (docs/planner.md); at 0.38 the budget buys 5.472e23 FLOPs → 67.5B parameters
    assert o["train"].mfu == 0.38 and o["customize"].mfu == 0.38
    assert o["train"].model_params == pytest.approx(67.53e9, rel=1e-3)
    # 16 × 67.5B = 1,080 GB / 72.68 GB = 14.9 → 15 GPUs
    assert o["train"].train_gpus == 15
    small = _by_option(compare_options(L4, data_tokens=2e8, base_params=5e7, api_price_per_m=3,
                                       monthly_tokens=1e6, num_gpus=1))
    # below 100M parameters: 0.20; a 10M model trained on the data (2e8 / 20), and a 50M base
    assert small["train"].mfu == 0.20 and small["customize"].mfu == 0.20
    mid = _by_option(compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3,
                                     monthly_tokens=1e6, num_gpus=1))
    assert mid["customize"].mfu == 0.40  # 1B-20B


def test_a_70b_model_is_served_on_three_h100s_per_replica():
    # 2 bytes × 70e9 × 1.3 = 182 GB over 72.68 GB usable per H100: 2.5 → 3 GPUs
    assert replica_gpus(70e9, H100) == 3
    # 2 × 8e9 × 1.3 = 20.8 GB fits one L4 (23 × 0.92 = 21.16 GB); 2 × 8.2e9 × 1.3 = 21.3 GB does not
    assert replica_gpus(8e9, L4) == 1 and replica_gpus(8.2e9, L4) == 2
    assert replica_gpus(1e3, L4) == 1  # a tiny model still needs a GPU
    # light traffic: one replica, always on: 3 × 730 h × $2.99
    assert serving_cost(70e9, 1e6, H100) == (pytest.approx(3 * 730 * 2.99), 3)


def test_heavy_traffic_adds_whole_replicas():
    # 1.3e10 tokens × 2 × 70e9 FLOPs = 1.82e21 FLOPs / (0.10 × 989e12) / 3600 = 5,112 GPU-hours a month;
    # a replica of 3 GPUs gives 3 × 730 = 2,190: 2.33 → 3 replicas = 9 GPUs (7 GPUs would hold no whole replica)
    monthly, gpus = serving_cost(70e9, 1.3e10, H100)
    assert gpus == 9 and monthly == pytest.approx(9 * 730 * 2.99)
    d = compare_options(H100, data_tokens=1.4e12, base_params=7e10, api_price_per_m=3, monthly_tokens=1.3e10,
                        num_gpus=8, mfu=0.4)
    assert _by_option(d)["customize"].serve_gpus == 9 and _by_option(d)["customize"].replica_gpus == 3
    # 5.5e9 tokens: 2,163 GPU-hours, just under one replica's 2,190: still 3 GPUs
    assert serving_cost(70e9, 5.5e9, H100)[1] == 3
    # an 8B model on L4s: 5e8 tokens × 1.6e10 = 8e18 / (0.1 × 121e12) / 3600 = 183.7 h: one L4
    assert serving_cost(8e9, 5e8, L4) == (pytest.approx(730 * 0.80), 1)


def test_owning_pays_back_only_when_it_costs_less_a_month_than_buying():
    args = dict(data_tokens=2e8, base_params=8e9, api_price_per_m=3, num_gpus=1)
    o = _by_option(compare_options(L4, monthly_tokens=5e8, **args))
    # buy: 5e8 / 1e6 × $3 = $1,500 a month; customize: one L4 always on, 730 × $0.80 = $584
    # one-time: 2 epochs × 2e8 × 4 × 8e9 / (0.40 × 121e12) / 3600 = 73.46 GPU-hours × $0.80 = $58.77
    assert o["buy"].monthly_usd == 1500.0  # exactly: 500 millions × $3
    assert o["customize"].monthly_usd == pytest.approx(584)
    assert o["customize"].one_time_usd == pytest.approx(58.77, rel=1e-3)
    assert o["customize"].payback_months == pytest.approx(58.77 / (1500 - 584), rel=1e-3)  # 0.064 months
    # 1e8 tokens: buying costs $300 a month, less than the $584 of serving: owning never pays back
    cheap = _by_option(compare_options(L4, monthly_tokens=1e8, **args))
    assert cheap["customize"].payback_months is None and cheap["train"].payback_months is None
    # 50 cents a month saved (buying 194.83M tokens costs $584.50): the one-time $58.77 pays back in 117.5 months
    slow = _by_option(compare_options(L4, monthly_tokens=584.5 / 3 * 1e6, **args))
    assert slow["customize"].payback_months == pytest.approx(58.77 / 0.5, rel=1e-3)
    # exactly the same monthly cost (584 / 3 × 1e6 tokens): no saving, no payback either
    even = _by_option(compare_options(L4, monthly_tokens=584 / 3 * 1e6, **args))
    assert even["buy"].monthly_usd == pytest.approx(584)
    assert even["customize"].payback_months is None or even["customize"].payback_months > 1e6


def test_the_total_is_over_the_horizon_asked_for():
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1,
                        horizon_months=24)
    o = _by_option(d)
    assert d.horizon_months == 24
    assert o["buy"].total_usd == pytest.approx(24 * 1500) and o["buy"].one_time_usd == 0
    assert o["customize"].total_usd == pytest.approx(58.77 + 24 * 584, rel=1e-4)
    # train's 1e7 model ($14,016) is cheaper but 800x smaller than the base: customize is named
    assert d.reasoning[-1].startswith("Over 24 months train is cheapest ($14,016)")
    assert "800x smaller" in d.reasoning[-1] and "the cheapest is customize ($14,075)" in d.reasoning[-1]


def test_buying_is_named_cheapest_at_light_traffic():
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=1e6, num_gpus=1)
    # $3 a month for 12 months against $584 a month of serving
    assert d.reasoning[-1].startswith("Over 12 months the cheapest is buy ($36")


def test_a_trained_model_a_tenth_of_the_base_is_still_like_for_like():
    """TOY_RATIO: train is flagged only when its model is over 10x smaller than the base."""
    args = dict(data_tokens=2e8, api_price_per_m=1000, monthly_tokens=1e6, num_gpus=1, horizon_months=1)
    # 2e8 tokens / 20 = 1e7 parameters, exactly a tenth of a 1e8 base. Over one month at $1,000 per million
    # tokens owning is cheapest; both serve on one L4 ($584), and training 1e7 on 2e8 tokens
    # (1.2e16 FLOPs at MFU 0.2: $0.11) costs less than LoRA on 1e8 (1.6e17 FLOPs at 0.3: $0.98)
    at = compare_options(L4, base_params=1e8, **args)
    o = _by_option(at)
    assert o["train"].model_params == pytest.approx(1e7)
    assert o["train"].total_usd < min(o["customize"].total_usd, o["buy"].total_usd)
    assert "the cheapest is train" in at.reasoning[-1] and "like-for-like" not in at.reasoning[-1]
    # a base a little larger: the trained model is over 10x smaller, train is not crowned
    past = compare_options(L4, base_params=1.01e8, **args)
    assert "not a like-for-like alternative" in past.reasoning[-1]
    assert "10x smaller than the base" in past.reasoning[-1]
    # both name the smaller trained model
    assert any("smaller than the base you would customize" in n for n in at.reasoning)


def test_a_trained_model_as_big_as_the_base_gets_no_size_caveat():
    # 2e11 tokens / 20 = 1e10 parameters, larger than a 8e9 base
    d = compare_options(H100, data_tokens=2e11, base_params=8e9, api_price_per_m=3, monthly_tokens=1e6, num_gpus=8)
    assert _by_option(d)["train"].model_params == pytest.approx(1e10)
    assert not any("smaller than the base" in n for n in d.reasoning)
    assert any(n.startswith("Train: no budget given") and "2e+11 tokens / 20 tokens per parameter = 1e+10" in n
               for n in d.reasoning)


def test_a_budget_on_more_data_than_it_can_use_trains_on_part_of_it():
    # $1,000 of H100 at MFU 0.4: 1000 / 2.99 × 3600 × 989e12 × 0.4 = 4.76e20 FLOPs → N = 1.99e9 on 3.98e10 tokens
    d = compare_options(H100, data_tokens=1e11, base_params=8e9, api_price_per_m=3, monthly_tokens=1e6,
                        num_gpus=8, budget_usd=1000, mfu=0.4)
    train = _by_option(d)["train"]
    assert train.model_params == pytest.approx(1.992e9, rel=1e-3)
    assert train.tokens == pytest.approx(3.984e10, rel=1e-3)
    assert train.one_time_usd == pytest.approx(1000)
    assert "0.4 epoch(s) of yours" in train.needs
    assert not any("far beyond" in n for n in d.reasoning)


def test_a_budget_four_passes_over_the_data_can_use_is_not_capped_but_more_is():
    # the same $1,000 buys 3.984e10 tokens: 1e10 tokens of data is 3.98 passes (kept), 9.9e9 is 4.02 (capped)
    kw = dict(base_params=8e9, api_price_per_m=3, monthly_tokens=1e6, num_gpus=8, budget_usd=1000, mfu=0.4)
    kept = _by_option(compare_options(H100, data_tokens=1e10, **kw))["train"]
    assert kept.model_params == pytest.approx(1.992e9, rel=1e-3)
    capped_d = compare_options(H100, data_tokens=9.9e9, **kw)
    capped = _by_option(capped_d)["train"]
    # 4 passes over 9.9e9 tokens = 3.96e10 tokens at 20 per parameter: 1.98e9 parameters
    assert capped.tokens == pytest.approx(3.96e10) and capped.model_params == pytest.approx(1.98e9)
    assert any("4 epochs is far beyond the ~4" in n and "1.98e+09 parameters" in n for n in capped_d.reasoning)


def test_lora_is_priced_at_its_rank_and_epochs_on_the_gpus_that_hold_the_base():
    arch = from_hf_config(QWEN2_7B)
    n = count_params(arch).total
    kw = dict(data_tokens=2e8, base_params=n, api_price_per_m=3, monthly_tokens=1e6, num_gpus=8, base_arch=arch,
              mfu=0.4)
    r16 = _by_option(compare_options(H100, **kw))["customize"]
    r64_d = compare_options(H100, lora_rank=64, lora_epochs=3, **kw)
    r64 = _by_option(r64_d)["customize"]
    assert r64.flops_per_token == lora_flops_per_token(arch, rank=64) > r16.flops_per_token
    assert r64.tokens == pytest.approx(6e8)  # 3 epochs of 2e8 tokens
    assert r64.gpu_hours == pytest.approx(6e8 * r64.flops_per_token / (0.4 * 989e12) / 3600)
    assert r64_d.assumptions["lora_rank"] == 64 and r64_d.assumptions["lora_epochs"] == 3
    # the attention and adapter FLOPs are counted: no caveat about them
    assert not any("pass --base-hf-config" in s for s in r64_d.reasoning)
    # the frozen 7.6B base in bf16 with room: 2 × 7.6e9 × 1.3 = 19.8 GB: one GPU holds it, runs on the 8 given
    assert r16.train_gpus == 8 and r16.time_to_first_model_days == pytest.approx(r16.gpu_hours / 8 / 24)


def test_the_assumptions_are_the_documented_constants():
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=2)
    # docs/planner.md: 730 h a month, serving at 10% MFU, 2 bytes/param × 1.3, LoRA 2 epochs rank 16, 20 tokens/param
    assert d.assumptions == {"gpu": "l4", "price_per_gpu_hour": 0.80, "num_gpus": 2, "serve_mfu": 0.10,
                             "serve_memory_overhead": 1.3, "hours_per_month": 730.0, "lora_epochs": 2.0,
                             "lora_rank": 16, "tokens_per_param": 20.0}
    assert d.to_dict()["options"][2]["option"] == "buy"


@pytest.mark.parametrize("key, value, named", [
    ("data_tokens", 0, "data tokens"), ("base_params", -1.0, "base model params"), ("num_gpus", 0, "number of GPUs"),
    ("lora_epochs", 0.0, "LoRA epochs"), ("horizon_months", 0, "horizon in months"),
    ("budget_usd", 0.0, "budget in dollars"), ("mfu", -0.1, "MFU"), ("lora_rank", 0, "LoRA rank"),
    ("api_price_per_m", -1.0, "API price per million tokens"), ("monthly_tokens", -5.0, "monthly tokens"),
])
def test_each_bad_number_is_named(key, value, named):
    args = dict(data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1)
    with pytest.raises(PlanError, match=rf"^{named} must be (>|>=) 0"):
        compare_options(L4, **{**args, key: value})


def test_a_free_api_and_no_traffic_are_allowed():
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=0, monthly_tokens=0, num_gpus=1)
    o = _by_option(d)
    assert o["buy"].total_usd == 0 and "the cheapest is buy" in d.reasoning[-1]
    assert o["customize"].serve_gpus == 1  # always on, whatever the traffic


def test_on_a_cpu_every_option_takes_the_cpus_mfu():
    """A CPU's MFU is 0.40 of its bf16 peak whatever the model's size (docs/planner.md), not the GPU
    size table's 0.20 for a model under 100M parameters. (tests/plan/conftest.py pins the CPU's peak.)"""
    cpu = get_hardware("cpu")
    d = compare_options(cpu, data_tokens=2e6, base_params=5e7, api_price_per_m=3, monthly_tokens=1e6, num_gpus=1,
                        budget_usd=1.0)
    o = _by_option(d)
    assert o["train"].mfu == 0.40 and o["customize"].mfu == 0.40
    assert "at MFU 0.40" in d.reasoning[0]


def test_a_model_that_fits_one_gpu_trains_on_the_gpus_given():
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1)
    train = _by_option(d)["train"]
    # 16 bytes × 1e7 parameters = 0.16 GB: one L4 is enough, and no note says otherwise
    assert train.train_gpus == 1 and train.time_to_first_model_days == pytest.approx(train.gpu_hours / 24)
    assert not any("need at least" in n for n in d.reasoning)
    # 2e10 tokens / 20 = 1e9 parameters: 16 GB fits one L4's 21.16 GB; 3e10 → 24 GB needs 2
    assert _by_option(compare_options(L4, data_tokens=2e10, base_params=8e9, api_price_per_m=3,
                                      monthly_tokens=5e8, num_gpus=1))["train"].train_gpus == 1
    big = compare_options(L4, data_tokens=3e10, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1)
    assert _by_option(big)["train"].train_gpus == 2
    assert any(n.startswith("Train: 24 GB of weights") and "at least 2 l4 GPUs" in n for n in big.reasoning)


def test_the_notes_say_how_each_option_was_priced():
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1)
    o = _by_option(d)
    assert o["train"].needs == ("2e+08 tokens of text (1 epoch(s) of yours), an ML team, serving infrastructure")
    assert o["customize"].needs == ("an open-weight base model whose licence fits, task examples, serving "
                                    "infrastructure")
    assert o["buy"].needs == "an API contract; data leaves your premises; no control of model updates"
    assert ("Customize: 4·N FLOPs/token through the frozen base (forward 2N, activation gradients 2N); attention "
            "and adapter FLOPs not counted: pass --base-hf-config for them.") in d.reasoning
    # the 8B base in bf16 with room (20.8 GB) fits the one L4 given: no note about more GPUs
    assert not any(n.startswith("Customize: the frozen bf16 base") for n in d.reasoning)
    big = compare_options(L4, data_tokens=2e8, base_params=4.05e11, api_price_per_m=3, monthly_tokens=5e8,
                          num_gpus=1)
    assert ("Customize: the frozen bf16 base with room for activations (1,053 GB) needs at least 50 l4 GPUs "
            "(not 1); priced on 50, or quantise it to 4 bits (QLoRA) to use fewer.") in big.reasoning


def test_the_reasoning_word_for_word():
    """The notes a user reads under the table; the figures are the hand-worked ones above: serving on one
    L4 is 12 × $584 = $7,008 over the year, plus $0.11 to train the 1e7 model or $58.77 of LoRA."""
    d = compare_options(L4, data_tokens=2e8, base_params=8e9, api_price_per_m=3, monthly_tokens=5e8, num_gpus=1)
    assert d.reasoning == [
        "Train: no budget given: the model sized to your data, 2e+08 tokens / 20 tokens per parameter = 1e+07 "
        "parameters (Chinchilla), one pass.",
        "Customize: 4·N FLOPs/token through the frozen base (forward 2N, activation gradients 2N); attention and "
        "adapter FLOPs not counted: pass --base-hf-config for them.",
        "Train: the model you could train (1e+07 params on 2e+08 tokens) is smaller than the base you would "
        "customize (8e+09 params, pretrained on far more tokens); it will know your domain but little else.",
        "Owning a model means serving it: always-on GPUs (730 h/month), replicas as the 5e+08 tokens/month need at "
        "2·N FLOPs/token and MFU 0.1, whatever the traffic; buying: 5e+08 tokens × $3 per million, nothing up "
        "front, your prompts go to the provider.",
        "Over 12 months train is cheapest ($7,008), but its 1e+07-parameter model is 800x smaller than the base: "
        "not a like-for-like alternative. Of the options with a model of that class the cheapest is customize "
        "($7,067); quality is not priced here: evaluate a customized base and the API on your own task before "
        "choosing."]
    buy = _by_option(d)["buy"]
    assert (buy.model_params, buy.one_time_usd, buy.time_to_first_model_days, buy.gpu_hours, buy.serve_gpus,
            buy.tokens, buy.flops_per_token, buy.mfu, buy.train_gpus, buy.replica_gpus, buy.payback_months) == \
        (None, 0.0, 0.0, 0.0, 0, 5e8, None, None, 0, 0, None)


def test_a_trained_model_as_big_as_the_base_is_not_called_smaller():
    # 2e11 tokens / 20 = 1e10 parameters, exactly the base's
    d = compare_options(H100, data_tokens=2e11, base_params=1e10, api_price_per_m=3, monthly_tokens=1e6, num_gpus=8)
    assert _by_option(d)["train"].model_params == 1e10
    assert not any("smaller than the base" in n for n in d.reasoning)
