"""The estimate of one training run: FLOPs, time, money and memory, as a dict with
stable keys (documented in docs/planner.md; ``PLAN_SCHEMA`` changes if a key ever
changes meaning).

    train FLOPs  = tokens × FLOPs/token                     (fmforge.model.counting)
    GPU-hours    = train FLOPs × (1 + recompute) / (MFU × peak FLOP/s) / 3600
    wall hours   = GPU-hours / devices;  cost = GPU-hours × price per device-hour

MFU (model FLOPs utilisation, PaLM App. B) is the fraction of peak the model's
FLOPs reach. With none given, ``default_mfu`` picks one by model size, a little
below the best published runs so that a plan errs on the side of cost.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from fmforge.config import RunConfig
from fmforge.hardware import Hardware, cpu_has_native_bf16, detect_gpu, get_hardware
from fmforge.launch import current_launch
from fmforge.model.counting import (DEFAULT_CONVENTION, Architecture, check_convention, count_params,
                                    from_model_config, train_flops_per_token)
from fmforge.plan.errors import PlanError, require_positive
from fmforge.plan.memory import GB, estimate_memory, max_micro_batch, min_gpus, state_bytes_per_param, usable_bytes

PLAN_SCHEMA = "fmforge.plan/1"

# (upper bound on parameters, MFU) — the first row whose bound exceeds N wins. Why:
# < 100M small matmuls, launch and optimizer overheads dominate; < 1B norms and
# softmax still a large share; < 20B Llama-2-7B class, published 0.40-0.45; < 200B
# tensor/pipeline communication costs a few points; larger: 3D parallelism (GPT-3
# 0.21, Gopher 0.33, PaLM 0.46 in PaLM's Table 3).
DEFAULT_MFU_TABLE: tuple[tuple[float, float], ...] = (
    (1e8, 0.20), (1e9, 0.30), (2e10, 0.40), (2e11, 0.38), (float("inf"), 0.35))
# On a CPU the peak is the measured matmul rate in the run's precision; fmforge's
# trainer reached 0.40-0.46 of it under bf16 autocast and 0.54-0.60 in float32
# (2-thread AMD EPYC, benchmarks/README.md).
DEFAULT_CPU_MFU = {"bfloat16": 0.40, "autocast": 0.40, "float32": 0.55}


def default_mfu(params: float, hardware: Hardware | None = None, dtype: str = "bfloat16") -> float:
    if hardware is not None and hardware.is_cpu:
        return DEFAULT_CPU_MFU.get(dtype, DEFAULT_CPU_MFU["float32"])
    return next(mfu for bound, mfu in DEFAULT_MFU_TABLE if params < bound)


def settle_mfu(params_at: Callable[[float], float], hardware: Hardware, dtype: str = "bfloat16",
               first_guess: float = 1e9) -> float:
    """The default MFU when the model's size itself depends on the MFU (a budget buys
    a bigger model at a higher MFU): iterate until the size class stops changing."""
    mfu = default_mfu(first_guess, hardware, dtype)
    for _ in range(3):
        settled = default_mfu(params_at(mfu), hardware, dtype)
        if settled == mfu:
            break
        mfu = settled
    return mfu


def gpu_hours_for(flops: float, mfu: float, peak_flops: float) -> float:
    """Device-hours to do ``flops`` of model work at ``mfu`` of ``peak_flops``."""
    return flops / (mfu * peak_flops) / 3600


def implied_mfu(train_flops: float, gpu_hours: float, peak_flops: float) -> float:
    """The MFU a published (FLOPs, GPU-hours) pair implies: FLOPs / (GPU-s × peak)."""
    for name, v in (("train FLOPs", train_flops), ("GPU-hours", gpu_hours), ("peak FLOP/s", peak_flops)):
        require_positive(name, v)
    return train_flops / (gpu_hours * 3600 * peak_flops)


def _memory_section(arch: Architecture | None, params: float, hw: Hardware, num_gpus: int, micro_batch: int,
                    dtype: str, checkpointing: bool, strategy: str | None, warnings: list[str],
                    shard_group: int | None = None) -> dict[str, Any]:
    """memory, memory_per_gpu_gb, min_gpus(_strategy), max_micro_batch of the plan."""
    if shard_group is not None and arch is not None:
        # HSDP: each GPU holds what FSDP over one replica's GPUs holds.
        plan = _memory_section(arch, params, hw, shard_group, micro_batch, dtype, checkpointing,
                               "fsdp", warnings)
        est = plan["memory"]
        plan["memory"] = {k: v for k, v in est.items() if k not in ("ddp", "fsdp")} | {
            "strategy": "hsdp", "num_gpus": num_gpus, "shard_gpus": shard_group}
        return plan
    if arch is None:  # states only: no architecture, no activations
        sb, usable = state_bytes_per_param(dtype), usable_bytes(hw)
        strategy = strategy or "fsdp"
        shard = num_gpus if strategy == "fsdp" else 1
        per_gpu = params * sb.per_param / shard / GB
        n_min = max(1, math.ceil(params * sb.per_param / usable))
        memory = {"strategy": strategy, "weights_gb": params * sb.weights / shard / GB,
                  "grads_gb": params * sb.grads / shard / GB, "optimizer_gb": params * sb.optimizer / shard / GB,
                  "activations_gb": None, "total_gb": per_gpu, "usable_gb": usable / GB, "fits": per_gpu * GB <= usable}
        return {"memory_per_gpu_gb": per_gpu, "memory": memory, "min_gpus": n_min,
                "min_gpus_strategy": "ddp" if n_min == 1 else "fsdp", "max_micro_batch": None}
    by = {s: estimate_memory(arch, hw, micro_batch, num_gpus, s, dtype, checkpointing) for s in ("ddp", "fsdp")}
    chosen = by[strategy or ("ddp" if by["ddp"].fits else "fsdp")]
    try:
        n_min, n_min_strategy = min_gpus(arch, hw, micro_batch, dtype, checkpointing)
    except PlanError as exc:  # still worth showing time and money; the message says what would fit
        n_min, n_min_strategy = None, None
        warnings.append(str(exc))
    if not chosen.fits:
        warnings.append(
            f"{chosen.total_gb:.1f} GB per {hw.key} exceeds the {chosen.usable_gb:.1f} GB usable "
            f"with {num_gpus} device(s) under {chosen.strategy}; "
            + (f"use at least {n_min} ({n_min_strategy})" if n_min else "no number of devices fits (see above)"))
    memory = {**chosen.to_dict(), "ddp": by["ddp"].to_dict(), "fsdp": by["fsdp"].to_dict()}
    return {"memory_per_gpu_gb": chosen.total_gb, "memory": memory, "min_gpus": n_min,
            "min_gpus_strategy": n_min_strategy,
            "max_micro_batch": max_micro_batch(arch, hw, num_gpus, chosen.strategy, dtype, checkpointing)}


def make_plan(hardware: Hardware, tokens: float, arch: Architecture | None = None, params: float | None = None,
              num_gpus: int = 1, mfu: float | None = None, micro_batch: int = 1, dtype: str = "bfloat16",
              checkpointing: bool = False, strategy: str | None = None,
              convention: str = DEFAULT_CONVENTION, shard_group: int | None = None) -> dict[str, Any]:
    """Price training ``arch`` (or a bare ``params`` count) on ``tokens`` tokens.
    ``strategy``: "ddp" or "fsdp"; None picks DDP when everything fits on each
    device, else FSDP. ``shard_group``: HSDP, sharding over groups of this many GPUs
    (``num_gpus`` / replicas), whose memory per GPU is FSDP's over one group. With activation checkpointing the forward pass runs twice:
    a third more hardware work, which costs time but does not raise MFU."""
    check_convention(convention)
    require_positive("tokens", tokens)
    require_positive("micro-batch size", micro_batch)
    require_positive("number of GPUs", num_gpus, whole=True)
    warnings: list[str] = []
    if arch is not None:
        n_params: float = count_params(arch).total
        fpt: float = train_flops_per_token(arch, convention)
    elif params is not None:
        require_positive("params", params)
        n_params, fpt = params, 6.0 * params  # every convention is 6·N without an architecture
        warnings.append(
            "no architecture given: FLOPs/token is 6·params (no attention term) and memory "
            "counts only weights, gradients and optimizer states; pass a config or --hf-config "
            "for activations, min GPUs with activations and the largest micro-batch")
    else:
        raise PlanError("give the model: a config, --hf-config PATH, or --params N")
    source = "given" if mfu is not None else "default for CPU" if hardware.is_cpu else "default for model size"
    if mfu is None:
        mfu = default_mfu(n_params, hardware, dtype)
    require_positive("MFU", mfu)
    if mfu > 1:
        raise PlanError(f"MFU must be a fraction of peak in (0, 1], got {mfu:g} (did you mean {mfu / 100:g}?)")
    if not hardware.peak_flops > 0:
        raise PlanError(f"{hardware.key}: peak FLOP/s unknown (measure the CPU first)")
    work = 4 / 3 if checkpointing else 1.0
    if checkpointing:
        warnings.append("activation checkpointing recomputes the forward pass: time and cost "
                        "include a third more work; MFU counts model FLOPs only")
    train_flops = tokens * fpt
    gpu_hours = gpu_hours_for(train_flops * work, mfu, hardware.peak_flops)
    memory = _memory_section(arch, n_params, hardware, num_gpus, micro_batch, dtype, checkpointing,
                             strategy, warnings, shard_group)
    # the keys and their order are the JSON schema (docs/planner.md)
    return {
        "schema": PLAN_SCHEMA, "params": n_params,
        "params_breakdown": count_params(arch).to_dict() if arch is not None else None,
        "architecture": arch.to_dict() if arch is not None else None,
        "tokens": float(tokens), "flops_convention": convention, "flops_per_token": fpt,
        "train_flops": float(train_flops),
        "gpu": hardware.key, "gpu_name": hardware.name, "peak_flops": hardware.peak_flops,
        "gpu_memory_gb": hardware.memory_gb, "interconnect": hardware.interconnect, "num_gpus": num_gpus,
        "mfu": float(mfu), "mfu_source": source, "price_per_gpu_hour": hardware.price_per_hour,
        "tokens_per_s": num_gpus * mfu * hardware.peak_flops / (fpt * work),
        "gpu_hours": gpu_hours, "wall_hours": gpu_hours / num_gpus, "wall_days": gpu_hours / num_gpus / 24,
        "cost_usd": gpu_hours * hardware.price_per_hour,
        "dtype": dtype, "micro_batch_size": micro_batch, "seq_len": arch.seq_len if arch is not None else None,
        "checkpointing": checkpointing,
        **memory,
        "sources": {"spec": hardware.spec_source, "price": hardware.price_source},
        "warnings": warnings,
    }


# ------------------------------------------------------------- an fmforge run


def run_device(cfg: RunConfig) -> str:
    """The catalogue key of the device a run will train on (train.device)."""
    dev = cfg.train.device
    if dev == "cpu":
        return "cpu"
    import torch

    if dev == "cuda" or (dev == "auto" and torch.cuda.is_available()):
        return detect_gpu() or cfg.plan.gpu
    if dev == "mps":
        return cfg.plan.gpu  # not in the catalogue; priced as the configured GPU
    return "cpu"


def run_dtype(cfg: RunConfig, device_key: str) -> str:
    """The memory mode of a run: fmforge's trainer does bf16 as autocast over fp32
    weights (fmforge.train.device), so "bfloat16" prices as "autocast"."""
    dtype = cfg.train.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device_key != "cpu" or cpu_has_native_bf16() else "float32"
    return "autocast" if dtype == "bfloat16" else "float32"


def plan_run_tokens(cfg: RunConfig, world_size: int, plan_at: Callable[[float], dict[str, Any]]) -> dict[str, Any]:
    """``plan_at(tokens)`` for the tokens run ``cfg`` trains: ``max_steps`` steps of
    ``train.tokens_per_step`` over ``world_size`` processes. A ``max_minutes`` budget
    trains the whole steps that fit at the predicted speed (capped by ``max_steps``
    when both are set), so it is priced in two passes."""
    t = cfg.train
    per_step = t.tokens_per_step(cfg.model.seq_len, world_size)
    plan = plan_at((t.max_steps or 1) * per_step)
    if t.max_minutes is not None:
        by_time = max(1, int(plan["tokens_per_s"] * 60 * t.max_minutes // per_step))
        plan = plan_at((min(t.max_steps, by_time) if t.max_steps else by_time) * per_step)
    return plan


def plan_for_run(cfg: RunConfig, hardware: str | None = None, num_devices: int | None = None) -> dict[str, Any]:
    """The plan of run ``cfg`` on its own device (what ``fmforge run`` writes to
    ``runs/NAME/plan.json``). ``hardware``: a catalogue key, default the run's device
    (a CPU run uses the measured CPU peak). ``num_devices``: default the processes
    torchrun launched (1 without it). Priced at ``plan.price_per_gpu_hour`` or the
    catalogue's; MFU ``plan.mfu`` or the default for the model size."""
    key = hardware or run_device(cfg)
    mode = run_dtype(cfg, key)
    hw = get_hardware(key, cfg.plan.price_per_gpu_hour, cpu_dtype="bfloat16" if mode == "autocast" else "float32")
    n = num_devices or current_launch().world_size
    arch = from_model_config(cfg.resolved_model())
    plan = plan_run_tokens(cfg, n, lambda tokens: make_plan(
        hw, tokens=tokens, arch=arch, num_gpus=n, mfu=cfg.plan.mfu, micro_batch=cfg.train.micro_batch_size,
        dtype=mode, checkpointing=cfg.train.activation_checkpointing))
    plan["run"] = {"name": cfg.name, "device": cfg.train.device, "max_steps": cfg.train.max_steps,
                   "max_minutes": cfg.train.max_minutes,
                   "tokens_per_step": cfg.train.tokens_per_step(cfg.model.seq_len, n), "created_at": time.time()}
    return plan
