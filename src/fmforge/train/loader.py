"""Batches of token windows drawn from the memory-mapped token file.

The windows of a step are a pure function of (seed, step, micro-step, rank), so
a resumed run sees exactly the batches an uninterrupted run would have, with no
loader state to save, and data-parallel ranks draw disjoint streams.
"""

from __future__ import annotations

import numpy as np
import torch


class TokenWindowLoader:
    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 rank: int = 0):
        if len(tokens) < seq_len + 2:
            raise ValueError(
                f"the training split has {len(tokens)} tokens, fewer than one window of "
                f"model.seq_len+1={seq_len + 1}: add data or lower model.seq_len"
            )
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.seed, self.rank = seed, rank

    def batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, micro_step, self.rank])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        windows = np.stack([self.tokens[s: s + self.seq_len + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]
