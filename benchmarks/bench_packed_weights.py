"""Decode steps of one sequence with MKL-packed weights against the plain products.

Why: ``fmforge.inference.packed_weights`` calls a private torch op
(``torch.ops.mkl._mkl_linear``) for the matrix-vector products of a decode step
of one sequence; this measures what that buys, so the private op earns its
place or goes. Same model, same cache, same steps, in one process: rounds
alternate plain, packed, packed, plain, ... and each figure is the median over
rounds of milliseconds per decode step (the whole step: embedding, blocks,
head), on the demo's shape with random weights (``bench_generate.py``'s model).

    python benchmarks/bench_packed_weights.py               # about 20 s
    python benchmarks/bench_packed_weights.py --size 100m --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fmforge.config import ModelConfig
from fmforge.inference.decode import forward_cached
from fmforge.inference.kv_cache import KVCache
from fmforge.inference.packed_weights import PackedWeights
from fmforge.model.transformer import Transformer

SIZES = {"demo": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, seq_len=256,
                      vocab_size=8192, tie_embeddings=True),
         "100m": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, seq_len=512,
                      vocab_size=32768, tie_embeddings=True)}


def time_steps(model: Transformer, prompt: torch.Tensor, steps: int,
               packed: PackedWeights | None) -> float:
    """Milliseconds per decode step after a prefill of ``prompt``."""
    cache = KVCache(model.cfg, rows=1, length=prompt.shape[1] + steps)
    logits = forward_cached(model, prompt, cache, [0], [0])
    token, n = logits.argmax(-1, keepdim=True), prompt.shape[1]
    start = time.perf_counter()
    for p in range(n, n + steps):
        token = forward_cached(model, token, cache, [0], [p], packed=packed).argmax(-1, keepdim=True)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=100, help="decode steps per round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SIZES[args.size])).eval()
    reason = PackedWeights.unavailable(model)
    if reason is not None:
        sys.exit(f"nothing to compare: {reason}")
    packed = PackedWeights(model)
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 32))
    weight_mb = sum(m.weight.numel() for m in model.modules()
                    if isinstance(m, torch.nn.Linear)) * 4 / 1e6
    times: dict[str, list[float]] = {"plain": [], "packed": []}
    with torch.inference_mode():
        time_steps(model, prompt, 10, packed)  # warm-up
        for r in range(args.rounds):
            order = ("plain", "packed") if r % 2 == 0 else ("packed", "plain")
            for name in order:
                times[name].append(time_steps(model, prompt, args.steps,
                                              packed if name == "packed" else None))
    plain, fast = statistics.median(times["plain"]), statistics.median(times["packed"])
    paired = statistics.median(p / q for p, q in zip(times["plain"], times["packed"]))
    print(f"{args.size}: {weight_mb:.1f} MB of linear weights (float32), {args.threads} threads, "
          f"torch {torch.__version__}")
    print(f"ms per decode step at batch 1: plain {plain:.2f} ({min(times['plain']):.2f}-"
          f"{max(times['plain']):.2f}), packed {fast:.2f} ({min(times['packed']):.2f}-"
          f"{max(times['packed']):.2f}); plain/packed {plain / fast:.2f}x "
          f"(paired median {paired:.2f}x)")


if __name__ == "__main__":
    main()
