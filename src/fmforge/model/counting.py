"""Exact parameter counts and FLOPs per token, from the architecture alone.

The planner and the trainer's MFU both use these, so they are kept exact and
tested against ``sum(p.numel())`` of the instantiated model.
"""

from __future__ import annotations

from dataclasses import dataclass

from fmforge.config import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # token embedding table
    attention: int  # q, k, v, o projections, all layers
    mlp: int  # gate, up, down projections, all layers
    norms: int  # RMSNorm weights, all layers + final
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Parameters that do matmul work per token (Kaplan et al. 2020's N),
        plus the output head, which does too."""
        return self.attention + self.mlp + self.norms + self.lm_head


def count_parameters(cfg: ModelConfig) -> ParamCount:
    if cfg.vocab_size is None:
        raise ValueError("model.vocab_size must be known to count parameters")
    d, L, hd = cfg.d_model, cfg.n_layers, cfg.head_dim
    q_and_o = 2 * d * cfg.n_heads * hd
    k_and_v = 2 * d * cfg.kv_heads * hd
    mlp = 3 * d * cfg.ffn_dim
    return ParamCount(
        embedding=cfg.vocab_size * d,
        attention=L * (q_and_o + k_and_v),
        mlp=L * mlp,
        norms=(2 * L + 1) * d,
        lm_head=0 if cfg.tie_embeddings else cfg.vocab_size * d,
    )


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul for every token: all but the
    embedding lookup (a gather) and the norms (elementwise). The output head
    counts even when tied, because it is a full matmul."""
    pc = count_parameters(cfg)
    head = cfg.vocab_size * cfg.d_model  # type: ignore[operator]
    return pc.attention + pc.mlp + head


def attention_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Forward+backward FLOPs of the score and value matmuls (Q·Kᵀ and A·V):
    12·n_layers·d_model·seq_len (Chinchilla, Hoffmann et al. 2022, App. F; PaLM,
    Chowdhery et al. 2022, App. B), counted over the full, unmasked context."""
    t = seq_len or cfg.seq_len
    return 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * t


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None, training: bool = True) -> int:
    """FLOPs to process one token.

    Training: 6·N + 12·L·d·T, where N counts the matmul parameters (every weight
    does a multiply-add (2 FLOPs) forward and two backward (4 FLOPs): Kaplan et al.
    2020, "Scaling Laws for Neural Language Models", §2.1) and the second term is
    attention over a context of T tokens. Inference (forward only): a third of it.
    """
    total = 6 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)
    return total if training else total // 3
