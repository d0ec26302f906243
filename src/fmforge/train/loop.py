"""The training loop: composes the model, parallelism, optimizer, schedule,
loader, checkpoints, budget and metrics, each from its own module.

Resumes from the latest loadable checkpoint of the same training lineage;
SIGINT/SIGTERM stop at the next step boundary after saving one. A step whose
loss or gradient norm is not finite changes nothing (it is skipped and logged).
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
from fmforge.model.scoring import score_tokens, spread_starts
from fmforge.model.transformer import Transformer
from fmforge.progress import log, progress_bar
from fmforge.errors import UserError
from fmforge.rundir import (
    ArtifactError,
    RunDir,
    RunDirWriteError,
    new_aside_folder,
    set_aside_evaluations,
    storage_advice,
    storage_errno,
)
from fmforge.tokenizer.load import load_tokenizer, token_byte_lengths
from fmforge.tokenizer.tokens import load_meta, open_tokens
from fmforge.train.budget import StepBudget
from fmforge.train.checkpoint import (
    STEP_DIR,
    CheckpointFormatError,
    checkpoint_damage,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from fmforge.train.device import autocast, configure_threads, resolve_dtype
from fmforge.train.distributed import Parallel, build_sharded, setup_parallel, teardown, wrap_model
from fmforge.train.loader import EpochWindowLoader
from fmforge.train.metrics import MetricsLog, ScalarBoard
from fmforge.train.optim import build_optimizer, decay_start, lr_at


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


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


def _seeded_model(cfg: RunConfig) -> Transformer:
    torch.manual_seed(cfg.seed)
    return Transformer(cfg.resolved_model())


def build_model(cfg: RunConfig, device: torch.device) -> Transformer:
    """The whole model on ``device`` (one process, DDP). FSDP builds it on the meta
    device instead (``build_sharded``), with the same weights."""
    return _seeded_model(cfg).to(device)


def apply_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of keeping
    them: about a third more compute for memory that no longer grows with depth.
    Applied from outside, so parameter names (and checkpoints) do not change."""
    from torch.utils.checkpoint import checkpoint

    for block in model.blocks:
        forward = block.forward
        block.forward = lambda *args, _f=forward, **kw: checkpoint(_f, *args, use_reentrant=False, **kw)


def set_aside(run: RunDir, reason: str, checkpoints: list[Path] | None = None) -> None:
    """Move checkpoints that no longer match the config (all of them unless a list
    is given) into a new folder ``checkpoints.previous/<UTC time>/`` with the
    reason in ``reason.txt``, rather than deleting days of training: each set-aside
    gets its own folder, so a second change of config keeps the first one's too.
    The evaluations of those checkpoints (eval.json's held-out steps, history and
    lm-eval results) go with them, into that folder's ``eval.json``, so the run's
    figures are never a discarded model's; scores of other models stay."""
    aside = new_aside_folder(run, reason)
    if checkpoints is None:
        set_aside_evaluations(run, aside)  # before the checkpoints: never a discarded model's figures
        for ck in list(run.checkpoints.iterdir()) if run.checkpoints.exists() else []:
            ck.rename(aside / ck.name)
        log(f"{reason}: starting afresh; the earlier checkpoints (and their evaluations) are kept in {aside}")
        return
    steps = [int(m.group(1)) for m in (STEP_DIR.match(ck.name) for ck in checkpoints) if m]
    if steps:  # evaluations of those steps and after scored checkpoints that go
        set_aside_evaluations(run, aside, lambda step, lineage: step >= min(steps))
    for ck in checkpoints:
        ck.rename(aside / ck.name)
    log(f"{reason}; the later checkpoints (and their evaluations) are kept in {aside}")


def _state_of(ckpt: Path) -> dict | None:
    """The checkpoint's trainer state, or None when the file is damaged (not JSON).
    An I/O error propagates: a disk that cannot be read is not a damaged checkpoint."""
    try:
        return load_trainer_state(ckpt)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


