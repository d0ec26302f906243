"""One plan: parameters, FLOPs, time, money and memory, as a dict with stable keys.

``make_plan`` is the whole planner for a single training run; ``plan_for_run``
prices an fmforge run config on the device it will run on (its ``plan.json``).
The keys of the returned dict are documented in README_SECTION.md and kept stable
(``PLAN_SCHEMA`` changes if one ever has to change meaning).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from fmforge.config import RunConfig
from fmforge.plan.architecture import (
    DEFAULT_CONVENTION,
    Architecture,
    check_convention,
    count_params,
    flops_per_token_from_params,
    from_model_config,
    train_flops_per_token,
)
from fmforge.plan.compute import estimate_compute
from fmforge.plan.errors import PlanError, require_positive
from fmforge.hardware import Hardware, detect_gpu, get_hardware
from fmforge.plan.memory import (
    GB,
    estimate_memory,
    max_micro_batch,
    min_gpus,
    state_bytes_per_param,
    usable_bytes,
)

PLAN_SCHEMA = "fmforge.plan/1"


def make_plan(
    hardware: Hardware,
    tokens: float,
    arch: Architecture | None = None,
    params: float | None = None,
    num_gpus: int = 1,
    mfu: float | None = None,
    micro_batch: int = 1,
    dtype: str = "bfloat16",
    checkpointing: bool = False,
    strategy: str | None = None,
    convention: str = DEFAULT_CONVENTION,
) -> dict[str, Any]:
    """Price training ``arch`` (or a bare ``params`` count) on ``tokens`` tokens.

    ``strategy``: "ddp" or "fsdp" over ``num_gpus``; None picks DDP when the whole
    state fits on one device, else FSDP."""
    check_convention(convention)
    require_positive("tokens", tokens)
    require_positive("micro-batch size", micro_batch)
    warnings: list[str] = []
    breakdown = None
    if arch is not None:
        pc = count_params(arch)
        n_params: float = pc.total
        breakdown = pc.to_dict()
        fpt = train_flops_per_token(arch, convention)
    elif params is not None:
        require_positive("params", params)
        n_params = params
        fpt = flops_per_token_from_params(params, convention)
        warnings.append(
            "no architecture given: FLOPs/token is 6·params (no attention term) and memory "
            "counts only weights, gradients and optimizer states; pass a config or --hf-config "
            "for activations, min GPUs with activations and the largest micro-batch"
        )
    else:
        raise PlanError("give the model: a config, --hf-config PATH, or --params N")
    comp = estimate_compute(tokens, fpt, hardware, num_gpus=num_gpus, mfu=mfu, params=n_params,
                            dtype=dtype, recompute_fraction=1 / 3 if checkpointing else 0.0)
    if checkpointing:
        warnings.append("activation checkpointing recomputes the forward pass: time and cost "
                        "include a third more work; MFU counts model FLOPs only")

    sb = state_bytes_per_param(dtype)
    memory: dict[str, Any]
    if arch is not None:
        ddp = estimate_memory(arch, hardware, micro_batch, num_gpus, "ddp", dtype, checkpointing)
        fsdp = estimate_memory(arch, hardware, micro_batch, num_gpus, "fsdp", dtype, checkpointing)
        chosen_strategy = strategy or ("ddp" if ddp.fits else "fsdp")
        chosen = ddp if chosen_strategy == "ddp" else fsdp
        try:
            n_min, n_min_strategy = min_gpus(arch, hardware, micro_batch, dtype, checkpointing)
        except PlanError as exc:
            # Still worth showing time and money; the message says what would fit.
            n_min, n_min_strategy = None, None
            warnings.append(str(exc))
        mmb = max_micro_batch(arch, hardware, num_gpus, chosen.strategy, dtype, checkpointing)
        memory = {
            "strategy": chosen.strategy,
            **{k: v for k, v in chosen.to_dict().items() if k != "strategy"},
            "ddp": ddp.to_dict(),
            "fsdp": fsdp.to_dict(),
        }
        per_gpu = chosen.total_gb
        if not chosen.fits:
            warnings.append(
                f"{chosen.total_gb:.1f} GB per {hardware.key} exceeds the {chosen.usable_gb:.1f} GB usable "
                f"with {num_gpus} device(s) under {chosen.strategy}; "
                + (f"use at least {n_min} ({n_min_strategy})" if n_min else "no number of devices fits (see above)")
            )
    else:
        chosen_strategy = strategy or "fsdp"
        shard = num_gpus if chosen_strategy == "fsdp" else 1
        per_gpu = n_params * sb.per_param / shard / GB
        n_min = max(1, math.ceil(n_params * sb.per_param / usable_bytes(hardware)))
        n_min_strategy = "ddp" if n_min == 1 else "fsdp"
        mmb = None
        memory = {
            "strategy": chosen_strategy,
            "weights_gb": n_params * sb.weights / shard / GB,
            "grads_gb": n_params * sb.grads / shard / GB,
            "optimizer_gb": n_params * sb.optimizer / shard / GB,
            "activations_gb": None,
            "total_gb": per_gpu,
            "usable_gb": usable_bytes(hardware) / GB,
            "fits": per_gpu * GB <= usable_bytes(hardware),
        }
    return {
        "schema": PLAN_SCHEMA,
        "params": n_params,
        "params_breakdown": breakdown,
        "architecture": arch.to_dict() if arch is not None else None,
        "tokens": float(tokens),
        "flops_convention": convention,
        "flops_per_token": fpt,
        "train_flops": comp.train_flops,
        "gpu": hardware.key,
        "gpu_name": hardware.name,
        "peak_flops": hardware.peak_flops,
        "gpu_memory_gb": hardware.memory_gb,
        "interconnect": hardware.interconnect,
        "num_gpus": num_gpus,
        "mfu": comp.mfu,
        "mfu_source": comp.mfu_source,
        "price_per_gpu_hour": hardware.price_per_hour,
        "tokens_per_s": comp.tokens_per_s,
        "gpu_hours": comp.gpu_hours,
        "wall_hours": comp.wall_hours,
        "wall_days": comp.wall_days,
        "cost_usd": comp.cost_usd,
        "dtype": dtype,
        "micro_batch_size": micro_batch,
        "seq_len": arch.seq_len if arch is not None else None,
        "checkpointing": checkpointing,
        "memory_per_gpu_gb": per_gpu,
        "memory": memory,
        "min_gpus": n_min,
        "min_gpus_strategy": n_min_strategy,
        "max_micro_batch": mmb,
        "sources": {"spec": hardware.spec_source, "price": hardware.price_source},
        "warnings": warnings,
    }


def run_device(cfg: RunConfig) -> str:
    """The catalogue key of the device a run will train on (train.device)."""
    dev = cfg.train.device
    if dev == "cpu":
        return "cpu"
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        cuda = False
    if dev == "cuda" or (dev == "auto" and cuda):
        return detect_gpu() or cfg.plan.gpu
    if dev == "mps":
        return cfg.plan.gpu  # not in the catalogue; priced as the configured GPU
    return "cpu"


def run_dtype(cfg: RunConfig, device_key: str) -> str:
    """The memory mode of a run: fmforge's trainer does bf16 as autocast over fp32
    weights (fmforge.train.device), so "bfloat16" prices as "autocast"."""
    dtype = cfg.train.dtype
    if dtype == "auto":
        if device_key == "cpu":
            try:
                from fmforge.hardware import cpu_has_native_bf16

                dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
            except ImportError:  # pragma: no cover
                dtype = "float32"
        else:
            dtype = "bfloat16"
    return "autocast" if dtype == "bfloat16" else "float32"


def tokens_for_run(cfg: RunConfig, num_devices: int) -> int:
    t = cfg.train
    return t.max_steps * t.micro_batch_size * t.grad_accum_steps * cfg.model.seq_len * num_devices


def plan_for_run(cfg: RunConfig, hardware: str | None = None, num_devices: int | None = None) -> dict[str, Any]:
    """The plan of run ``cfg`` on its own device (what ``fmforge run`` writes to
    ``runs/NAME/plan.json``). ``hardware``: a catalogue key, default the run's device
    (a CPU run uses the measured CPU peak). ``num_devices``: default $WORLD_SIZE, else 1.
    Priced at ``plan.price_per_gpu_hour`` or the catalogue's price; MFU is
    ``plan.mfu`` or the default for the model size."""
    key = hardware or run_device(cfg)
    mode = run_dtype(cfg, key)
    hw = get_hardware(key, cfg.plan.price_per_gpu_hour,
                      cpu_dtype="bfloat16" if mode == "autocast" else "float32")
    n = num_devices or int(os.environ.get("WORLD_SIZE", "0") or 0) or 1
    arch = from_model_config(cfg.resolved_model())
    plan = make_plan(
        hw,
        tokens=tokens_for_run(cfg, n),
        arch=arch,
        num_gpus=n,
        mfu=cfg.plan.mfu,
        micro_batch=cfg.train.micro_batch_size,
        dtype=mode,
        checkpointing=False,
    )
    plan["run"] = {
        "name": cfg.name,
        "device": cfg.train.device,
        "max_steps": cfg.train.max_steps,
        "tokens_per_step": tokens_for_run(cfg, n) // cfg.train.max_steps,
        "created_at": time.time(),
    }
    return plan
