"""Exact parameter counts and FLOPs per token: the one counter the trainer's MFU
and the planner both use.

``Architecture`` names every choice that changes a count. It is built from an
fmforge ``ModelConfig`` or from a Hugging Face ``config.json`` of the Llama,
Mistral, Qwen2 and Qwen3 families (an explicit head dimension, q/k/v biases in
Qwen2, per-head q/k norms in Qwen3). Counts equal ``sum(p.numel())`` of fmforge's
``Transformer`` and of the ``transformers`` models (tested).

FLOPs conventions, per training token (forward + backward), with T the context:

* ``palm`` (default; the trainer's MFU, torchtitan's): ``6·N_matmul + 12·L·d_attn·T``
  (PaLM, Chowdhery et al. 2022, App. B; Chinchilla, Hoffmann et al. 2022, App. F).
  N_matmul: every weight in a per-token matmul, the output head even when tied;
  not the embedding gather, norms or biases. 12·L·d_attn·T: QKᵀ and A·V over the
  full, unmasked context.
* ``kaplan``: ``6·N_nonembed + 6·L·d_attn·T`` (Kaplan et al. 2020, Table 1): no
  embedding nor head, the attention term counted causally.
* ``6nd``: ``6·N_total``, the rule of thumb C ≈ 6ND.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from fmforge.config import ModelConfig
from fmforge.errors import UserError

Convention = Literal["palm", "kaplan", "6nd"]
CONVENTIONS: tuple[str, ...] = ("palm", "kaplan", "6nd")
DEFAULT_CONVENTION: Convention = "palm"

# Rows of the output head's fused loss computed at a time (head_loss.py's
# HeadCrossEntropy): big enough for efficient matmuls, small enough that a
# chunk's logits stay cheap. Here because the planner's memory estimate needs it
# without importing torch.
LOSS_CHUNK = 256


class ArchitectureError(UserError, ValueError):
    """An architecture that cannot be counted: says which value, and why."""


@dataclass(frozen=True)
class Architecture:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab_size: int
    seq_len: int
    tie_embeddings: bool
    qkv_bias: bool = False  # Qwen2: biases on q, k and v
    o_bias: bool = False  # Llama attention_bias=True: o_proj has one too
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "seq_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ArchitectureError(f"architecture {f} must be an integer, got {v!r}")
            if v <= 0:
                raise ArchitectureError(f"architecture {f} must be > 0, got {v}")
        if self.n_heads % self.n_kv_heads:
            raise ArchitectureError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (grouped-query attention)")

    @property
    def d_attn(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def d_kv(self) -> int:
        return self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def from_model_config(cfg: ModelConfig, seq_len: int | None = None) -> Architecture:
    if cfg.vocab_size is None:
        raise ArchitectureError("model.vocab_size must be known to count parameters (set it, or plan from a run)")
    return Architecture(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim, ffn_dim=cfg.ffn_dim, vocab_size=cfg.vocab_size,
        seq_len=seq_len or cfg.seq_len, tie_embeddings=cfg.tie_embeddings, name="fmforge",
    )


_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def _read_hf_config(config: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(config, dict):
        return config, "config"
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ArchitectureError(f"Hugging Face config {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArchitectureError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ArchitectureError(f"{path}: expected a JSON object")
    return raw, str(path)


def from_hf_config(config: str | Path | dict[str, Any], seq_len: int | None = None) -> Architecture:
    """An architecture from a Hugging Face ``config.json`` (a file, its directory or
    the parsed dict). ``seq_len`` defaults to ``max_position_embeddings``."""
    config, source = _read_hf_config(config)
    if "text_config" in config and "hidden_size" not in config:
        config = config["text_config"]  # multimodal wrappers keep the LM here
    missing = [k for k in _HF_REQUIRED if k not in config]
    if missing:
        raise ArchitectureError(
            f"{source} lacks {missing}: only Llama/Mistral/Qwen2-style decoder configs are understood")
    if "num_experts" in config or "num_local_experts" in config:
        raise ArchitectureError(f"{source}: mixture-of-experts models are not supported yet")
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        raise ArchitectureError(f"{source}: hidden_act={act!r} is not a gated-MLP activation fmforge knows")
    model_type = str(config.get("model_type", "llama")).lower()
    heads, d = int(config["num_attention_heads"]), int(config["hidden_size"])
    attention_bias = bool(config.get("attention_bias", False))
    qwen2 = model_type in ("qwen2", "qwen2_moe")
    return Architecture(
        d_model=d,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or d // heads),
        ffn_dim=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        seq_len=int(seq_len or config.get("max_position_embeddings") or 2048),
        # PretrainedConfig defaults tie_word_embeddings to True, but Llama, Mistral and
        # Qwen2 configs override it to False: for these families absent means False.
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=qwen2 or attention_bias,
        o_bias=attention_bias and not qwen2,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        name=model_type,
    )


@dataclass(frozen=True)
class ParamBreakdown:
    embedding: int
    attention: int  # projections with their biases and q/k norms, all layers
    mlp: int
    norms: int  # the two RMSNorms of each layer and the final one
    lm_head: int  # 0 when tied to the embedding
    matmul: int  # weights in a per-token matmul: projections + head, tied or not

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but the embedding and the output head."""
        return self.attention + self.mlp + self.norms

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total, "non_embedding": self.non_embedding}