class _Session:
    """What one call of ``run_train_stage`` builds: kept together so resuming can
    rebuild the model after a checkpoint fails to load halfway."""

    def __init__(self, cfg: RunConfig, par: Parallel, dtype: str):
        tcfg = cfg.train
        prepare = apply_activation_checkpointing if tcfg.activation_checkpointing else (lambda m: None)
        if par.sharded:
            # Never whole on any process: built on the meta device, sharded, then
            # each process fills in its shard (the weights of a plain build).
            self.raw = self.model = build_sharded(lambda: _seeded_model(cfg), par, dtype, prepare)
        else:
            self.raw = build_model(cfg, par.device)
            prepare(self.raw)
            self.model = wrap_model(self.raw, par, dtype)
        # FSDP2 shards parameters in place, so the optimizer is built after wrapping.
        self.optimizer = build_optimizer(self.model if par.sharded else self.raw, tcfg)
        self.step_fn = torch.compile(self.model) if tcfg.compile else self.model


def _resume(run: RunDir, session_factory, par: Parallel, lineage: str, max_steps: int | None,
            cfg: RunConfig, fresh: bool):
    """Find the checkpoint to continue from. Returns (session, trainer state or {})."""
    tcfg = cfg.train
    # Rank 0 alone moves checkpoints; every process reads the directory only after
    # a barrier, so all take the same branch below.
    if fresh:
        if par.is_main and run.checkpoints.exists():
            set_aside(run, "--force")
        par.barrier()
    session = session_factory()
    while True:
        par.barrier()
        found = list_checkpoints(run.checkpoints)
        if not found:
            return session, {}
        step, ckpt = found[-1]
        state = _state_of(ckpt)
        if state is not None and state.get("lineage") != lineage:
            if par.is_main:
                set_aside(run, "the model, training settings or data changed since the last checkpoint")
            par.barrier()
            return session, {}
        old_max = (state or {}).get("max_steps")
        if state is not None and max_steps is not None and old_max is not None and old_max != max_steps:
            # Only a WSD run keeps its lineage across a new step count: continue from
            # the last checkpoint whose future learning rates the new run shares.
            limit = min(decay_start(old_max, tcfg), decay_start(max_steps, tcfg))
            later = [ck for s, ck in found if s > limit]
            if later:
                if par.is_main:
                    set_aside(run, f"train.max_steps changed from {old_max} to {max_steps}: "
                                   f"continuing from step {limit} or before, where the "
                                   "learning-rate decay had not begun", later)
                par.barrier()
                continue
        failure, error = None, None
        if state is None:
            failure = "its trainer_state.json is not valid JSON"
        else:
            try:
                load_checkpoint(ckpt, session.model if par.sharded else session.raw,
                                session.optimizer)
            except CheckpointFormatError:
                raise  # sound, but not resumable this way: the message says what to do
            except Exception as exc:  # noqa: BLE001 - sorted below into damage or not
                # Only damage to the files may cost a checkpoint; an out-of-memory,
                # an I/O error or a bug of ours stops the run and touches nothing.
                try:
                    damage = checkpoint_damage(ckpt)
                except Exception:  # noqa: BLE001 - the check failing too is not damage
                    damage = None
                if damage is None:
                    error = exc
                else:
                    failure = f"{damage}; loading said {type(exc).__name__}: {exc}"
        if par.any(error is not None):
            if error is not None:
                raise error
            raise RuntimeError(f"another process failed to load {ckpt} (its log has the error); "
                               "no checkpoint was set aside")
        if not par.any(failure is not None):
            log(f"resuming training from {ckpt} (step {step})")
            return session, state
        if par.is_main:
            bad = ckpt.with_name(ckpt.name + ".unreadable")
            if bad.exists():
                shutil.rmtree(bad)
            ckpt.rename(bad)
            log(f"[yellow]the latest checkpoint {ckpt} cannot be loaded ({failure or 'on another process'}); "
                f"set aside as {bad.name}, trying the one before it[/yellow]")
        par.barrier()
        session = session_factory()  # a half-loaded model must not be trained on


