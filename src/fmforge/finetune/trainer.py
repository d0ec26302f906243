"""The fine-tuning loop, built from the training engine's pieces: the learning-rate
schedules and AdamW of ``train.optim``, precision from ``train.device``,
``metrics.jsonl`` and TensorBoard from ``train.metrics``, checkpoint listing and
pruning from ``train.checkpoint``, atomic directories from ``rundir``, the stop
signals of ``train.loop``, the progress bar.

What differs from pretraining is the model (a ``transformers`` model, usually
wrapped by peft), the loss (summed over the target tokens of a whole step, then
divided by their count, so every assistant token weighs the same however the
examples fall into micro-batches) and the checkpoint: only the parameters that
train are saved (a LoRA checkpoint is megabytes, not the base again).

Exact resume: a batch is a pure function of (seed, step), dropout is reseeded
from (seed, step) at every step, and the optimizer state is saved, so a run
killed and resumed logs the losses of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors.torch import load_file, save_file

from fmforge.config import TrainConfig
from fmforge.finetune.data import IGNORE
from fmforge.finetune.evaluate import loss_sum, shifted_targets
from fmforge.hardware import peak_rss_bytes
from fmforge.progress import log, progress_bar
from fmforge.rundir import RunDir, atomic_directory, atomic_write_json
from fmforge.train.checkpoint import checkpoint_dir, list_checkpoints, prune_checkpoints
from fmforge.train.device import autocast
from fmforge.train.loop import (
    StopRequest,
    TrainingDiverged,
    _install_stop_handlers,
    _restore_handlers,
    set_aside,
)
from fmforge.train.metrics import MetricsLog, ScalarBoard
from fmforge.train.optim import build_optimizer, lr_at

WEIGHTS = "model.safetensors"  # the name train.checkpoint.list_checkpoints looks for


class Batches(Protocol):
    def batch(self, step: int, micro: int) -> dict[str, torch.Tensor]: ...
    def epoch_at(self, step: int) -> float: ...


@dataclass
class LoopSettings:
    max_steps: int
    grad_accum: int
    seed: int
    lineage: str  # what must match for a checkpoint to be resumed
    device: torch.device
    dtype: str  # resolved: float32 | bfloat16 | float16


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_step(ft: RunDir, step: int, model, optimizer, state: dict[str, Any], keep: int) -> Path:
    with atomic_directory(checkpoint_dir(ft.checkpoints, step)) as tmp:
        save_file(trainable_state(model), str(Path(tmp) / WEIGHTS))
        torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
        atomic_write_json(Path(tmp) / "trainer_state.json", {"step": step, **state})
    prune_checkpoints(ft.checkpoints, keep)
    return checkpoint_dir(ft.checkpoints, step)


def load_step(ckpt: Path, model, optimizer) -> None:
    saved = load_file(str(ckpt / WEIGHTS))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise ValueError(f"{ckpt} holds other trainable parameters than this model "
                         f"({len(saved)} saved, {len(params)} here)")
    with torch.no_grad():
        for name, t in saved.items():
            params[name].copy_(t)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))


def _resume(ft: RunDir, model, optimizer, lineage: str, fresh: bool) -> dict[str, Any]:
    if fresh and ft.checkpoints.exists():
        set_aside(ft, "--force")
    for step, ckpt in reversed(list_checkpoints(ft.checkpoints)):
        try:
            state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("lineage") != lineage:
            set_aside(ft, "the base, data or fine-tuning settings changed since the last checkpoint")
            return {}
        try:
            load_step(ckpt, model, optimizer)
        except Exception as exc:  # noqa: BLE001 - damage: fall back to the one before
            log(f"[yellow]{ckpt} cannot be loaded ({type(exc).__name__}: {exc}); trying the one before[/yellow]")
            continue
        log(f"resuming fine-tuning from {ckpt} (step {step})")
        return state
    return {}


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA's peak allocation, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return peak_rss_bytes(), "process_peak_rss"


def run_loop(model, batches: Batches, tcfg: TrainConfig, ft: RunDir, s: LoopSettings,
             validate: Callable[[], dict[str, float]] | None = None, fresh: bool = False,
             tokens_per_sample: Callable[[dict], int] | None = None) -> dict[str, Any]:
    """Train ``model``'s trainable parameters for ``s.max_steps`` steps, resuming a
    checkpoint of the same lineage. Returns the summary (losses, speed, memory)."""
    device = s.device
    optimizer = build_optimizer(model, tcfg)
    state = _resume(ft, model, optimizer, s.lineage, fresh)
    start = int(state.get("step", 0))
    elapsed_before = float(state.get("elapsed_s", 0.0))
    tokens_seen = int(state.get("tokens", 0))
    skipped = int(state.get("skipped_steps", 0))
    consecutive_skips = 0
    metrics = MetricsLog(ft.metrics)
    if start == 0:
        metrics.reset()
    else:
        metrics.truncate_after(start)
    board = ScalarBoard(ft.root / "tb", purge_step=start, enabled=tcfg.tensorboard)
    amp = lambda: autocast(device, tcfg)  # noqa: E731
    scaler = torch.amp.GradScaler("cuda") if s.dtype == "float16" else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    stop = StopRequest()
    previous = _install_stop_handlers(stop)
    last: dict[str, Any] = (metrics.last() or {}) if start else {}
    first_loss = state.get("first_loss")
    session_start = time.perf_counter()
    interval_start, interval_tokens = session_start, 0
    step_times: list[float] = []
    model.train()
    step = start
    try:
        with progress_bar("fine-tuning", total=s.max_steps) as bar:
            bar.update(completed=start)
            while step < s.max_steps:
                t0 = time.perf_counter()
                lr = lr_at(step, s.max_steps, tcfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                torch.manual_seed(s.seed * 1_000_003 + step)  # dropout: the same on resume
                micro = [batches.batch(step, m) for m in range(s.grad_accum)]
                n_targets = sum(int((shifted_targets(b) != IGNORE).sum()) for b in micro)
                loss_total = 0.0
                for b in micro:
                    with amp():
                        summed, _ = loss_sum(model, b, device)
                    scaled = summed / max(n_targets, 1)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    loss_total += float(summed.detach())
                    interval_tokens += tokens_per_sample(b) if tokens_per_sample else int(b["input_ids"].numel())
                if scaler:
                    scaler.unscale_(optimizer)
                max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
                loss_value = loss_total / max(n_targets, 1)
                finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
                if finite:
                    (scaler.step(optimizer) if scaler else optimizer.step())
                    consecutive_skips = 0
                else:
                    skipped += 1
                    # float16's scaler skips while it calibrates; only a scale that
                    # cannot shrink further, or a non-finite loss, counts toward stopping.
                    scale = scaler.get_scale() if scaler else None
                    if scale is None or not math.isfinite(loss_value) or scale <= 1.0:
                        consecutive_skips += 1
                    log(f"[yellow]step {step + 1}: non-finite loss or gradient, step skipped[/yellow]")
                    if consecutive_skips >= tcfg.max_skipped_steps:
                        raise TrainingDiverged(
                            f"{consecutive_skips} consecutive steps had a non-finite loss or gradient "
                            f"(up to step {step + 1}): lower finetune.lr, raise finetune.warmup_steps "
                            "or check the data; the last checkpoint is intact and a rerun resumes from it")
                if scaler:
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += sum(int(b["input_ids"].numel()) for b in micro)
                step_times.append(time.perf_counter() - t0)
                if first_loss is None and finite:
                    first_loss = loss_value
                bar.advance()
                is_end = step == s.max_steps
                is_eval = validate is not None and (step % tcfg.eval_every == 0 or is_end)
                if finite and (step % tcfg.log_every == 0 or is_eval or step == start + 1):
                    now = time.perf_counter()
                    tps = interval_tokens / max(now - interval_start, 1e-9)
                    record = {"step": step, "loss": round(loss_value, 5), "lr": lr,
                              "tokens_per_s": round(tps, 1), "grad_norm": round(grad_norm, 4),
                              "tokens": tokens_seen, "target_tokens": n_targets,
                              "elapsed_s": round(elapsed_before + now - session_start, 2),
                              "epoch": round(batches.epoch_at(step), 4)}
                    if skipped:
                        record["skipped_steps"] = skipped
                    if is_eval:
                        record.update(validate())
                        log(f"step {step}/{s.max_steps}: loss {loss_value:.4f}"
                            + (f", val loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                            + f", {tps:,.0f} tokens/s")
                    metrics.append(record)
                    board.add(step, record)
                    last = record
                    interval_start, interval_tokens = time.perf_counter(), 0
                    bar.update(info=f"loss {loss_value:.3f}")
                if step % tcfg.checkpoint_every == 0 or is_end or stop.requested:
                    save_step(ft, step, model, optimizer,
                              {"lineage": s.lineage, "max_steps": s.max_steps, "tokens": tokens_seen,
                               "elapsed_s": elapsed_before + time.perf_counter() - session_start,
                               "skipped_steps": skipped, "first_loss": first_loss},
                              tcfg.keep_checkpoints)
                if stop.requested and not is_end:
                    raise KeyboardInterrupt(f"stopped by {stop.signal_name or 'a signal'} at step {step}")
    finally:
        _restore_handlers(previous)
        board.close()
    wall = time.perf_counter() - session_start
    peak, peak_kind = peak_memory(device)
    timed = step_times[1:] if len(step_times) > 2 else step_times
    return {"steps": s.max_steps, "first_loss": first_loss, "final_loss": last.get("loss"),
            "val_loss": last.get("val_loss"), "tokens": tokens_seen,
            "wall_s": round(elapsed_before + wall, 2),
            "tokens_per_s": round(_rate(tokens_seen, state, wall), 1),
            "step_s": round(sorted(timed)[len(timed) // 2], 4) if timed else None,
            "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
            "skipped_steps": skipped, "trained_steps_this_session": s.max_steps - start}


def _rate(tokens_seen: int, state: dict, wall: float) -> float:
    """Tokens per second of this session (what the planner compares)."""
    before = int(state.get("tokens", 0))
    return (tokens_seen - before) / wall if wall > 0 else 0.0
