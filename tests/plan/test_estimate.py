"""One training run's estimate: against the Llama 2 GPU-hours, and properties a
wrong time/cost formula would break."""

import pytest

from fmforge.config import config_from_dict
from fmforge.hardware import get_hardware
from fmforge.model.counting import from_hf_config, train_flops_per_token
from fmforge.plan.estimate import default_mfu, implied_mfu, make_plan, plan_for_run
from fmforge import hardware as hw_mod

LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
             "max_position_embeddings": 4096}


def test_llama2_7b_gpu_hours_anchor():
    """Llama 2 7B: 2T tokens in 184,320 A100-80GB GPU-hours (Touvron et al. 2023, Table 2).
    The MFU that implies depends on the FLOPs convention: 0.407 by kaplan (so the
    often quoted 0.40 gives 187,3xx GPU-hours, +1.6%), 0.445 by palm, 0.391 by 6nd."""
    a100, arch = get_hardware("a100-80gb"), from_hf_config(LLAMA2_7B)
    tokens, anchor = 2e12, 184_320
    implied = {c: implied_mfu(tokens * train_flops_per_token(arch, c), anchor, a100.peak_flops)
               for c in ("palm", "kaplan", "6nd")}
    assert implied["kaplan"] == pytest.approx(0.407, abs=0.001)
    assert implied["palm"] == pytest.approx(0.445, abs=0.001)
    assert implied["6nd"] == pytest.approx(0.391, abs=0.001)
    kaplan = make_plan(a100, tokens, arch, mfu=0.40, convention="kaplan")
    assert 187_300 <= kaplan["gpu_hours"] < 187_400
    assert kaplan["gpu_hours"] / anchor - 1 == pytest.approx(0.016, abs=0.001)
    palm = make_plan(a100, tokens, arch, mfu=0.445)
    assert palm["gpu_hours"] == pytest.approx(anchor, rel=0.002)


def test_time_and_money_scale_as_they_must():
    h100, arch = get_hardware("h100-sxm"), from_hf_config(LLAMA2_7B)
    base = make_plan(h100, 1e12, arch, num_gpus=8, mfu=0.4)
    twice_tokens = make_plan(h100, 2e12, arch, num_gpus=8, mfu=0.4)
    for k in ("train_flops", "gpu_hours", "wall_hours", "cost_usd"):
        assert twice_tokens[k] == pytest.approx(2 * base[k])
    twice_gpus = make_plan(h100, 1e12, arch, num_gpus=16, mfu=0.4)
    assert twice_gpus["gpu_hours"] == pytest.approx(base["gpu_hours"])  # same work, same bill
    assert twice_gpus["wall_hours"] == pytest.approx(base["wall_hours"] / 2)
    assert twice_gpus["tokens_per_s"] == pytest.approx(2 * base["tokens_per_s"])
    half_mfu = make_plan(h100, 1e12, arch, num_gpus=8, mfu=0.2)
    assert half_mfu["gpu_hours"] == pytest.approx(2 * base["gpu_hours"])
    dearer = make_plan(get_hardware("h100-sxm", price_per_hour=2 * h100.price_per_hour), 1e12, arch,
                       num_gpus=8, mfu=0.4)
    assert dearer["cost_usd"] == pytest.approx(2 * base["cost_usd"])
    # tokens/s × wall time is the tokens; GPU-hours × price is the cost
    assert base["tokens_per_s"] * base["wall_hours"] * 3600 == pytest.approx(1e12)
    assert base["gpu_hours"] * h100.price_per_hour == pytest.approx(base["cost_usd"])


def test_checkpointing_costs_a_recomputed_forward_but_not_mfu():
    h100, arch = get_hardware("h100-sxm"), from_hf_config(LLAMA2_7B)
    plain = make_plan(h100, 1e12, arch, num_gpus=8, mfu=0.4)
    ckpt = make_plan(h100, 1e12, arch, num_gpus=8, mfu=0.4, checkpointing=True)
    assert ckpt["gpu_hours"] == pytest.approx(plain["gpu_hours"] * 4 / 3)
    assert ckpt["mfu"] == plain["mfu"] and ckpt["train_flops"] == plain["train_flops"]
    assert ckpt["memory"]["activations_gb"] < plain["memory"]["activations_gb"]


def test_without_an_architecture_flops_are_six_n():
    p = make_plan(get_hardware("h100-sxm"), 2e12, params=7e9, num_gpus=512, mfu=0.4)
    assert p["flops_per_token"] == 6 * 7e9 and p["train_flops"] == pytest.approx(8.4e22)
    assert p["memory"]["activations_gb"] is None and p["max_micro_batch"] is None


def test_default_mfu_follows_published_runs():
    # Llama-2-7B class reached 0.40-0.45 (above); 100B+ runs 0.21-0.46 (PaLM Table 3)
    assert default_mfu(7e9) == 0.40
    assert default_mfu(7e10) == 0.38
    assert default_mfu(5e11) == 0.35
    assert default_mfu(5e7) < default_mfu(5e8) < default_mfu(5e9)
    assert make_plan(get_hardware("a100-80gb"), 1e12, params=7e9)["mfu_source"] == "default for model size"


def _cfg(**train):
    return config_from_dict({
        "name": "t", "data": {"sources": [{"name": "a", "paths": ["x"]}]}, "tokenizer": {"vocab_size": 512},
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 32},
        "train": {"max_steps": 10, "warmup_steps": 8, "micro_batch_size": 4, "grad_accum_steps": 3,
                  "device": "cpu", "dtype": "float32", **train},
        "plan": {"price_per_gpu_hour": 2.0}})


def test_a_run_plans_the_tokens_its_processes_train(monkeypatch):
    monkeypatch.setattr(hw_mod, "measure_cpu_peak_flops", lambda refresh=False, dtype="float32": 5e10)
    plan = plan_for_run(_cfg())
    assert plan["tokens"] == 10 * 4 * 3 * 32 and plan["num_gpus"] == 1
    assert plan["gpu"] == "cpu" and plan["peak_flops"] == 5e10 and plan["price_per_gpu_hour"] == 2.0
    assert plan["mfu"] == 0.55 and plan["dtype"] == "float32"
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun: data parallel over 4 processes
    four = plan_for_run(_cfg())
    assert four["tokens"] == 4 * plan["tokens"] and four["num_gpus"] == 4
    assert four["wall_hours"] == pytest.approx(plan["wall_hours"])  # 4× the tokens on 4× the devices


def test_a_minutes_budget_plans_what_the_predicted_speed_trains(monkeypatch):
    monkeypatch.setattr(hw_mod, "measure_cpu_peak_flops", lambda refresh=False, dtype="float32": 5e10)
    plan = plan_for_run(_cfg(max_steps=None, max_minutes=2.0, schedule="constant"))
    per_step = 4 * 3 * 32
    assert plan["tokens"] % per_step == 0
    assert plan["tokens"] <= plan["tokens_per_s"] * 120 < plan["tokens"] + per_step
    capped = plan_for_run(_cfg(max_steps=3, max_minutes=2.0, warmup_steps=3, schedule="constant"))
    assert capped["tokens"] == 3 * per_step
