import json

import pytest

from fmforge.config import config_from_dict
from fmforge import hardware as hw_mod
from fmforge.plan.actual import compare_plan_to_actual
from fmforge.plan.cli_support import plan_command
from fmforge.plan.errors import PlanError
from fmforge.plan.estimate import plan_for_run
from fmforge.plan.sizing import data_tokens_from_run

STABLE_KEYS = {"params", "train_flops", "gpu_hours", "wall_days", "cost_usd", "memory_per_gpu_gb", "min_gpus",
               "tokens", "flops_per_token", "mfu", "num_gpus", "gpu", "price_per_gpu_hour", "tokens_per_s"}


def _cfg(**train):
    return config_from_dict({
        "name": "t",
        "data": {"sources": [{"name": "a", "paths": ["x"]}]},
        "tokenizer": {"vocab_size": 512},
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 32},
        "train": {"max_steps": 10, "warmup_steps": 1, "micro_batch_size": 4, "device": "cpu", **train},
        "plan": {"price_per_gpu_hour": 2.0},
    })


def test_flags_plan_json_has_stable_keys_and_arithmetic():
    out = plan_command(params=7e9, tokens=2e12, gpu="h100-sxm", num_gpus=512, mfu=0.4, price=2.5)
    d = out.data
    assert STABLE_KEYS <= set(d)
    assert d["train_flops"] == pytest.approx(6 * 7e9 * 2e12)
    assert d["gpu_hours"] == pytest.approx(d["train_flops"] / (0.4 * 989e12) / 3600)
    assert d["wall_days"] == pytest.approx(d["gpu_hours"] / 512 / 24)
    assert d["cost_usd"] == pytest.approx(d["gpu_hours"] * 2.5)
    json.dumps(d)  # JSON-able
    assert out.renderables


def test_default_mfu_is_used_and_labelled():
    d = plan_command(params=7e9, tokens=1e12, gpu="a100-80gb").data
    assert d["mfu"] == 0.40 and d["mfu_source"] == "default for model size"


def test_cpu_peak_is_measured_once_and_cached(monkeypatch, tmp_path):
    calls = []

    def fake(n=1024, repeats=5, budget_s=3.0, dtype="float32"):
        calls.append((n, dtype))
        return 1e11 if dtype == "float32" else 3e11

    monkeypatch.setattr(hw_mod, "_benchmark_matmul", fake)
    assert hw_mod.measure_cpu_peak_flops() == 1e11
    first = len(calls)
    assert hw_mod.measure_cpu_peak_flops() == 1e11
    assert len(calls) == first  # second call read the cache
    # bf16 is a separate entry: a bf16 run is compared with the bf16 peak.
    assert hw_mod.measure_cpu_peak_flops(dtype="bfloat16") == 3e11
    assert len(calls) > first
    assert (tmp_path / "cache" / "cpu_peak.json").is_file()


def test_real_cpu_benchmark_gives_a_plausible_peak():
    peak = hw_mod._benchmark_matmul(256, repeats=2)
    assert 1e8 < peak < 1e14


def _fake_cpu(monkeypatch, peak=5e10):
    monkeypatch.setattr(hw_mod, "measure_cpu_peak_flops", lambda refresh=False, dtype="float32": peak)


def test_plan_for_cpu_run_then_compare_to_actual(tmp_path, monkeypatch):
    _fake_cpu(monkeypatch)
    cfg = _cfg()
    plan = plan_for_run(cfg)
    assert plan["gpu"] == "cpu" and plan["num_gpus"] == 1 and plan["peak_flops"] == 5e10
    assert plan["tokens"] == 10 * 4 * 32
    assert plan["price_per_gpu_hour"] == 2.0
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps(plan))
    (run / "config.yaml").write_text(cfg.to_yaml())
    # the run went at exactly half the planned speed
    tps = plan["tokens_per_s"] / 2
    wall = plan["tokens"] / tps
    (run / "stages.json").write_text(json.dumps({"train": {"fingerprint": "x", "completed_at": 0, "summary": {
        "wall_s": wall, "tokens": plan["tokens"], "tokens_per_s": tps}}}))
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"step": step * 2, "loss": 5.0, "lr": 1e-3, "tokens_per_s": tps,
                                "grad_norm": 1.0, "elapsed_s": step * wall / 5, "mfu": 0.1}) + "\n")
    c = compare_plan_to_actual(run)
    rows = {r["metric"]: r for r in c["rows"]}
    assert rows["tokens_per_s"]["error_pct"] == pytest.approx(100.0)
    assert rows["mfu"]["actual"] == pytest.approx(plan["mfu"] / 2)
    assert rows["wall_s"]["error_pct"] == pytest.approx(-50.0)
    assert rows["cost_usd"]["actual"] == pytest.approx(wall / 3600 * 2.0)
    assert c["trainer_mfu"] == pytest.approx(0.1)
    # and through the CLI entry point, by run directory
    out = plan_command(actual=str(run))
    assert out.data["actual"]["rows"][0]["metric"] == "tokens_per_s"


def test_compare_without_plan_or_metrics(tmp_path):
    with pytest.raises(PlanError, match="plan.json does not exist"):
        compare_plan_to_actual(tmp_path)
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(PlanError, match="nothing measured yet"):
        compare_plan_to_actual(tmp_path)


def test_data_tokens_from_run(tmp_path):
    assert data_tokens_from_run(tmp_path) is None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data_card.json").write_text(json.dumps({"totals": {"chars": 4_000_000}}))
    n, src = data_tokens_from_run(tmp_path)
    assert n == 1_000_000 and "estimated" in src
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "meta.json").write_text(json.dumps({"dtype": "uint16", "train_tokens": 123_456}))
    assert data_tokens_from_run(tmp_path)[0] == 123_456


def test_config_plan_sizing_and_decision(tmp_path, monkeypatch):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(_cfg().to_yaml())
    out = plan_command(cfg_path, ["plan.gpu=l4", "plan.num_gpus=2"], budget=1000.0,
                       data_tokens=5e7, api_price=1.0, monthly_tokens=1e8, base_params=1e9)
    d = out.data
    assert d["gpu"] == "l4" and d["num_gpus"] == 2 and d["price_per_gpu_hour"] == 2.0
    assert d["min_gpus"] == 1 and d["max_micro_batch"] > 4
    s = d["sizing"]["options"]
    assert s[0]["tokens_per_param"] == pytest.approx(20)
    assert s[1]["params"] == pytest.approx(s[0]["params"] / 2)
    assert s[1]["tokens"] == pytest.approx(s[0]["tokens"] * 2)  # same compute
    opts = {o["option"]: o for o in d["decision"]["options"]}
    assert set(opts) == {"train", "customize", "buy"}
    assert opts["buy"]["monthly_usd"] == pytest.approx(100.0)
    assert opts["buy"]["one_time_usd"] == 0
    # LoRA one-time cost is computed from 4N FLOPs/token over 2 epochs of the data
    lora_hours = 2 * 5e7 * 4 * 1e9 / (0.40 * 121e12) / 3600
    assert opts["customize"]["gpu_hours"] == pytest.approx(lora_hours)
    assert len(d["decision"]["reasoning"]) >= 5
    json.dumps(d)
