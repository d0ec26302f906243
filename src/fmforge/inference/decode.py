"""The forward over new positions of sequences whose earlier positions sit in a
KV cache: every step of the generation engine is one ``forward_cached`` call.

Several new positions per sequence (a prompt's prefill, a chunk after a cached
prefix) run the model's own blocks, each attending through the cache
(``CacheStep.attention``). One new position per sequence (a decode step: nearly
every call) takes a lean copy of the blocks' math on (batch, features) rows,
because per-token overhead is most of what a small model's decode step costs on
a CPU: no per-step index tensors for a single sequence (its rotary row, cache
slot and keys are plain slices), no attention mask when every sequence is at the
same position, and the weights' MKL-packed copies with the residual added inside
the product (``PackedWeights``). Being a copy, it is checked against the model's
own forward by tests/inference/test_decode.py (GQA, tied and untied heads,
batch 1 and 8, packed or not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fmforge.inference.kv_cache import CacheStep, KVCache
from fmforge.inference.packed_weights import PackedWeights
from fmforge.model.transformer import Transformer, apply_rope


@torch.no_grad()
def forward_cached(model: Transformer, tokens: torch.Tensor, cache: KVCache, rows: list[int],
                   start: list[int], last: list[int] | None = None,
                   packed: PackedWeights | None = None) -> torch.Tensor:
    """``tokens`` (batch, t) are positions ``start[i] ..`` of the sequence in cache
    row ``rows[i]``; their keys/values are stored there and they attend to all
    that row's positions before them. Returns the logits (batch, vocab) of
    position ``last[i]`` of each row of ``tokens`` (default: the last).

    Sequences of different lengths are prefilled together right-padded, with
    ``start`` 0 and ``last`` each one's final real token: a pad's key lands past
    its row's length, where a later token's key overwrites it before any query
    may see it. ``packed``: the weights' packed copies, used by decode steps of
    one sequence."""
    b, t = tokens.shape
    if t == 1:
        return _decode_step(model, tokens, cache, rows, start, packed)
    step = CacheStep(cache, rows, start, t, tokens.device)
    cos, sin = model.rope_cos[step.pos][:, :, None], model.rope_sin[step.pos][:, :, None]
    x = model.embed(tokens)
    for layer, block in enumerate(model.blocks):
        x = block(x, cos, sin, step.attention(layer))
    if last is None:
        x = x[:, -1]
    else:
        x = x[torch.arange(b, device=x.device), torch.tensor(last, device=x.device)]
    return model.lm_head(model.norm(x))  # the head for the positions asked for only


def _linear(x: torch.Tensor, module: nn.Module, packed: PackedWeights | None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + module(x)`` (or ``module(x)``) in a decode step, through the
    packed weights where given: one row's residual is added inside the product."""
    if packed is not None and x.shape[0] == 1:
        return packed.linear(x, module, None if residual is None else residual[0])
    return module(x) if residual is None else residual + module(x)


def _decode_step(model: Transformer, tokens: torch.Tensor, cache: KVCache, rows: list[int],
                 start: list[int], packed: PackedWeights | None) -> torch.Tensor:
    """``forward_cached`` of one new position per sequence: the operations of the
    model's blocks (transformer.py's Attention, SwiGLU and Block) on
    (batch, features) rows."""
    b = len(rows)
    cfg = model.cfg
    h, kv, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
    length = max(start) + 1  # keys to read: positions [0, length)
    if length > cache.length:
        raise ValueError(f"positions up to {length} exceed the cache's {cache.length}")
    mask = None
    if b == 1:
        row, p = rows[0], start[0]
        cos, sin = model.rope_cos[p], model.rope_sin[p]  # (head_dim,)
        write = (row, slice(None), p)  # (kv_heads, head_dim) of the slot
        read = (slice(row, row + 1), slice(None), slice(0, length))
    else:
        pos = torch.tensor(start, device=tokens.device)
        cos, sin = model.rope_cos[pos][:, None], model.rope_sin[pos][:, None]  # (b, 1, hd)
        # Indices on dims 0 and 2 around a slice: the indexed view is (b, kv, hd).
        write = (torch.tensor(rows, device=tokens.device), slice(None), pos)
        contiguous = rows == list(range(rows[0], rows[0] + b))
        read = (slice(rows[0], rows[0] + b) if contiguous else write[0],
                slice(None), slice(0, length))
        if min(start) != length - 1:  # sequences at different positions
            keys = torch.arange(length, device=tokens.device)
            mask = (keys <= pos[:, None])[:, None, None]  # (b, 1, 1, length)
    x = model.embed(tokens[:, 0])  # (b, d_model)
    for block, k_cache, v_cache in zip(model.blocks, cache.k, cache.v):
        attn, mlp = block.attn, block.mlp
        qkv = _linear(block.attn_norm(x), attn.qkv_proj, packed).view(b, h + 2 * kv, hd)
        qk = apply_rope(qkv[:, : h + kv], cos, sin)  # q and k heads, rotated together
        k_cache[write] = qk[:, h:]
        v_cache[write] = qkv[:, h + kv:]
        y = F.scaled_dot_product_attention(qk[:, :h, None], k_cache[read], v_cache[read],
                                           attn_mask=mask, enable_gqa=kv != h)  # (b, h, 1, hd)
        x = _linear(y.reshape(b, h * hd), attn.o_proj, packed, residual=x)
        gate, up = _linear(block.mlp_norm(x), mlp.gate_up_proj, packed).chunk(2, dim=-1)
        x = _linear(F.silu(gate) * up, mlp.down_proj, packed, residual=x)
    return _linear(model.norm(x), model.lm_head, packed)
