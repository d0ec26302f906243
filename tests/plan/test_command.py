"""`fmforge plan` end to end: flags in, sections and stable JSON keys out, and a
clear message for each kind of bad input."""

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.plan.command import PlanOptions, plan_command

LLAMA2_70B = {"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
              "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,
              "max_position_embeddings": 4096}
STABLE_KEYS = {"schema", "params", "params_breakdown", "architecture", "tokens", "flops_convention",
               "flops_per_token", "train_flops", "gpu", "gpu_name", "peak_flops", "gpu_memory_gb", "interconnect",
               "num_gpus", "mfu", "mfu_source", "price_per_gpu_hour", "tokens_per_s", "gpu_hours", "wall_hours",
               "wall_days", "cost_usd", "dtype", "micro_batch_size", "seq_len", "checkpointing",
               "memory_per_gpu_gb", "memory", "min_gpus", "min_gpus_strategy", "max_micro_batch", "sources",
               "warnings"}


def test_cli_json_has_every_documented_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_70B))
    result = CliRunner().invoke(app, ["plan", "--hf-config", str(tmp_path / "config.json"), "--tokens", "2e12",
                                      "--gpu", "h100-sxm", "--num-gpus", "64", "--budget", "1e6",
                                      "--data-tokens", "1e11", "--api-price", "3", "--monthly-tokens", "1e9",
                                      "--base-params", "7e10", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert set(d) == STABLE_KEYS | {"sizing", "decision"}
    assert d["params"] == 68_976_648_192
    assert [o["option"] for o in d["decision"]["options"]] == ["train", "customize", "buy"]


def test_cli_prints_a_readable_error_and_exits_2():
    result = CliRunner().invoke(app, ["plan", "--params", "7e9", "--tokens", "2e12", "--gpu", "v100"])
    assert result.exit_code == 2 and "unknown GPU 'v100'" in result.output


@pytest.mark.parametrize("kwargs,needle", [
    ({"params": -7e9, "tokens": 2e12}, "params must be > 0, got -7e+09"),
    ({"params": float("inf"), "tokens": 2e12}, "params must be a finite number"),
    ({"params": 7e9, "tokens": 0}, "tokens must be > 0, got 0"),
    ({"params": 7e9, "tokens": 2e12, "num_gpus": 0}, "number of GPUs must be > 0"),
    ({"params": 7e9, "tokens": 2e12, "mfu": 40}, "did you mean 0.4"),
    ({"params": 7e9, "tokens": 2e12, "price": -1}, "price per GPU-hour must be >= 0"),
    ({"params": 7e9, "tokens": 2e12, "gpu": "tpu-v5"}, "unknown GPU 'tpu-v5'; known: a100-40gb"),
    ({"params": 7e9, "tokens": 2e12, "micro_batch": -2}, "micro-batch size must be > 0"),
    ({"params": 7e9, "tokens": 2e12, "strategy": "zero3"}, "--strategy must be"),
    ({"params": 7e9, "tokens": 2e12, "seq_len": 0}, "--seq-len must be > 0"),
    ({"params": 7e9, "tokens": 2e12, "seq_len": 4096}, "--seq-len needs an architecture"),
    ({"budget": -5}, "budget in dollars must be > 0"),
    ({"budget": 100, "gpu_hours": 100}, "either --budget or --gpu-hours"),
    ({"budget": 100, "data_tokens": 1e9, "run": "demo"}, "either --data-tokens or --run"),
    ({"data_tokens": 2e8, "base_params": 8e9, "base_hf_config": "x.json", "api_price": 3, "monthly_tokens": 5e8},
     "either --base-params or --base-hf-config"),
    ({"params": 7e9, "tokens": 1e9, "api_price": 10}, "--monthly-tokens"),
    ({"params": 7e9}, "give the number of training tokens"),
    ({"actual": "demo", "params": 7e9}, "takes no other planning flags (got --params)"),
    ({"overrides": ["train.max_steps=5"]}, "need a CONFIG"),
    ({}, "nothing to plan"),
])
def test_bad_input_says_what_to_do(kwargs, needle):
    with pytest.raises(Exception) as exc:  # PlanError, or HardwareError for the catalogue
        plan_command(PlanOptions(**kwargs))
    assert isinstance(exc.value, ValueError) and needle in str(exc.value)


def test_seq_len_from_max_position_embeddings_is_flagged():
    cfg = dict(LLAMA2_70B, max_position_embeddings=131072)
    flagged = plan_command(PlanOptions(hf_config=cfg, tokens=1e12, gpu="h100-sxm", num_gpus=64)).data
    assert any("max_position_embeddings" in w and "--seq-len" in w for w in flagged["warnings"])
    given = plan_command(PlanOptions(hf_config=cfg, tokens=1e12, gpu="h100-sxm", num_gpus=64, seq_len=4096)).data
    assert not any("max_position_embeddings" in w for w in given["warnings"])
    assert given["flops_per_token"] < flagged["flops_per_token"]  # attention over a shorter context


def test_the_budget_default_mfu_settles_on_the_size_it_buys():
    # $100k on H100s buys ~20B params: the 1B-20B class (0.40) or the next (0.38), never the 100M class
    s = plan_command(PlanOptions(budget=1e5, gpu="h100-sxm")).data["sizing"]
    from fmforge.plan.estimate import default_mfu

    assert s["mfu"] == default_mfu(s["options"][0]["params"]) or s["mfu"] in (0.38, 0.40)
    tiny = plan_command(PlanOptions(budget=1, gpu="l4")).data["sizing"]
    assert tiny["mfu"] == default_mfu(tiny["options"][0]["params"]) == 0.20


def test_memory_table_is_not_truncated_at_80_columns():
    out = plan_command(PlanOptions(hf_config=LLAMA2_70B, tokens=2e12, gpu="h100-sxm", num_gpus=64))
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    for r in out.renderables:
        console.print(r)
    table = console.export_text().split("Memory per device")[1].split("activations without")[0]
    assert f"{out.data['memory']['fsdp']['total_gb']:,.2f}" in table and "…" not in table


def test_actual_through_the_cli_survives_a_torn_metrics_line(tmp_path, finished_run):
    run = finished_run(tmp_path, torn=True)
    result = CliRunner().invoke(app, ["plan", "--actual", str(run), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in json.loads(result.stdout)["actual"]["rows"]}
    assert rows["tokens_per_s"]["error_pct"] == pytest.approx(100.0)


def _llama8b_with(tmp_path, **train) -> str:
    """configs/llama-8b.yaml with its train section changed (the data placeholders
    do not matter to the planner)."""
    import yaml

    raw = yaml.safe_load(open("configs/llama-8b.yaml"))
    raw["train"].update(train)
    path = tmp_path / "llama-8b.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("degree,group", [(None, 8), (4, 16)])
def test_hsdp_is_planned_as_fsdp_within_one_replica_and_timed_on_all_gpus(tmp_path, degree, group):
    hsdp = _llama8b_with(tmp_path, parallel="hsdp", replicate_degree=degree)
    plan = plan_command(PlanOptions(config=hsdp, gpu="h100-sxm", num_gpus=64)).data
    within = plan_command(PlanOptions(config=hsdp, gpu="h100-sxm", num_gpus=group, strategy="fsdp")).data
    across = plan_command(PlanOptions(config=hsdp, gpu="h100-sxm", num_gpus=64, strategy="fsdp")).data
    # Each GPU holds a 1/group shard: FSDP's memory over one replica's GPUs...
    assert plan["memory"]["strategy"] == "hsdp" and plan["memory"]["shard_gpus"] == group
    assert plan["memory_per_gpu_gb"] == pytest.approx(within["memory_per_gpu_gb"])
    assert plan["memory"]["weights_gb"] == pytest.approx(8_030_261_248 * 4 / group / 1e9)
    # ...and all 64 GPUs compute: the time of any 64-GPU run at the same MFU.
    assert plan["gpu_hours"] == pytest.approx(across["gpu_hours"])
    assert plan["wall_hours"] == pytest.approx(across["wall_hours"])
    assert any(w.startswith(f"hsdp: {64 // group} replica(s) × {group} GPUs") for w in plan["warnings"])


def test_hsdp_with_a_replicate_degree_that_does_not_divide_the_gpus_is_refused(tmp_path):
    from fmforge.plan.errors import PlanError

    hsdp = _llama8b_with(tmp_path, parallel="hsdp", replicate_degree=3)
    with pytest.raises(PlanError, match="train.replicate_degree=3 does not divide 64 GPUs"):
        plan_command(PlanOptions(config=hsdp, gpu="h100-sxm", num_gpus=64))