def run_train_stage(cfg: RunConfig, run: RunDir, fingerprint: str, fresh: bool = False,
                    lineage: str | None = None) -> dict:
    """Train, resuming from the latest checkpoint of the same ``lineage`` (the
    fingerprint less what may change between a run and its continuation) unless
    ``fresh``. Returns the summary recorded in ``stages.json``."""
    tcfg = cfg.train
    lineage = lineage or fingerprint
    stage_start = time.perf_counter()
    configure_threads(tcfg)
    par = setup_parallel(tcfg.parallel, tcfg.device, tcfg.replicate_degree)  # before touching checkpoints
    try:
        return _train(cfg, run, fingerprint, lineage, fresh, par, stage_start)
    finally:
        teardown(par)


def _train(cfg: RunConfig, run: RunDir, fingerprint: str, lineage: str, fresh: bool,
           par: Parallel, stage_start: float) -> dict:
    tcfg, mcfg = cfg.train, cfg.resolved_model()
    device = par.device
    dtype = resolve_dtype(device, tcfg)
    tokens_record = run.stage_record("tokenize")
    tokens_fp = tokens_record.get("output", tokens_record["fingerprint"]) if tokens_record else None
    meta = load_meta(run)
    if meta["vocab_size"] != mcfg.vocab_size:
        raise ArtifactError(
            f"token shards in {run.tokens} were encoded for vocab_size={meta['vocab_size']} "
            f"but the model has vocab_size={mcfg.vocab_size}: rerun `fmforge tokenize`"
        )
    accum = tcfg.grad_accum_for(mcfg.seq_len, par.world_size)
    train_tokens, val_tokens = open_tokens(run, "train"), open_tokens(run, "val")
    loader = EpochWindowLoader(train_tokens, mcfg.seq_len, tcfg.micro_batch_size, accum, cfg.seed,
                               rank=par.rank, world_size=par.world_size)
    token_bytes = token_byte_lengths(load_tokenizer(run), mcfg.vocab_size)
    # FSDP's mixed-precision policy computes in bf16 itself; autocast is for the rest.
    use_autocast = not (par.sharded and dtype == "bfloat16")
    amp = lambda: autocast(device, tcfg) if use_autocast else torch.autocast(device.type, enabled=False)  # noqa: E731
    # float16 needs CUDA in training (resolve_dtype refuses it elsewhere); the scaler
    # follows the device so that its logic is the same wherever it runs.
    scaler = torch.amp.GradScaler(device.type) if dtype == "float16" else None

    budget = StepBudget(run, tcfg, lineage, par, fresh=fresh)
    session, state = _resume(run, lambda: _Session(cfg, par, dtype), par, lineage,
                             budget.known_steps(), cfg, fresh)
    model, raw, optimizer, step_fn = session.model, session.raw, session.optimizer, session.step_fn
    start_step = int(state.get("step", 0))
    if state.get("max_steps") and tcfg.max_minutes is not None:
        budget.adopt(int(state["max_steps"]))
    elapsed_before = float(state.get("elapsed_s", 0.0))
    skipped_total = int(state.get("skipped_steps", 0))

    metrics = MetricsLog(run.metrics, enabled=par.is_main)
    if start_step == 0:
        metrics.reset()
    else:
        metrics.truncate_after(start_step)
    last = (metrics.last() or {}) if start_step else {}
    board = ScalarBoard(run.root / "tb", purge_step=start_step, enabled=par.is_main and tcfg.tensorboard)

    params = count_parameters(mcfg).total
    fpt = flops_per_token(mcfg)
    try:
        peak = device_peak_flops(device.type, dtype)
    except HardwareError as exc:
        log(f"MFU not logged: {exc}")
        peak = None
    tokens_per_step = tcfg.micro_batch_size * mcfg.seq_len * accum * par.world_size
    log(f"model: {params:,} parameters; {tokens_per_step:,} tokens per step "
        f"({par.world_size} × {accum} × {tcfg.micro_batch_size} × {mcfg.seq_len}); "
        f"device {device}, {dtype}" + (f", {par.mode} on {par.world_size} process(es)" if par.mode != "none" else "")
        + (f" ({par.replicas} replicas × {par.world_size // par.replicas} shards)" if par.mode == "hsdp" else "")
        + f"; {loader.n_windows:,} windows per epoch")

    def save(step: int, elapsed: float) -> None:
        max_steps = budget.max_steps
        protect = {decay_start(max_steps, tcfg)} if tcfg.schedule == "wsd" and max_steps else set()
        state = {"fingerprint": fingerprint, "lineage": lineage, "max_steps": max_steps,
                 "tokens": step * tokens_per_step, "elapsed_s": elapsed, "params": params,
                 "seed": cfg.seed, "tokens_fingerprint": tokens_fp, "skipped_steps": skipped_total,
                 # The architecture travels with the weights, so loading never depends
                 # on a config.yaml that a later command may have rewritten.
                 "model": mcfg.model_dump(mode="json")}
        try:
            if par.sharded:
                save_sharded_checkpoint(run.checkpoints, step, model, optimizer, state,
                                        tcfg.keep_checkpoints, par.is_main, par.barrier, protect)
            else:
                if par.is_main:
                    save_checkpoint(run.checkpoints, step, raw, optimizer, state,
                                    tcfg.keep_checkpoints, protect)
                par.barrier()
        except BaseException as exc:  # DCP's CheckpointException is a BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            code = storage_errno(exc) or _full_disk(run.checkpoints)
            if code is None:
                raise
            raise RunDirWriteError(
                code, f"{storage_advice(code, run.checkpoints)}. The checkpoint of step {step} was "
                f"not written (nothing half-written is left); rerun the same command once that is "
                f"fixed: training resumes from step {last_saved}"
                + ("" if last_saved else " (the start)")) from exc

    # The same windows at every validation, spread over the whole held-out split
    # (every source in proportion), not its first batches: the curve then tracks
    # the loss the eval stage measures on all of it.
    val_starts = spread_starts(len(val_tokens), mcfg.seq_len,
                               tcfg.eval_batches * tcfg.micro_batch_size, cfg.seed)

    def validate() -> dict:
        if len(val_tokens) < 2:
            return {}
        res = score_tokens(model if par.sharded else raw, val_tokens, mcfg.seq_len,
                           tcfg.micro_batch_size, device, starts=val_starts,
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
    consecutive_skips, last_saved = 0, start_step
    step = start_step
    try:
        with progress_bar("training", total=budget.max_steps) as bar:
            bar.update(completed=start_step)
            while budget.max_steps is None or step < budget.max_steps:
                lr = lr_at(step, budget.max_steps or budget.placeholder_steps, tcfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = 0.0
                for micro in range(accum):
                    x, y = loader.batch(step, micro)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    sync = par.mode != "ddp" or micro == accum - 1
                    with (model.no_sync() if not sync else _nullcontext()), amp():
                        loss = step_fn(x, y)
                    scaled = loss / accum
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    loss_sum += float(loss.detach())
                if scaler:
                    scaler.unscale_(optimizer)
                max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                # A gradient can go bad on one process alone (after DDP's all-reduce: a
                # flipped bit, a fault in one GPU); every process must then skip the
                # step together, or the replicas hold different weights from then on.
                if par.any(not math.isfinite(grad_norm)):
                    grad_norm = math.nan
                loss_value = par.mean(loss_sum / accum)
                finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
                scale = scaler.get_scale() if scaler else None  # the scale of this step's backward
                if finite:
                    # Checked before the step: a non-finite gradient never reaches the weights.
                    if scaler:
                        scaler.step(optimizer)
                    else:
                        optimizer.step()
                    consecutive_skips = 0
                else:
                    skipped_total += 1
                    # Under float16 an overflowing step is the scaler calibrating: it skips
                    # the step and halves its scale. That counts toward divergence only
                    # when no scale can cure it: the loss itself is not finite, or the
                    # gradient overflows even at a scale of 1 or less.
                    if scale is None or not math.isfinite(loss_value) or scale <= 1.0:
                        consecutive_skips += 1
                if scaler:
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)

                done = step + 1
                step = done
                interval_tokens += tokens_per_step
                bar.advance()
                if budget.probing(done):
                    budget.record_step(done, time.perf_counter())
                    if budget.ready(done):
                        decided = budget.decide(done, time.perf_counter() - stage_start, accum)
                        bar.set_total(decided)
                if not finite:
                    bad = "loss" if not math.isfinite(loss_value) else "gradient norm"
                    record = {"step": done, "skipped": True, "reason": f"non-finite {bad}",
                              "loss": loss_value if math.isfinite(loss_value) else None,
                              "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                              "skipped_steps": skipped_total, "lr": lr}
                    if scale is not None:
                        record["loss_scale"] = scale
                    metrics.append(record)
                    board.add(done, {"skipped_steps": skipped_total})
                    log(f"[yellow]step {done}: non-finite {bad}, step skipped (weights and "
                        f"optimizer unchanged; {consecutive_skips} in a row"
                        + (f"; float16 loss scale {scale:g}, halved" if scale is not None else "")
                        + ")[/yellow]")
                    if consecutive_skips >= tcfg.max_skipped_steps:
                        raise TrainingDiverged(
                            f"{consecutive_skips} consecutive steps had a non-finite loss or "
                            f"gradient (up to step {done}): lower train.lr, raise "
                            "train.warmup_steps or check the data; the last good checkpoint "
                            f"(step {last_saved}) is intact and a rerun resumes from it"
                        )
                is_end = budget.max_steps is not None and done == budget.max_steps
                is_eval = done % tcfg.eval_every == 0 or is_end
                if finite and (done % tcfg.log_every == 0 or is_eval or done == start_step + 1):
                    now = time.perf_counter()
                    tps = interval_tokens / max(now - interval_start, 1e-9)
                    interval_start, interval_tokens = now, 0
                    record = {"step": done, "loss": round(loss_value, 5), "lr": lr,
                              "tokens_per_s": round(tps, 1), "grad_norm": round(grad_norm, 4),
                              "tokens": done * tokens_per_step,
                              "elapsed_s": round(elapsed_before + now - session_start, 2),
                              "flops_per_token": fpt, "epoch": round(loader.epoch_at(done), 4)}
                    if skipped_total:
                        record["skipped_steps"] = skipped_total
                    if peak:
                        record["mfu"] = round(tps * fpt / (peak * par.world_size), 4)
                    if is_eval:
                        record.update(validate())
                        interval_start = time.perf_counter()  # validation is not training time
                        total = budget.max_steps or "?"
                        log(f"step {done}/{total}: loss {loss_value:.4f}"
                            + (f", val loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                            + f", {tps:,.0f} tokens/s"
                            + (f", MFU {record['mfu']:.2f}" if "mfu" in record else ""))
                    metrics.append(record)
                    board.add(done, record)
                    last = record
                    bar.update(info=f"loss {loss_value:.3f} · {tps:,.0f} tok/s"
                               + (f" · val {record['val_loss']:.3f}" if "val_loss" in record else ""))
                wsd_start = (tcfg.schedule == "wsd" and budget.max_steps is not None
                             and done == decay_start(budget.max_steps, tcfg))
                stopping = par.any(stop.requested) if par.world_size > 1 else stop.requested
                if done % tcfg.checkpoint_every == 0 or is_end or stopping or wsd_start:
                    save(done, elapsed_before + time.perf_counter() - session_start)
                    last_saved = done
                if stopping and not is_end:
                    raise KeyboardInterrupt(f"stopped by {stop.signal_name or 'a signal'} at step {done}")
    finally:
        _restore_handlers(previous_handlers)
        board.close()

    wall = time.perf_counter() - session_start
    trained = budget.max_steps - start_step
    return {
        "steps": budget.max_steps,
        "params": params,
        "tokens": budget.max_steps * tokens_per_step,
        "final_loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "wall_s": round(elapsed_before + wall, 2),
        "tokens_per_s": round(trained * tokens_per_step / wall, 1) if trained else None,
        "flops_per_token": fpt,
        "device": str(device),
        "processes": par.world_size,
        "skipped_steps": skipped_total,
        "epochs": round(loader.epoch_at(budget.max_steps), 3),
        "last_checkpoint": last_saved,
    }


def _full_disk(where: Path) -> int | None:
    """ENOSPC when the disk under ``where`` has (almost) no room left: torch.save
    reports a full disk only as "unexpected pos", without its errno."""
    import errno

    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
    except OSError:
        return None
    return errno.ENOSPC if free < (1 << 20) else None


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
