"""A Llama-style decoder-only transformer in one readable file.

RMSNorm before each block, rotary position embeddings, grouped-query attention
(``n_kv_heads`` key/value heads shared by ``n_heads`` query heads), a SwiGLU MLP,
no biases, and optionally the output head tied to the token embedding. The model
is single-device; data/tensor parallelism is applied from outside (train/).

``forward`` runs whole sequences with causal attention: training and scoring.
Generation with a KV cache lives in ``fmforge.inference`` (kv_cache.py, decode.py):
it runs these blocks with ``attend`` set to an attention that also stores and
reads the cache, so the block math below is the one a prefill uses.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fmforge.config import ModelConfig
from fmforge.model.counting import LOSS_CHUNK
from fmforge.model.head_loss import HeadCrossEntropy

# attention(q, k, v) -> y, on (batch, heads, seq, head_dim); k and v may have fewer heads.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each position attends to itself and the positions before it. enable_gqa:
    each group of query heads reads its one k/v head inside the kernel, without
    materialising repeated copies."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                          enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    """Causal grouped-query attention with one fused q/k/v projection.

    ``qkv_proj.weight`` stacks HF Llama's three projections by rows:
    ``[q_proj.weight; k_proj.weight; v_proj.weight]``, i.e. rows
    ``[0, n_heads·head_dim)`` are q, the next ``n_kv_heads·head_dim`` are k and the
    last ``n_kv_heads·head_dim`` are v, each in HF's own row order (head-major, the
    rotate-half layout within a head), so export is three row slices.

    ``attend`` is causal attention over x's own positions; a decoder passes one
    that stores k, v in its KV cache and attends to the positions cached before
    (``fmforge.inference.kv_cache``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim,
                                  bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attend: Attend = causal_attention) -> torch.Tensor:
        b, t, _ = x.shape
        h, kv = self.n_heads, self.n_kv_heads
        qkv = self.qkv_proj(x).view(b, t, h + 2 * kv, self.head_dim)
        # q and k are adjacent heads of one tensor: rotate them in one go.
        qk = apply_rope(qkv[:, :, : h + kv], cos, sin)
        q, k, v = qk[:, :, :h], qk[:, :, h:], qkv[:, :, h + kv :]
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
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
                attend: Attend = causal_attention) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, attend)
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

    def num_parameters(self) -> int:
        """Unique parameters (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())
