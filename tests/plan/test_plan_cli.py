"""`fmforge plan` through the CLI: stable JSON keys, clear errors, and plan versus
actual after a real (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fmforge.cli import app

runner = CliRunner()
KEYS = {"params", "train_flops", "gpu_hours", "wall_days", "cost_usd", "memory_per_gpu_gb", "min_gpus"}


def test_flags_give_the_documented_json_keys():
    result = runner.invoke(app, ["plan", "--params", "7e9", "--tokens", "2e12", "--gpu", "h100-sxm",
                                 "--num-gpus", "512", "--mfu", "0.4", "--price", "2.5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert KEYS <= set(data)
    # 6·N·D / (MFU · peak) with N = 7e9, D = 2e12 on H100 SXM (989 TFLOP/s dense bf16).
    assert abs(data["gpu_hours"] - 6 * 7e9 * 2e12 / (0.4 * 989e12) / 3600) < 1
    assert abs(data["cost_usd"] - data["gpu_hours"] * 2.5) < 1e-6 * data["cost_usd"]


def test_unknown_gpu_lists_the_known_ones():
    result = runner.invoke(app, ["plan", "--params", "1e9", "--tokens", "1e10", "--gpu", "tpu-v9"])
    assert result.exit_code == 2
    assert "unknown GPU 'tpu-v9'" in result.output and "h100-sxm" in result.output


def test_negative_values_are_rejected():
    result = runner.invoke(app, ["plan", "--params", "-5", "--tokens", "1e10"])
    assert result.exit_code == 2
    assert "params" in result.output


def test_run_records_its_plan_and_compares_with_actual(tmp_path: Path, make_tiny_config):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(make_tiny_config(tmp_path)))
    result = runner.invoke(app, ["run", str(cfg_path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["gpu"] == "cpu" and plan["tokens"] == 20 * 8 * 32
    # The trainer logs MFU against the same peak and FLOPs formula as the plan.
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < m["mfu"] < 1 for m in metrics)
    assert metrics[0]["flops_per_token"] == plan["flops_per_token"]

    result = runner.invoke(app, ["plan", "--actual", str(run), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in json.loads(result.stdout)["actual"]["rows"]}
    assert set(rows) == {"tokens_per_s", "mfu", "wall_s", "cost_usd"}
    tps = rows["tokens_per_s"]
    assert tps["actual"] > 0
    assert abs(tps["error_pct"] - (tps["predicted"] - tps["actual"]) / tps["actual"] * 100) < 1e-6
