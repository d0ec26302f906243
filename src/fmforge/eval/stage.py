"""The eval stage: held-out metrics of the latest checkpoint into ``eval.json``."""

from __future__ import annotations

import json
import time

from fmforge.config import RunConfig
from fmforge.eval.heldout import gzip_bits_per_byte
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_write_json
from fmforge.inference.loading import load_trained
from fmforge.model.scoring import score_tokens
from fmforge.tokenizer.load import decode_bytes, token_byte_lengths, token_byte_table
from fmforge.tokenizer.tokens import open_tokens


def run_eval_stage(cfg: RunConfig, run: RunDir) -> dict:
    trained = load_trained(run, device=cfg.train.device)
    model, tok, device, step = trained.model, trained.tokenizer, trained.device, trained.step
    vocab = trained.model.cfg.vocab_size
    val = open_tokens(run, "val")
    t0 = time.perf_counter()
    res = score_tokens(model, val, model.cfg.seq_len, cfg.eval.batch_size, device,
                          max_tokens=cfg.eval.max_tokens,
                          token_bytes=token_byte_lengths(tok, vocab))  # fp32: exact figures
    # The same bytes the model was scored on: targets are tokens[1 : tokens+1].
    heldout = decode_bytes(token_byte_table(tok, vocab), val[1: res.tokens + 1])
    gz = gzip_bits_per_byte(heldout)
    result = {
        "loss": res.loss,
        "perplexity": res.perplexity,
        "bits_per_byte": res.bits_per_byte,
        "gzip_bits_per_byte": gz,
        "step": step,
        "tokens": res.tokens,
        "bytes": res.bytes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    history = []
    if run.eval_json.exists():
        previous = json.loads(run.eval_json.read_text(encoding="utf-8"))
        history = previous.get("history", [])
    history.append({k: result[k] for k in ("step", "loss", "perplexity", "bits_per_byte",
                                             "gzip_bits_per_byte")})
    atomic_write_json(run.eval_json, {**result, "history": history})
    verdict = "beats" if res.bits_per_byte is not None and res.bits_per_byte < gz else "does not beat"
    bpb = "unknown bits/byte" if res.bits_per_byte is None else f"{res.bits_per_byte:.4f} bits/byte"
    log(f"held-out: loss {res.loss:.4f}, perplexity {res.perplexity:.2f}, "
        f"{bpb}; gzip -9: {gz:.4f} bits/byte — the model {verdict} gzip")
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
