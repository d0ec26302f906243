"""Plan versus actual: what a finished run measured beside what its plan predicted.

Reads ``runs/NAME/plan.json`` (written by ``fmforge run`` from ``plan_for_run``),
``stages.json`` (the ``train`` record's ``summary``: ``wall_s``, ``tokens``,
``tokens_per_s``) and ``metrics.jsonl`` (per logged step: ``tokens_per_s`` and,
when the trainer computes it, ``mfu``). Measured MFU is recomputed from measured
tokens/s with the plan's own FLOPs/token and peak, so both sides use one
convention. Error is (predicted − actual) / actual, in percent: positive means the
plan was too high (slower, dearer), negative too low.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fmforge.plan.errors import PlanError
from fmforge.rundir import RunDir, read_json_artifact, read_metrics


def _row(metric: str, unit: str, predicted: float, actual: float) -> dict[str, Any]:
    error = (predicted - actual) / actual * 100.0 if predicted is not None and actual else None
    return {"metric": metric, "unit": unit, "predicted": predicted, "actual": actual, "error_pct": error}


def _logged(metrics: list[dict[str, Any]], key: str) -> list[float]:
    """The logged values of ``key``, without the first record's (it carries start-up:
    compile, warm caches) when there are enough."""
    values = [float(m[key]) for m in metrics if isinstance(m.get(key), (int, float))]
    return values[1:] if len(values) > 2 else values


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def compare_plan_to_actual(run_dir: str | Path) -> dict[str, Any]:
    """Measured tokens/s, MFU, wall time and cost of a run beside its plan (keys in
    docs/planner.md); wall time and cost are for the tokens actually trained."""
    run = RunDir(run_dir)
    root = run.root
    if not run.plan_json.is_file():
        raise PlanError(f"{run.plan_json} does not exist: the run was not started by `fmforge run` with "
                        "planning, or the path is not a run directory")
    try:
        plan = read_json_artifact(run.plan_json, "run")
        summary = (run.stage_record("train") or {}).get("summary") or {}
        metrics = read_metrics(run.metrics)  # tolerates the torn last line of a killed run
    except ValueError as exc:
        raise PlanError(str(exc)) from exc
    notes: list[str] = []
    if not summary and not metrics:
        raise PlanError(f"{root} has no finished train stage (stages.json) and no metrics.jsonl: nothing measured yet")

    logged_tps, logged_mfu = _logged(metrics, "tokens_per_s"), _logged(metrics, "mfu")

    wall_s = summary.get("wall_s")
    tokens = summary.get("tokens")
    if tokens is None and metrics:
        last = metrics[-1]
        if "step" in last and plan.get("run", {}).get("tokens_per_step"):
            tokens = last["step"] * plan["run"]["tokens_per_step"]
            notes.append("tokens trained estimated from the last logged step × tokens per step")
    if wall_s is None and metrics and isinstance(metrics[-1].get("elapsed_s"), (int, float)):
        wall_s = metrics[-1]["elapsed_s"]
        notes.append("wall time from the last metrics record's elapsed_s (train stage summary missing)")
    if summary.get("tokens_per_s"):
        tps = float(summary["tokens_per_s"])
    elif tokens and wall_s:
        tps = tokens / wall_s
    else:
        tps = _median(logged_tps)
    if tps is None:
        raise PlanError(f"{root}: no tokens/s could be measured (no train summary, no tokens_per_s in metrics)")

    n = plan.get("num_gpus", 1)
    peak = plan["peak_flops"]
    fpt = plan["flops_per_token"]
    price = plan["price_per_gpu_hour"]
    pred_tps = plan["tokens_per_s"]
    measured_mfu = tps * fpt / (peak * n)

    rows = [_row("tokens_per_s", "tokens/s", pred_tps, tps), _row("mfu", "fraction of peak", plan["mfu"], measured_mfu)]
    if tokens and wall_s:
        pred_wall = tokens / pred_tps
        rows.append(_row("wall_s", "s", pred_wall, float(wall_s)))
        rows.append(_row("cost_usd", "US$", pred_wall / 3600 * n * price, float(wall_s) / 3600 * n * price))
        if abs(tokens - plan["tokens"]) > 0.01 * plan["tokens"]:
            notes.append(f"the run trained {tokens:.3g} tokens, the plan {plan['tokens']:.3g}: wall time and cost "
                         "are compared for the tokens actually trained")
    else:
        notes.append("no wall time and token count in the train summary: wall time and cost not compared")
    trainer_mfu = _median(logged_mfu)
    if trainer_mfu is not None:
        notes.append(f"the trainer's own logged MFU (median): {trainer_mfu:.3f}")
    if logged_tps and summary.get("tokens_per_s"):
        notes.append(f"median logged tokens/s (after the first record): {_median(logged_tps):,.0f}")
    return {"run": str(root), "gpu": plan.get("gpu"), "num_gpus": n, "flops_convention": plan.get("flops_convention"),
            "tokens": tokens, "rows": rows, "trainer_mfu": trainer_mfu, "notes": notes}


def compare_customize_to_actual(run_dir: str | Path) -> dict[str, Any]:
    """The planner's ``customize`` estimate beside what ``fmforge finetune`` measured
    (``runs/NAME/finetune/summary.json``): tokens/s from the LoRA FLOPs per token
    (``lora_flops_per_token``: 4·N through the frozen base + attention + 6 per adapter
    parameter; a full fine-tune: the training FLOPs per token) at the device's
    default MFU, wall time for the tokens trained, and peak memory: the base's
    weights + 16 bytes per trainable parameter (fp32 weight, gradient, two AdamW
    moments) + the activations of one micro-batch (``plan.memory.activation_bytes``).
    On CPU the measured peak is the process's resident set (Python and torch
    included); on CUDA, torch's peak allocation."""
    import json

    from fmforge.hardware import detect_gpu, get_hardware
    from fmforge.model.counting import count_params, from_hf_config, lora_flops_per_token, train_flops_per_token
    from fmforge.plan.estimate import default_mfu
    from fmforge.plan.memory import activation_bytes

    path = Path(run_dir) / "finetune" / "summary.json"
    if not path.is_file():
        raise PlanError(f"{path} does not exist: run `fmforge finetune CONFIG` first")
    s = json.loads(path.read_text(encoding="utf-8"))
    arch = from_hf_config(s["base_config"], seq_len=s["seq_len"])
    params = count_params(arch).total
    method = s["method"]
    dtype = "float32" if s.get("dtype") == "float32" else "autocast"
    fpt = train_flops_per_token(arch, "palm") if method == "full" else lora_flops_per_token(arch, rank=s["lora_r"])
    on_gpu = s.get("device", "cpu").startswith("cuda")
    hw = get_hardware((detect_gpu() or "h100-sxm") if on_gpu else "cpu")
    peak = hw.peak_flops
    mfu = default_mfu(params, hw, dtype)
    pred_tps = peak * mfu / fpt
    weight_bytes = 0.5 if method == "qlora" else 4.0
    pred_mem = (params * weight_bytes + 16 * s["trainable_params"]
                + activation_bytes(arch, s["micro_batch_size"], dtype, False))
    rows = [_row("tokens_per_s", "tokens/s", pred_tps, s.get("tokens_per_s")),
            _row("mfu", "fraction of peak", mfu, (s.get("tokens_per_s") or 0) * fpt / peak)]
    tokens = s.get("tokens")
    if tokens and s.get("wall_s"):
        rows.append(_row("wall_s", "s", tokens / pred_tps, float(s["wall_s"])))
    rows.append(_row("peak_memory_gb", "GB", pred_mem / 1e9, s["peak_memory_bytes"] / 1e9))
    notes = [f"customize ({method}, {s['trainable_params']:,} trainable of {params:,}): "
             f"{fpt:.3g} FLOPs/token, {hw.key} peak {peak:.3g} FLOP/s at the default MFU {mfu:.2f}",
             f"measured memory: {s['peak_memory_kind']}"
             + (" (the whole process: Python, torch and the tokenizer too)" if not on_gpu else "")]
    return {"run": str(Path(run_dir)), "gpu": hw.key, "num_gpus": 1, "flops_convention": "palm",
            "tokens": tokens, "rows": rows, "trainer_mfu": None, "notes": notes}
