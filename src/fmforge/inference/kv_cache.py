"""The KV cache: the keys and values of the positions decoded so far, and where
one forward over new positions reads and writes them.

The model knows nothing of it: a cached forward (``decode.forward_cached``) runs
the model's blocks with ``CacheStep.attention(layer)`` in place of their causal
attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fmforge.config import ModelConfig
from fmforge.model.transformer import Attend


class KVCache:
    """Keys and values of the positions decoded so far, preallocated per layer as
    (rows, kv_heads, length, head_dim): one row per sequence, and only the
    ``n_kv_heads`` heads grouped-query attention keeps (not repeated per query head).
    Which row holds which sequence, and how long it is, the caller tracks."""

    def __init__(self, cfg: ModelConfig, rows: int, length: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        if length > cfg.seq_len:
            raise ValueError(f"a cache of {length} positions exceeds model.seq_len={cfg.seq_len}")
        shape = (rows, cfg.kv_heads, length, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]

    @property
    def rows(self) -> int:
        return self.k[0].shape[0]

    @property
    def length(self) -> int:
        return self.k[0].shape[2]

    def grow(self, rows: int, length: int) -> None:
        """Make room for at least ``rows`` sequences of ``length`` positions, keeping
        what is stored."""
        if rows <= self.rows and length <= self.length:
            return
        rows, length = max(rows, self.rows), max(length, self.length)
        for cache in (self.k, self.v):
            for i, old in enumerate(cache):
                new = old.new_zeros((rows, old.shape[1], length, old.shape[3]))
                new[: old.shape[0], :, : old.shape[2]] = old
                cache[i] = new


class CacheStep:
    """Where one cached forward of ``t`` new positions reads and writes ``cache``:
    sequence i of the batch lives in cache row ``rows[i]`` and its new tokens take
    positions ``start[i] .. start[i] + t - 1``. Each sequence has its own positions
    (no padding): a query at position p sees the keys at positions <= p of its row,
    so whatever a row holds past its length is never read."""

    def __init__(self, cache: KVCache, rows: list[int], start: list[int], t: int,
                 device: torch.device):
        b = len(rows)
        self.cache = cache
        self.pos = (torch.tensor(start, device=device)[:, None]
                    + torch.arange(t, device=device))  # (b, t)
        self.length = max(start) + t  # keys to read: positions [0, length)
        if self.length > cache.length:
            raise ValueError(f"positions up to {self.length} exceed the cache's {cache.length}")
        contiguous = rows == list(range(rows[0], rows[0] + b))
        # A run of rows is read as a view; scattered rows (after others finished) by a gather.
        self.rows = slice(rows[0], rows[0] + b) if contiguous else torch.tensor(rows, device=device)
        self.row_index = torch.tensor(rows, device=device)[:, None]  # (b, 1) for the write
        self.causal, self.mask = False, None
        if not any(start):
            self.causal = t > 1  # a prefill: the usual causal mask over [0, t)
        elif b > 1:  # sequences of different lengths together
            keys = torch.arange(self.length, device=device)
            self.mask = (keys <= self.pos[:, :, None])[:, None]  # (b, 1, t, length)
        elif t > 1:  # one sequence, several new positions after a cached prefix
            keys = torch.arange(self.length, device=device)
            self.mask = keys <= self.pos[0, :, None]  # (t, length)
        # else one sequence, one new position: it sees every key stored so far.

    def attention(self, layer: int) -> Attend:
        """Layer ``layer``'s attention for this step: store the new k, v
        (batch, kv_heads, t, head_dim) in the cache, then attend to all keys and
        values of these rows so far."""
        k_cache, v_cache = self.cache.k[layer], self.cache.v[layer]

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # Indices on dims 0 and 2 around a slice: the indexed view is
            # (b, t, kv, hd), k's layout before the model's transpose.
            k_cache[self.row_index, :, self.pos] = k.transpose(1, 2)
            v_cache[self.row_index, :, self.pos] = v.transpose(1, 2)
            keys = k_cache[self.rows, :, : self.length]
            values = v_cache[self.rows, :, : self.length]
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask,
                                                  is_causal=self.causal,
                                                  enable_gqa=k.shape[1] != q.shape[1])

        return attend
