"""Training compute, time and money.

    train_flops = tokens × FLOPs/token                      (architecture.py)
    device_hours = train_flops / (MFU × peak FLOP/s) / 3600
    wall_days   = device_hours / num_gpus / 24
    cost_usd    = device_hours × price per device-hour

MFU (model FLOPs utilisation, Chowdhery et al. 2022, App. B) is the fraction of the
hardware's peak that the model's FLOPs, by the chosen convention, achieve. When the
user gives none, ``default_mfu`` picks a typical value for the model size; the table
is deliberately below the best published runs so that a plan errs on the side of
cost. Published anchors (PaLM-convention MFU): PaLM 540B 46.2%, Gopher 280B 32.5%,
Megatron-Turing NLG 530B 30.2%, GPT-3 175B 21.3% (PaLM paper, Table 3); Llama 2 7B
on A100-80GB, 2T tokens in 184,320 GPU-hours (Touvron et al. 2023, Table 2):
44.5% by PaLM's convention, 40.7% by Kaplan's, 39.1% by 6·N·D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fmforge.plan.errors import PlanError, require_positive
from fmforge.hardware import Hardware

# (upper bound on parameters, MFU, why) — first row whose bound exceeds N wins.
DEFAULT_MFU_TABLE: tuple[tuple[float, float, str], ...] = (
    (1e8, 0.20, "< 100M params: small matmuls, kernel launch and optimizer overheads dominate"),
    (1e9, 0.30, "100M-1B: matmuls big enough, but norms/softmax/optimizer still a large share"),
    (2e10, 0.40, "1B-20B: Llama-2-7B class; published runs reach 0.40-0.45"),
    (2e11, 0.38, "20B-200B: tensor/pipeline parallel communication costs a few points"),
    (float("inf"), 0.35, ">= 200B: large-scale 3D parallelism; GPT-3 0.21, Gopher 0.33, PaLM 0.46"),
)
# On a CPU the "peak" is our own measured matmul rate in the run's precision, so
# MFU is relative to that. Measured with fmforge's trainer on a 2-thread AMD EPYC
# (benchmarks/README.md): bf16 autocast 0.40-0.46 (the fp32 norms, softmax and
# optimizer do not speed up with bf16), float32 0.54-0.60.
DEFAULT_CPU_MFU = {"bfloat16": 0.40, "autocast": 0.40, "float32": 0.55}


def default_mfu(params: float, hardware: Hardware | None = None, dtype: str = "bfloat16") -> float:
    """A typical MFU for a model of ``params`` parameters (table above); on a CPU,
    the measured typical fraction of its matmul peak in ``dtype``."""
    if hardware is not None and hardware.is_cpu:
        return DEFAULT_CPU_MFU.get(dtype, DEFAULT_CPU_MFU["float32"])
    for bound, mfu, _ in DEFAULT_MFU_TABLE:
        if params < bound:
            return mfu
    raise AssertionError("unreachable")  # pragma: no cover


def check_mfu(mfu: float) -> None:
    require_positive("MFU", mfu)
    if mfu > 1:
        raise PlanError(f"MFU must be a fraction of peak in (0, 1], got {mfu:g} (did you mean {mfu / 100:g}?)")


@dataclass(frozen=True)
class ComputeEstimate:
    tokens: float
    flops_per_token: float
    train_flops: float
    mfu: float
    mfu_source: str  # "given" | "default for model size" | "default for CPU"
    num_gpus: int
    peak_flops: float
    price_per_hour: float
    gpu_hours: float
    wall_hours: float
    wall_days: float
    cost_usd: float
    tokens_per_s: float  # whole cluster, at this MFU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_compute(
    tokens: float,
    flops_per_token: float,
    hardware: Hardware,
    num_gpus: int = 1,
    mfu: float | None = None,
    params: float | None = None,
    dtype: str = "bfloat16",
    recompute_fraction: float = 0.0,
) -> ComputeEstimate:
    """Time and money for ``tokens`` at ``flops_per_token`` (model FLOPs).

    ``recompute_fraction``: extra hardware work as a fraction of the model FLOPs,
    e.g. 1/3 with full activation checkpointing (the forward pass, a third of
    6N, runs twice). MFU counts model FLOPs only (PaLM's definition), so the
    recomputation costs time without raising MFU."""
    require_positive("tokens", tokens)
    require_positive("FLOPs per token", flops_per_token)
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int):
        raise PlanError(f"number of GPUs must be a whole number, got {num_gpus!r}")
    require_positive("number of GPUs", num_gpus)
    if mfu is None:
        if params is None:
            raise PlanError("give an MFU, or the parameter count so a default MFU can be chosen")
        mfu = default_mfu(params, hardware, dtype)
        source = "default for CPU" if hardware.is_cpu else "default for model size"
    else:
        source = "given"
    check_mfu(mfu)
    if not hardware.peak_flops > 0:
        raise PlanError(f"{hardware.key}: peak FLOP/s unknown (measure the CPU first)")
    train_flops = tokens * flops_per_token
    work = 1.0 + recompute_fraction
    gpu_seconds = train_flops * work / (mfu * hardware.peak_flops)
    gpu_hours = gpu_seconds / 3600
    wall_hours = gpu_hours / num_gpus
    return ComputeEstimate(
        tokens=float(tokens),
        flops_per_token=float(flops_per_token),
        train_flops=float(train_flops),
        mfu=float(mfu),
        mfu_source=source,
        num_gpus=num_gpus,
        peak_flops=hardware.peak_flops,
        price_per_hour=hardware.price_per_hour,
        gpu_hours=gpu_hours,
        wall_hours=wall_hours,
        wall_days=wall_hours / 24,
        cost_usd=gpu_hours * hardware.price_per_hour,
        tokens_per_s=num_gpus * mfu * hardware.peak_flops / (flops_per_token * work),
    )


def implied_mfu(train_flops: float, gpu_hours: float, peak_flops: float) -> float:
    """The MFU a published (FLOPs, GPU-hours) pair implies: FLOPs / (GPU-s × peak)."""
    require_positive("train FLOPs", train_flops)
    require_positive("GPU-hours", gpu_hours)
    require_positive("peak FLOP/s", peak_flops)
    return train_flops / (gpu_hours * 3600 * peak_flops)
