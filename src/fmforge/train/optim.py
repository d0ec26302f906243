"""AdamW with weight decay only on matmul weights, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fmforge.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D matmul weights; never norms (1-D) or embeddings, whose decay
    only shrinks rarely-seen token rows (a tied head shares the embedding, so it
    is not decayed either)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch has one for the device
    (CPU and CUDA): the per-parameter loop of the plain implementation costs more
    than the update itself for a small model. Parameters sharded by FSDP
    (DTensors) take it too: DTensor runs the fused kernel on each local shard, with
    the same results as one process, where the multi-tensor (foreach) fallback
    allocates temporaries: 0.13 GB more per process during the first step of a 320M
    model on 2 (benchmarks/bench_fsdp_memory.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=1e-8,
        fused=fused or None,
    )


def decay_start(max_steps: int, cfg: TrainConfig) -> int:
    """The first step whose learning rate depends on ``max_steps``: the end of
    warmup (cosine), the start of the final decay (wsd), never (constant)."""
    if cfg.schedule == "cosine":
        return cfg.warmup_steps
    if cfg.schedule == "wsd":
        return max(cfg.warmup_steps, max_steps - max(1, round(cfg.decay_fraction * max_steps)))
    return max_steps


def lr_at(step: int, max_steps: int, cfg: TrainConfig) -> float:
    """The learning rate of ``step`` (counted from 0) in a run of ``max_steps``.

    All schedules warm up linearly to ``lr`` over ``warmup_steps``. Then
    cosine decays to ``min_lr_ratio·lr`` at the last step; wsd (warmup-stable-decay,
    Hu et al. 2024, MiniCPM) holds ``lr`` and decays linearly to the minimum over the
    last ``decay_fraction`` of the steps; constant holds ``lr``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    start = decay_start(max_steps, cfg)
    if step < start:
        return cfg.lr
    progress = min(1.0, (step - start) / max(1, max_steps - start))
    if cfg.schedule == "wsd":
        return cfg.lr - (cfg.lr - min_lr) * progress
    return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
