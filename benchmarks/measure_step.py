"""The trainer's step on random tokens, timed, with its peak memory: what
``plan_vs_measured.py`` and ``gpu_train_check.py`` measure, in one place.

Run it in a fresh process (``python SCRIPT --worker-spec JSON``) so the RSS
high-water mark and CUDA state start clean. ``spec`` keys: ``device``,
``train_dtype`` (float32 | bfloat16), ``model`` (ModelConfig fields),
``micro_batch``, ``warmup``, ``steps``, ``compile``, and optionally
``compile_backend`` (torch.compile's backend, default inductor),
``checkpointing`` (activation checkpointing, as the trainer applies it) and
``peak_after_warmup`` (on CUDA, measure the steady-state peak of the timed
steps rather than the peak since the model was built).
"""

from __future__ import annotations

import math
from typing import Any

from harness import DevicePeak, Timer, device_sync, timed_steps


def train_step_worker(spec: dict[str, Any]) -> dict[str, Any]:

    import torch

    from fmforge.config import ModelConfig, TrainConfig
    from fmforge.model.transformer import Transformer
    from fmforge.train.device import autocast
    from fmforge.train.loop import apply_activation_checkpointing
    from fmforge.train.optim import build_optimizer

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    tcfg = TrainConfig(device=spec["device"], dtype=spec["train_dtype"])
    cfg = ModelConfig(**spec["model"])
    b, t = spec["micro_batch"], cfg.seq_len
    sync = device_sync(device)
    memory = DevicePeak(device)

    def make_step(model, run, x, y):
        opt = build_optimizer(model, tcfg)

        def step() -> float:
            with autocast(device, tcfg):
                loss = run(x, y)
            loss.backward()
            loss_value = float(loss.detach())  # the trainer reads the loss every micro-step
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip))
            if math.isfinite(loss_value) and math.isfinite(norm):  # checked before the step, as the trainer
                opt.step()
            opt.zero_grad(set_to_none=True)
            return loss_value
        return step

    # One-time allocations (thread pools, cuBLAS workspace, autograd engine) go
    # into the baseline, not the delta.
    tiny = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, seq_len=8)).to(device)
    z = torch.zeros(1, 8, dtype=torch.long, device=device)
    make_step(tiny, tiny, z, z)()
    del tiny
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    memory.mark()

    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    if spec.get("checkpointing"):
        apply_activation_checkpointing(model)
    run = torch.compile(model, backend=spec.get("compile_backend", "inductor")) if spec["compile"] else model
    x = torch.randint(0, cfg.vocab_size, (b, t), device=device)
    y = torch.randint(0, cfg.vocab_size, (b, t), device=device)
    step = make_step(model, run, x, y)

    with Timer(sync) as warmup:
        for _ in range(spec["warmup"]):
            step()
    steady = cuda and spec.get("peak_after_warmup", False)
    if steady:
        # Weights and optimizer state stay allocated, so the peak measured from
        # here still counts them (less the pre-model baseline).
        memory.restart()
    times, losses = timed_steps(step, spec["steps"], sync)

    out: dict[str, Any] = {"step_times_s": times, "warmup_s": warmup.wall_s, "loss_last": losses[-1],
                           "params_instantiated": model.num_parameters(), "peak_bytes": memory.peak_bytes()}
    if cuda:
        out["reserved_peak_bytes"] = memory.reserved_peak_bytes()
        out["memory_method"] = ("torch.cuda.max_memory_allocated() over the timed steps" if steady else
                                "torch.cuda.max_memory_allocated()") + ", less the pre-model baseline"
    else:
        out["memory_method"] = "peak RSS (VmHWM) growth in a fresh process after a tiny warm-up step"
    return out