def count_params(arch: Architecture) -> ParamBreakdown:
    d, L, f = arch.d_model, arch.n_layers, arch.ffn_dim
    attn_w = 2 * d * arch.d_attn + 2 * d * arch.d_kv  # q, o; k, v
    attn_extra = ((arch.d_attn + 2 * arch.d_kv if arch.qkv_bias else 0) + (d if arch.o_bias else 0)
                  + (2 * arch.head_dim if arch.qk_norm else 0))
    mlp_w = 3 * d * f  # gate, up, down
    mlp_b = (2 * f + d) if arch.mlp_bias else 0
    vd = arch.vocab_size * d
    return ParamBreakdown(
        embedding=vd,
        attention=L * (attn_w + attn_extra),
        mlp=L * (mlp_w + mlp_b),
        norms=(2 * L + 1) * d,
        lm_head=0 if arch.tie_embeddings else vd,
        matmul=L * (attn_w + mlp_w) + vd,
    )


def check_convention(convention: str) -> Convention:
    if convention not in CONVENTIONS:
        raise ArchitectureError(f"unknown FLOPs convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    return convention  # type: ignore[return-value]


def _weights_and_attention(arch: Architecture, convention: str, seq_len: int | None) -> tuple[int, int]:
    """(weights N that do 6 FLOPs/token in training, attention FLOPs/token) by ``convention``."""
    pc, T = count_params(arch), seq_len or arch.seq_len
    convention = check_convention(convention)
    if convention == "palm":
        return pc.matmul, 12 * arch.n_layers * arch.d_attn * T
    if convention == "kaplan":
        return pc.non_embedding, 6 * arch.n_layers * arch.d_attn * T
    return pc.total, 0


def train_flops_per_token(arch: Architecture, convention: str = DEFAULT_CONVENTION,
                          seq_len: int | None = None) -> int:
    """Forward + backward FLOPs per training token: each weight does 2 FLOPs forward
    and 4 backward (Kaplan et al. 2020, §2.1), plus attention (module docstring)."""
    n, attn = _weights_and_attention(arch, convention, seq_len)
    return 6 * n + attn


def lora_params(arch: Architecture, rank: int = 16, targets: str = "all") -> int:
    """Trainable parameters of LoRA adapters (Hu et al. 2021): d_in×r and r×d_out per
    adapted projection; ``targets`` "all" linear layers or "attention" (q, k, v, o)."""
    d, f = arch.d_model, arch.ffn_dim
    attn = 2 * (d + arch.d_attn) + 2 * (d + arch.d_kv)
    return arch.n_layers * rank * (attn + (3 * (d + f) if targets == "all" else 0))


def lora_flops_per_token(arch: Architecture, rank: int = 16, convention: str = DEFAULT_CONVENTION,
                         recompute: bool = False) -> float:
    """FLOPs per token to fine-tune a frozen base with LoRA: 4·N through the base
    (forward 2N, activation gradients 2N; the frozen weights' gradients are
    skipped), the weightless attention matmuls in full, 6 per adapter parameter.
    With activation recomputation the forward runs twice: + 2N + a third of attention."""
    n, attn = _weights_and_attention(arch, convention, None)
    flops = 4 * n + attn + 6 * lora_params(arch, rank)
    return float(flops + (2 * n + attn / 3 if recompute else 0))


# The trainer's view: an fmforge model config, PaLM convention.

def count_parameters(cfg: ModelConfig) -> ParamBreakdown:
    return count_params(from_model_config(cfg))


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token of an fmforge model (PaLM convention): what MFU is measured in."""
    return train_flops_per_token(from_model_config(cfg), "palm", seq_len)
