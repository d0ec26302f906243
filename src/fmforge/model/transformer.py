"""A Llama-style decoder-only transformer in one readable file.

RMSNorm before each block, rotary position embeddings, grouped-query attention
(``n_kv_heads`` key/value heads shared by ``n_heads`` query heads), a SwiGLU MLP,
no biases, and optionally the output head tied to the token embedding. The model
is single-device; data/tensor parallelism is applied from outside (train/).

``forward`` is the training (and scoring) path: whole sequences, causal attention.
``forward_cached`` is the decoding path the inference engine uses: it runs a few
new positions of some sequences, stores their keys/values in a ``KVCache`` and
attends to those stored before, so each generated token costs one position, not
a recomputation of the whole context. A step of one new position per sequence
(a decode step) takes a lean path (``_decode_one``), and ``PackedWeights``
gives it faster matrix-vector products on CPU.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from fmforge.config import ModelConfig
from fmforge.model.counting import LOSS_CHUNK
from fmforge.model.head_loss import HeadCrossEntropy


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


class PackedWeights:
    """MKL-packed copies of a model's matmul weights, for products of one row (a
    decode step of one sequence) on CPU in float32.

    Why: a decode step of one sequence is a chain of matrix-vector products over
    every weight, and the plain ``F.linear`` path of MKL does them at a fraction
    of memory bandwidth on some CPUs (measured 5-7 GB/s against 20+ GB/s with the
    packed weights on an AMD EPYC, where a sum over the same bytes runs at 15-30).
    ``torch.ops.mkl._mkl_linear`` (what inductor's freezing uses for float32
    linears) runs the packed product for inputs of one row and is plain
    ``F.linear`` for any other, so batched steps and prefills are unchanged. The
    cost: a second (packed) copy of the linear weights in memory. A weight changed
    in place after packing (its ``_version`` moves) is packed again on next use."""

    def __init__(self, model: nn.Module):
        self._packed: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.bias is None:
                self._pack(module.weight)

    @staticmethod
    def supported(model: nn.Module) -> bool:
        """MKL in this torch build, and the model's weights float32 on CPU."""
        weight = next(model.parameters())
        return (torch.backends.mkl.is_available() and weight.device.type == "cpu"
                and weight.dtype == torch.float32 and hasattr(torch.ops.mkl, "_mkl_linear"))

    def _pack(self, weight: torch.Tensor) -> torch.Tensor:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), 1)
        self._packed[id(weight)] = (weight, weight._version, packed)
        return packed

    def linear(self, x: torch.Tensor, module: nn.Module, add: torch.Tensor | None = None) -> torch.Tensor:
        """``module(x)`` (+ ``add``, a (d_out,) vector, when given) for x of one row."""
        entry = self._packed.get(id(getattr(module, "weight", None)))
        if entry is None or type(module) is not nn.Linear or x.numel() != x.shape[-1]:
            return module(x) if add is None else module(x) + add
        weight, version, packed = entry
        if weight is not module.weight or weight._version != version:
            packed = self._pack(module.weight)
        return torch.ops.mkl._mkl_linear(x, packed, module.weight, add, 1)


