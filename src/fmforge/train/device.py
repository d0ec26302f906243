"""Where training runs and at what precision."""

from __future__ import annotations

import contextlib

import torch

from fmforge.config import TrainConfig
from fmforge.errors import UserError
from fmforge.hardware import cpu_has_native_bf16


class DeviceError(UserError, ValueError):
    """The requested device does not exist here."""


def pick_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda", "mps"):
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda was asked for but CUDA is not available here; use auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("device mps was asked for but Apple's MPS is not available here; use auto or cpu")
    return torch.device(name)


def resolve_dtype(device: torch.device, cfg: TrainConfig) -> str:
    if cfg.dtype == "float16" and device.type != "cuda":
        raise DeviceError(
            f"train.dtype=float16 needs CUDA (it trains with a gradient scaler there); on "
            f"{device.type} use bfloat16 or float32"
        )
    if cfg.dtype != "auto":
        return cfg.dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device.type == "cpu":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return "float32"


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 (or fp16) autocast for the matmuls; weights, gradients and the
    optimizer stay fp32."""
    dtype = resolve_dtype(device, cfg)
    if dtype in ("bfloat16", "float16"):
        return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def configure_threads(cfg: TrainConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
