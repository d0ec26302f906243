"""Decode steps of one sequence with MKL-packed weights against the plain products.

Why: ``fmforge.inference.packed_weights`` calls a private torch op
(``torch.ops.mkl._mkl_linear``) for the matrix-vector products of a decode step
of one sequence; this measures what that buys, so the private op earns its
place or goes. Same model, same cache, same steps, in one process: rounds
alternate plain, packed, packed, plain, ... and each figure is the median over
rounds of milliseconds per decode step (the whole step: embedding, blocks,
head), on the demo's shape with random weights (``bench_generate.py``'s model).
Measured with the shared harness (``harness.py``: ``interleaved``, its ``before``
hook doing each round's untimed prefill); the machine and its load are printed.

    python benchmarks/bench_packed_weights.py               # about 20 s
    python benchmarks/bench_packed_weights.py --size 100m --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_generate import SIZES  # noqa: E402 - the same model shapes
from harness import interleaved, machine_line, paired_ratio  # noqa: E402

from fmforge.config import ModelConfig  # noqa: E402
from fmforge.inference.decode import forward_cached  # noqa: E402
from fmforge.inference.kv_cache import KVCache  # noqa: E402
from fmforge.inference.packed_weights import PackedWeights  # noqa: E402
from fmforge.model.transformer import Transformer  # noqa: E402


class Decode:
    """Decode steps of one sequence after a prefill of ``prompt``: ``prefill()`` (untimed)
    makes a fresh cache and the first token, ``steps()`` runs the decode steps."""

    def __init__(self, model: Transformer, prompt: torch.Tensor, steps: int):
        self.model, self.prompt, self.n = model, prompt, steps

    def prefill(self) -> None:
        self.cache = KVCache(self.model.cfg, rows=1, length=self.prompt.shape[1] + self.n)
        logits = forward_cached(self.model, self.prompt, self.cache, [0], [0])
        self.token = logits.argmax(-1, keepdim=True)

    def steps(self, packed: PackedWeights | None) -> None:
        start = self.prompt.shape[1]
        for p in range(start, start + self.n):
            self.token = forward_cached(self.model, self.token, self.cache, [0], [p],
                                        packed=packed).argmax(-1, keepdim=True)


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
    with torch.inference_mode():
        warm = Decode(model, prompt, 10)
        warm.prefill()
        warm.steps(packed)
        decode = Decode(model, prompt, args.steps)
        samples = interleaved({"plain": lambda: decode.steps(None), "packed": lambda: decode.steps(packed)},
                              args.rounds, before=lambda name: decode.prefill())
    times = {name: [s.wall_s / args.steps * 1e3 for s in ss] for name, ss in samples.items()}
    plain, fast = statistics.median(times["plain"]), statistics.median(times["packed"])
    paired = paired_ratio(times["plain"], times["packed"])
    print(f"{args.size}: {weight_mb:.1f} MB of linear weights (float32), {args.threads} threads, "
          f"torch {torch.__version__}; {machine_line()}")
    print(f"ms per decode step at batch 1: plain {plain:.2f} ({min(times['plain']):.2f}-"
          f"{max(times['plain']):.2f}), packed {fast:.2f} ({min(times['packed']):.2f}-"
          f"{max(times['packed']):.2f}); plain/packed {plain / fast:.2f}x "
          f"(paired median {paired:.2f}x)")


if __name__ == "__main__":
    main()
