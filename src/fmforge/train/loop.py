"""The training loop: composes the model, optimizer, schedule, loader, checkpoints
and metrics. Resumes from the latest complete checkpoint of the same training
fingerprint; SIGINT/SIGTERM stop at the next step boundary after saving one.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fmforge.config import RunConfig
from fmforge.hardware import HardwareError, device_peak_flops
from fmforge.model.counting import count_parameters, flops_per_token
from fmforge.model.scoring import score_tokens
from fmforge.model.transformer import Transformer
from fmforge.progress import log, progress_bar
from fmforge.rundir import RunDir
from fmforge.tokenizer.load import load_tokenizer, token_byte_lengths
from fmforge.tokenizer.tokens import load_meta, open_tokens
from fmforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fmforge.train.device import autocast, configure_threads, pick_device, resolve_dtype
from fmforge.train.loader import TokenWindowLoader
from fmforge.train.metrics import MetricsLog
from fmforge.train.optim import build_optimizer, lr_at


@dataclass
class StopRequest:
    """Set by a signal handler; the loop saves and stops at the next step boundary."""

    requested: bool = False
    signal_name: str = ""


def _install_stop_handlers(stop: StopRequest):
    previous = {}

    def handler(signum, frame):
        if stop.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        stop.requested = True
        stop.signal_name = signal.Signals(signum).name
        log(f"[yellow]{stop.signal_name}: saving a checkpoint at the end of this step "
            "(send again to stop at once)[/yellow]")

    # Python lets only the main thread install handlers; training started from
    # another thread (a server, a notebook worker) keeps the default behaviour.
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous) -> None:
    for sig, h in previous.items():
        signal.signal(sig, h)


def build_model(cfg: RunConfig, device: torch.device) -> Transformer:
    torch.manual_seed(cfg.seed)
    return Transformer(cfg.resolved_model()).to(device)


def set_aside_checkpoints(run: RunDir, reason: str) -> None:
    """Move checkpoints that no longer match the config to ``checkpoints.previous/``
    (replacing an older set) rather than deleting days of training on a typo."""
    aside = run.root / "checkpoints.previous"
    if aside.exists():
        shutil.rmtree(aside)
    run.checkpoints.rename(aside)
    log(f"{reason}: starting afresh; the earlier checkpoints are kept in {aside}")


def run_train_stage(cfg: RunConfig, run: RunDir, fingerprint: str, fresh: bool = False) -> dict:
    """Train, resuming from the latest checkpoint of the same fingerprint unless
    ``fresh``. Returns the summary recorded in ``stages.json``."""
    tcfg, mcfg = cfg.train, cfg.resolved_model()
    configure_threads(tcfg)
    device = pick_device(tcfg.device)  # before touching checkpoints: a bad device changes nothing
    tokens_record = run.stage_record("tokenize")
    tokens_fp = tokens_record.get("output", tokens_record["fingerprint"]) if tokens_record else None
    meta = load_meta(run)
    if meta["vocab_size"] != mcfg.vocab_size:
        raise ValueError(
            f"token shards in {run.tokens} were encoded for vocab_size={meta['vocab_size']} "
            f"but the model has vocab_size={mcfg.vocab_size}: rerun `fmforge tokenize`"
        )
    train_tokens = open_tokens(run, "train")
    val_tokens = open_tokens(run, "val")
    loader = TokenWindowLoader(train_tokens, mcfg.seq_len, tcfg.micro_batch_size, cfg.seed)
    token_bytes = token_byte_lengths(load_tokenizer(run), mcfg.vocab_size)

    model = build_model(cfg, device)
    optimizer = build_optimizer(model, tcfg)
    amp = lambda: autocast(device, tcfg)  # noqa: E731
    metrics = MetricsLog(run.metrics)

    start_step, elapsed_before, tokens_before = 0, 0.0, 0
    if fresh and run.checkpoints.exists():
        set_aside_checkpoints(run, "--force")
    ckpt = latest_checkpoint(run.checkpoints)
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        if state.get("fingerprint") == fingerprint:
            state = load_checkpoint(ckpt, model, optimizer)
            start_step = int(state["step"])
            elapsed_before = float(state.get("elapsed_s", 0.0))
            tokens_before = int(state.get("tokens", 0))
            log(f"resuming training from {ckpt} (step {start_step}/{tcfg.max_steps})")
        else:
            set_aside_checkpoints(run, "the model, training settings or data changed "
                                       "since the last checkpoint")
    last: dict = {}
    if start_step == 0:
        metrics.reset()
    else:
        metrics.truncate_after(start_step)
        last = metrics.last() or {}

    params = count_parameters(mcfg).total
    fpt = flops_per_token(mcfg)
    try:
        peak = device_peak_flops(device.type, resolve_dtype(device, tcfg))
    except HardwareError as exc:
        log(f"MFU not logged: {exc}")
        peak = None
    tokens_per_step = tcfg.micro_batch_size * tcfg.grad_accum_steps * mcfg.seq_len
    log(f"model: {params:,} parameters; {tokens_per_step:,} tokens per step; device {device}")

    def save(step: int, tokens: int, elapsed: float) -> Path:
        return save_checkpoint(
            run.checkpoints, step, model, optimizer,
            {"fingerprint": fingerprint, "tokens": tokens, "elapsed_s": elapsed,
             "params": params, "seed": cfg.seed, "tokens_fingerprint": tokens_fp,
             # The architecture travels with the weights, so loading never depends
             # on a config.yaml that a later command may have rewritten.
             "model": mcfg.model_dump(mode="json")},
            keep=tcfg.keep_checkpoints,
        )

    def validate() -> dict:
        if len(val_tokens) < 2:
            return {}
        res = score_tokens(model, val_tokens, mcfg.seq_len, tcfg.micro_batch_size, device,
                              max_tokens=tcfg.eval_batches * tcfg.micro_batch_size * mcfg.seq_len,
                              token_bytes=token_bytes, autocast=amp)
        out = {"val_loss": round(res.loss, 5)}
        if res.bits_per_byte is not None:  # unknown is absent, never a misleading 0
            out["val_bits_per_byte"] = round(res.bits_per_byte, 5)
        return out

    stop = StopRequest()
    previous_handlers = _install_stop_handlers(stop)
    model.train()
    session_start = time.perf_counter()
    interval_start, interval_tokens = session_start, 0
    tokens_seen, last_saved = tokens_before, start_step
    try:
        with progress_bar("training", total=tcfg.max_steps) as bar:
            bar.update(completed=start_step)
            for step in range(start_step, tcfg.max_steps):
                lr = lr_at(step, tcfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for micro in range(tcfg.grad_accum_steps):
                    x, y = loader.batch(step, micro)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with amp():
                        loss = model(x, y)
                    (loss / tcfg.grad_accum_steps).backward()
                    loss_sum += float(loss.detach())
                max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

                done = step + 1
                tokens_seen += tokens_per_step
                interval_tokens += tokens_per_step
                loss_value = loss_sum / tcfg.grad_accum_steps
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"loss became {loss_value} at step {done}: lower train.lr or raise "
                        "train.warmup_steps; the last good checkpoint is kept"
                    )
                bar.advance()
                is_eval = done % tcfg.eval_every == 0 or done == tcfg.max_steps
                if done % tcfg.log_every == 0 or is_eval or done == start_step + 1:
                    now = time.perf_counter()
                    tps = interval_tokens / max(now - interval_start, 1e-9)
                    interval_start, interval_tokens = now, 0
                    record = {"step": done, "loss": round(loss_value, 5), "lr": lr,
                              "tokens_per_s": round(tps, 1), "grad_norm": round(grad_norm, 4),
                              "tokens": tokens_seen,
                              "elapsed_s": round(elapsed_before + now - session_start, 2),
                              "flops_per_token": fpt}
                    if peak:
                        record["mfu"] = round(tps * fpt / peak, 4)
                    if is_eval:
                        record.update(validate())
                        interval_start = time.perf_counter()  # validation is not training time
                        log(f"step {done}/{tcfg.max_steps}: loss {loss_value:.4f}"
                            + (f", val loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                            + f", {tps:,.0f} tokens/s"
                            + (f", MFU {record['mfu']:.2f}" if "mfu" in record else ""))
                    metrics.append(record)
                    last = record
                    bar.update(info=f"loss {loss_value:.3f} · {tps:,.0f} tok/s"
                               + (f" · val {record['val_loss']:.3f}" if "val_loss" in record else ""))
                if done % tcfg.checkpoint_every == 0 or done == tcfg.max_steps or stop.requested:
                    save(done, tokens_seen, elapsed_before + time.perf_counter() - session_start)
                    last_saved = done
                if stop.requested and done < tcfg.max_steps:
                    raise KeyboardInterrupt(f"stopped by {stop.signal_name} at step {done}")
    finally:
        _restore_handlers(previous_handlers)

    wall = time.perf_counter() - session_start
    trained = tcfg.max_steps - start_step
    return {
        "steps": tcfg.max_steps,
        "params": params,
        "tokens": tokens_seen,
        "final_loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "wall_s": round(elapsed_before + wall, 2),
        "tokens_per_s": round(trained * tokens_per_step / wall, 1) if trained else None,
        "flops_per_token": fpt,
        "device": str(device),
        "last_checkpoint": last_saved,
    }
