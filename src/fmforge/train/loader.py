"""Batches of token windows: every token once per epoch, in a seeded order.

The training split is cut into non-overlapping windows of ``seq_len + 1`` tokens
(inputs and shifted targets; consecutive windows share one boundary token, so
every token after the first is a target exactly once per epoch). Each epoch
visits all windows in a fresh permutation seeded by (seed, epoch).

Samples are numbered globally: sample ``g`` of the run is position ``g mod W``
of epoch ``g div W``'s permutation (W windows), and step ``s`` holds samples
``s·G … s·G + G − 1`` for a global batch of G windows. A process's share of a
step is a contiguous slice of it (rank-major, then micro-step). So a batch is a
pure function of (seed, step): a resumed run needs no loader state, and a run on
N processes trains on exactly the batches of a run on one process with the same
global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from fmforge.config import ConfigError


class EpochWindowLoader:
    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch: int, grad_accum: int,
                 seed: int, rank: int = 0, world_size: int = 1):
        n_windows = (len(tokens) - 1) // seq_len
        if n_windows < 1:
            raise ConfigError(
                f"the training split has {len(tokens)} tokens, fewer than one window of "
                f"model.seq_len+1={seq_len + 1}: add data or lower model.seq_len"
            )
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.rank, self.world_size = rank, world_size
        self.n_windows = n_windows
        self.global_batch = micro_batch * grad_accum * world_size
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        """The window indices of ``epoch`` in the order they are drawn."""
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._epoch = epoch
        return self._order

    def sample_windows(self, first: int, count: int) -> np.ndarray:
        """Window indices of global samples ``first … first + count − 1``."""
        out = np.empty(count, dtype=np.int64)
        for i, g in enumerate(range(first, first + count)):
            epoch, pos = divmod(g, self.n_windows)
            out[i] = self.order(epoch)[pos]
        return out

    def epoch_at(self, step: int) -> float:
        """Epochs completed by the start of ``step`` (fractional)."""
        return step * self.global_batch / self.n_windows

    def batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's ``micro_step``-th micro-batch of ``step``: (inputs, targets)."""
        first = step * self.global_batch + (self.rank * self.grad_accum + micro_step) * self.micro_batch
        starts = self.sample_windows(first, self.micro_batch) * self.seq_len
        windows = np.stack([self.tokens[s: s + self.seq_len + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]
