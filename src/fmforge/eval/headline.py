"""What `fmforge run` ends with: the held-out figure against gzip, in one line, and
a sample of the trained model's text (the config's ``eval.sample_prompt``)."""

from __future__ import annotations

import json

from fmforge.config import RunConfig
from fmforge.rundir import RunDir


def headline(run_dir: RunDir) -> str | None:
    """"held-out bits per byte: model X vs gzip -9 Y (...)", or None before the eval stage."""
    if not run_dir.eval_json.exists():
        return None
    ev = json.loads(run_dir.eval_json.read_text(encoding="utf-8"))
    bpb, gz = ev.get("bits_per_byte"), ev.get("gzip_bits_per_byte")
    if bpb is None or gz is None:
        return None
    better = "better" if bpb < gz else "worse"
    return (f"held-out bits per byte: model {bpb:.3f} vs gzip -9 {gz:.3f} "
            f"({better} than gzip by {abs(gz - bpb) / gz:.0%}); perplexity {ev['perplexity']:.2f}")


def sample(cfg: RunConfig, run_dir: RunDir) -> tuple[str, str] | None:
    """(how it was sampled, the prompt and its continuation), or None when the config
    asks for no sample."""
    ev = cfg.eval
    if not (ev.sample_prompt and ev.sample_max_new_tokens):
        return None
    from fmforge.inference.generate import generate_text
    from fmforge.inference.loading import load_trained

    trained = load_trained(run_dir, device=cfg.train.device)
    text = generate_text(trained, ev.sample_prompt, ev.sample_max_new_tokens,
                         temperature=ev.sample_temperature, top_k=ev.sample_top_k, seed=cfg.seed)
    how = "greedy" if ev.sample_temperature == 0 else (
        f"temperature {ev.sample_temperature}, top-k {ev.sample_top_k}, seed {cfg.seed}")
    return how, ev.sample_prompt + text
