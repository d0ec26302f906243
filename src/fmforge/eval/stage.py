"""The eval stage: held-out metrics of a checkpoint (the latest, or ``step``),
overall and per source, appended to ``eval.json`` by step."""

from __future__ import annotations

import time

from fmforge.config import RunConfig
from fmforge.eval.heldout import HeldoutSettings, evaluate_heldout
from fmforge.eval.results import record_heldout
from fmforge.inference.loading import load_trained
from fmforge.progress import log
from fmforge.rundir import RunDir


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def run_eval_stage(cfg: RunConfig, run: RunDir, step: int | None = None) -> dict:
    trained = load_trained(run, device=cfg.train.device, step=step)
    model = trained.model
    settings = HeldoutSettings(seq_len=model.cfg.seq_len, batch_size=cfg.eval.batch_size,
                               stride=cfg.eval.stride, max_tokens=cfg.eval.max_tokens)
    t0 = time.perf_counter()
    found = evaluate_heldout(model, trained.tokenizer, trained.eos_id, run, settings, trained.device)
    seconds = round(time.perf_counter() - t0, 2)
    entry = {**found, "stride": settings.stride or settings.seq_len, "window": settings.seq_len,
             "seconds": seconds, "evaluated_at": time.time()}
    record_heldout(run, trained.step, entry)
    o = found["overall"]
    verdict = "beats" if o["bits_per_byte"] is not None and o["bits_per_byte"] < o["gzip_bits_per_byte"] \
        else "does not beat"
    log(f"held-out (step {trained.step}): loss {o['loss']:.4f}, perplexity {o['perplexity']:.2f}, "
        f"{_fmt(o['bits_per_byte'])} bits/byte; gzip -9: {_fmt(o['gzip_bits_per_byte'])}, "
        f"xz -9e: {_fmt(o['xz_bits_per_byte'])} bits/byte — the model {verdict} gzip")
    for name, r in found["per_source"].items():
        log(f"  {name}: {_fmt(r['bits_per_byte'])} bits/byte (gzip {_fmt(r['gzip_bits_per_byte'])}, "
            f"xz {_fmt(r['xz_bits_per_byte'])}) over {r['bytes']:,} bytes")
    summary = {k: o[k] for k in ("loss", "perplexity", "bits_per_byte", "gzip_bits_per_byte",
                                 "xz_bits_per_byte")}
    summary.update({"step": trained.step, "tokens": o["tokens"], "sources": len(found["per_source"]),
                    "seconds": seconds})
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