def _linear(x: torch.Tensor, module: nn.Module, packed: PackedWeights | None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + module(x)`` (or ``module(x)``) in a decode step, through the
    packed weights where given: one row's residual is added inside the product."""
    if packed is not None and x.shape[0] == 1:
        return packed.linear(x, module, None if residual is None else residual[0])
    return module(x) if residual is None else residual + module(x)


class CacheStep:
    """Where one ``forward_cached`` call reads and writes the cache: sequence i of
    the batch lives in cache row ``rows[i]`` and its new tokens take positions
    ``start[i] .. start[i] + t - 1``. Each sequence has its own positions (no
    padding): a query at position p sees the keys at positions <= p of its row,
    so whatever a row holds past its length is never read."""

    def __init__(self, rows: list[int], start: list[int], t: int, device: torch.device):
        b = len(rows)
        self.pos = (torch.tensor(start, device=device)[:, None]
                    + torch.arange(t, device=device))  # (b, t)
        self.length = max(start) + t  # keys to read: positions [0, length)
        contiguous = rows == list(range(rows[0], rows[0] + b))
        # A run of rows is read as a view; scattered rows (after others finished) by a gather.
        self.rows = slice(rows[0], rows[0] + b) if contiguous else torch.tensor(rows, device=device)
        self.row_index = torch.tensor(rows, device=device)[:, None]  # (b, 1) for the write
        self.causal, self.mask = False, None
        if not any(start):
            self.causal = t > 1  # a prefill: the usual causal mask over [0, t)
        elif b > 1:  # decoding sequences of different lengths together
            keys = torch.arange(self.length, device=device)
            self.mask = (keys <= self.pos[:, :, None])[:, None]  # (b, 1, t, length)
        elif t > 1:  # one sequence, several new positions after a cached prefix
            keys = torch.arange(self.length, device=device)
            self.mask = keys <= self.pos[0, :, None]  # (t, length)
        # else one sequence, one new position: it sees every key stored so far.

    def update(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (batch, t, kv_heads, head_dim) and return all keys and
        values of these rows so far, (batch, kv_heads, length, head_dim)."""
        # Indices on dims 0 and 2 around a slice: the indexed view is (b, t, kv, hd),
        # exactly k's layout.
        k_cache[self.row_index, :, self.pos] = k
        v_cache[self.row_index, :, self.pos] = v
        return k_cache[self.rows, :, : self.length], v_cache[self.rows, :, : self.length]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm takes the mean square in float32 for bf16 input, and
        # the residual stream it sees is float32 anyway (under autocast too).
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (seq_len, head_dim) for rotary embeddings in the
    "rotate half" layout HF Llama uses: dimension i pairs with i + head_dim/2,
    both rotated by angle position * theta^(-2i/head_dim). The sin table carries
    the rotation's sign (-sin on the first half), so apply_rope needs no negation."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + d/2]) by the tables' angles.
    x: (batch, seq, heads, head_dim); cos, sin: (seq, 1, head_dim), or
    (batch, seq, 1, head_dim) when each sequence has its own positions."""
    x1, x2 = x.chunk(2, dim=-1)
    out = x * cos + torch.cat((x2, x1), dim=-1) * sin
    return out.type_as(x)  # bf16 under autocast: the tables are float32


class Attention(nn.Module):
    """Causal grouped-query attention with one fused q/k/v projection.

    ``qkv_proj.weight`` stacks HF Llama's three projections by rows:
    ``[q_proj.weight; k_proj.weight; v_proj.weight]``, i.e. rows
    ``[0, n_heads·head_dim)`` are q, the next ``n_kv_heads·head_dim`` are k and the
    last ``n_kv_heads·head_dim`` are v, each in HF's own row order (head-major, the
    rotate-half layout within a head), so export is three row slices."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim,
                                  bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor, CacheStep] | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        h, kv = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(x).view(b, t, h + 2 * kv, self.head_dim)
        # q and k are adjacent heads of one tensor: rotate them in one go.
        qk = apply_rope(qkv[:, :, : h + kv], cos, sin)
        q, k, v = qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]
        # enable_gqa: each group of n_heads/n_kv_heads query heads reads one k/v
        # head inside the kernel, without materialising repeated copies.
        if cache is None:
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True, enable_gqa=kv != h)
        else:
            k_cache, v_cache, step = cache
            k, v = step.update(k_cache, v_cache, k, v)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=step.mask,
                                               is_causal=step.causal, enable_gqa=kv != h)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, h * self.head_dim))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up as one matmul.

    ``gate_up_proj.weight`` is ``[gate_proj.weight; up_proj.weight]`` by rows:
    rows ``[0, ffn_dim)`` are HF Llama's gate_proj, rows ``[ffn_dim, 2·ffn_dim)`` its
    up_proj."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor, CacheStep] | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (use RunConfig.resolved_model())")
        self.cfg = cfg
        # The seed of this model's weights: one draw from torch's global generator
        # (on the CPU whatever the default device), so ``torch.manual_seed(s)`` before
        # building decides them, and a build on the meta device draws the same one.
        self.init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        # The layers' own default initialisations are overwritten below: keep them
        # from drawing on the global generator, so that a plain build and a meta one
        # leave it in the same state.
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()
        # Not parameters and not saved: recomputed from the config on load.
        self.register_buffer("rope_cos", torch.empty(cfg.seq_len, cfg.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.seq_len, cfg.head_dim), persistent=False)
        self.loss_chunk = LOSS_CHUNK
        self.reset_parameters()
        self.reset_buffers()

    def tie_weights(self) -> None:
        """The output head shares the token embedding's weight (when tied); again
        after ``to_empty``, which gives each module a parameter of its own."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def initial_value(self, name: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The value parameter ``name`` (of ``shape``) takes in a freshly built model:
        a float32 CPU tensor that depends only on ``init_seed``, the name and the
        config, not on the order or the device parameters are built in. That is what
        lets a model built on the meta device and sharded (train/distributed.py)
        materialise exactly the weights of a plain build, one parameter at a time.

        Norm weights are ones; every matrix is normal(0, init_std), the residual
        projections (o_proj, down_proj) scaled by 1/sqrt(2·n_layers) as in GPT-2, so
        the residual stream's variance does not grow with the depth."""
        if len(shape) == 1:
            return torch.ones(shape)
        std = self.cfg.init_std
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            std /= math.sqrt(2 * self.cfg.n_layers)
        digest = hashlib.blake2b(f"{self.init_seed}/{name}".encode(), digest_size=8).digest()
        gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") >> 1)
        return torch.empty(shape).normal_(0.0, std, generator=gen)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every parameter to its ``initial_value`` (a tied head once, as the
        embedding); parameters still on the meta device are left for whoever
        materialises them."""
        for name, p in self.named_parameters():
            if not p.is_meta:
                p.copy_(self.initial_value(name, p.shape))

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """The rotary tables, computed from the config on the buffers' device (they
        are not saved, so loading a checkpoint or ``to_empty`` needs this)."""
        if self.rope_cos.is_meta:
            return
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.seq_len, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None):
        """tokens: (batch, seq). Returns logits (batch, seq, vocab), or with targets
        the mean cross-entropy loss (ignoring targets equal to -100), the output
        head fused with the loss while gradients are needed (head_loss.py)."""
        t = tokens.shape[1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds model.seq_len={self.cfg.seq_len}")
        # (seq, 1, head_dim): broadcast over the batch and over heads.
        cos, sin = self.rope_cos[:t, None], self.rope_sin[:t, None]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        h, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
        if torch.is_grad_enabled() and (h.requires_grad or self.lm_head.weight.requires_grad):
            return HeadCrossEntropy.apply(h, self.lm_head.weight, targets, self.loss_chunk)
        return F.cross_entropy(self.lm_head(h).float(), targets, ignore_index=-100)

    @torch.no_grad()
    def forward_cached(self, tokens: torch.Tensor, cache: KVCache, rows: list[int],
                       start: list[int], last: list[int] | None = None,
                       packed: PackedWeights | None = None) -> torch.Tensor:
        """Decode: ``tokens`` (batch, t) are positions ``start[i] ..`` of the sequence
        in cache row ``rows[i]``; their keys/values are stored there and they attend
        to all that row's positions before them. Returns the logits (batch, vocab)
        of position ``last[i]`` of each row of ``tokens`` (default: the last).

        Sequences of different lengths are prefilled together right-padded, with
        ``start`` 0 and ``last`` each one's final real token: a pad's key lands past
        its row's length, where a later token's key overwrites it before any query
        may see it. ``packed``: the weights' packed copies for one-row products
        (see ``PackedWeights``), used by decode steps of one sequence."""
        b, t = tokens.shape
        if t == 1:
            return self._decode_one(tokens, cache, rows, start, packed)
        step = CacheStep(rows, start, t, tokens.device)
        if step.length > cache.length:
            raise ValueError(f"positions up to {step.length} exceed the cache's {cache.length}")
        cos, sin = self.rope_cos[step.pos][:, :, None], self.rope_sin[step.pos][:, :, None]
        x = self.embed(tokens)
        for block, k_cache, v_cache in zip(self.blocks, cache.k, cache.v):
            x = block(x, cos, sin, (k_cache, v_cache, step))
        if last is None:
            x = x[:, -1]
        else:
            x = x[torch.arange(b, device=x.device), torch.tensor(last, device=x.device)]
        return self.lm_head(self.norm(x))

    def _decode_one(self, tokens: torch.Tensor, cache: KVCache, rows: list[int],
                    start: list[int], packed: PackedWeights | None) -> torch.Tensor:
        """``forward_cached`` for one new position per sequence: the blocks' math
        inline, on (batch, features) rows, with no per-step index tensors for a
        single sequence (its rotary row, cache slot and keys are plain slices) and
        no attention mask when every sequence is at the same position. Same
        operations as the blocks' forward otherwise."""
        b = len(rows)
        h, kv, hd = self.cfg.n_heads, self.cfg.kv_heads, self.cfg.head_dim
        length = max(start) + 1  # keys to read: positions [0, length)
        if length > cache.length:
            raise ValueError(f"positions up to {length} exceed the cache's {cache.length}")
        mask = None
        if b == 1:
            row, p = rows[0], start[0]
            cos, sin = self.rope_cos[p], self.rope_sin[p]  # (head_dim,)
            write = (row, slice(None), p)  # (kv_heads, head_dim) of the slot
            read = (slice(row, row + 1), slice(None), slice(0, length))
        else:
            pos = torch.tensor(start, device=tokens.device)
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (b, 1, hd)
            # Indices on dims 0 and 2 around a slice: the indexed view is (b, kv, hd).
            write = (torch.tensor(rows, device=tokens.device), slice(None), pos)
            contiguous = rows == list(range(rows[0], rows[0] + b))
            read = (slice(rows[0], rows[0] + b) if contiguous else write[0],
                    slice(None), slice(0, length))
            if min(start) != length - 1:  # sequences at different positions
                keys = torch.arange(length, device=tokens.device)
                mask = (keys <= pos[:, None])[:, None, None]  # (b, 1, 1, length)
        x = self.embed(tokens[:, 0])  # (b, d_model)
        for block, k_cache, v_cache in zip(self.blocks, cache.k, cache.v):
            attn, mlp = block.attn, block.mlp
            qkv = _linear(block.attn_norm(x), attn.qkv_proj, packed).view(b, h + 2 * kv, hd)
            qk = qkv[:, : h + kv]  # q and k heads, rotated together (apply_rope's math)
            x1, x2 = qk.chunk(2, dim=-1)
            qk = (qk * cos + torch.cat((x2, x1), dim=-1) * sin).type_as(qk)
            k_cache[write] = qk[:, h:]
            v_cache[write] = qkv[:, h + kv:]
            y = F.scaled_dot_product_attention(qk[:, :h, None], k_cache[read], v_cache[read],
                                               attn_mask=mask, enable_gqa=kv != h)  # (b, h, 1, hd)
            x = _linear(y.reshape(b, h * hd), attn.o_proj, packed, residual=x)
            gate, up = _linear(block.mlp_norm(x), mlp.gate_up_proj, packed).chunk(2, dim=-1)
            x = _linear(F.silu(gate) * up, mlp.down_proj, packed, residual=x)
        return _linear(self.norm(x), self.lm_head, packed)

    def num_parameters(self) -> int:
        """Unique parameters (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())
