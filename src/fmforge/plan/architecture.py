"""Exact parameter counts and FLOPs per token for Llama-style decoders.

``Architecture`` generalises ``fmforge.config.ModelConfig`` to the Hugging Face
configs people bring (Llama, Mistral, Qwen2/Qwen3): an explicit head dimension,
attention biases (Qwen2 has them on q, k and v) and per-head q/k norms (Qwen3).
For an fmforge model the counts equal ``fmforge.model.counting`` and
``sum(p.numel())`` of the instantiated ``Transformer`` (tested).

FLOPs conventions (per token, training = forward + backward):

* ``palm`` (default): ``6·N_matmul + 12·L·d_attn·T`` — PaLM (Chowdhery et al.
  2022, App. B) and Chinchilla (Hoffmann et al. 2022, App. F). ``N_matmul`` is
  every weight that takes part in a matmul for each token: attention and MLP
  projections and the output head (even when tied), not the embedding gather nor
  norms or biases. The second term is QKᵀ and A·V over a full, unmasked context of
  T tokens, d_attn = n_heads·head_dim. This is the convention fmforge's trainer
  reports MFU in (``fmforge.model.counting.flops_per_token``), and torchtitan's.
* ``kaplan``: ``6·N_nonembed + 6·L·d_attn·T`` — Kaplan et al. 2020, Table 1
  (C_forward = 2N + 2·n_layer·n_ctx·d_attn, training ×3): N excludes both the
  embedding and the output head, and the attention term is the causal half.
* ``6nd``: ``6·N_total`` — the rule of thumb C ≈ 6ND with N every parameter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from fmforge.config import ModelConfig
from fmforge.plan.errors import PlanError, require_positive

Convention = Literal["palm", "kaplan", "6nd"]
CONVENTIONS: tuple[str, ...] = ("palm", "kaplan", "6nd")
DEFAULT_CONVENTION: Convention = "palm"


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
    qkv_bias: bool = False  # Qwen2: biases on q, k and v projections
    o_bias: bool = False  # Llama attention_bias=True: o_proj has one too
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "seq_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PlanError(f"architecture {f} must be an integer, got {v!r}")
            require_positive(f"architecture {f}", v)
        if self.n_heads % self.n_kv_heads:
            raise PlanError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} (grouped-query attention)"
            )

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
        raise PlanError("model.vocab_size must be known to count parameters (set it, or plan from a run)")
    return Architecture(
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        ffn_dim=cfg.ffn_dim,
        vocab_size=cfg.vocab_size,
        seq_len=seq_len or cfg.seq_len,
        tie_embeddings=cfg.tie_embeddings,
        name="fmforge",
    )


_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def from_hf_config(config: str | Path | dict[str, Any], seq_len: int | None = None) -> Architecture:
    """An architecture from a Hugging Face ``config.json`` (a path or the parsed dict).

    Understood: Llama, Mistral, Qwen2 and Qwen3-style configs. ``seq_len`` defaults
    to ``max_position_embeddings`` (the training context, for the attention FLOPs)."""
    source = "config"
    if not isinstance(config, dict):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise PlanError(f"Hugging Face config {path} does not exist")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PlanError(f"{path} is not valid JSON: {exc}") from exc
        source = str(path)
    if not isinstance(config, dict):
        raise PlanError(f"{source}: expected a JSON object")
    if "text_config" in config and "hidden_size" not in config:
        config = config["text_config"]  # multimodal wrappers keep the LM here
    missing = [k for k in _HF_REQUIRED if k not in config]
    if missing:
        raise PlanError(
            f"{source} lacks {missing}: only Llama/Mistral/Qwen2-style decoder configs are understood"
        )
    model_type = str(config.get("model_type", "llama")).lower()
    mlp_act = config.get("hidden_act", "silu")
    if mlp_act not in ("silu", "swish", "gelu", "gelu_pytorch_tanh"):
        raise PlanError(f"{source}: hidden_act={mlp_act!r} is not a gated-MLP activation fmforge knows")
    heads = int(config["num_attention_heads"])
    d = int(config["hidden_size"])
    head_dim = config.get("head_dim") or d // heads
    attention_bias = bool(config.get("attention_bias", False))
    qwen2 = model_type in ("qwen2", "qwen2_moe")
    if "num_experts" in config or "num_local_experts" in config:
        raise PlanError(f"{source}: mixture-of-experts models are not supported by the planner yet")
    return Architecture(
        d_model=d,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        ffn_dim=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        seq_len=int(seq_len or config.get("max_position_embeddings") or 2048),
        # transformers' PretrainedConfig defaults tie_word_embeddings to True; Llama,
        # Mistral and Qwen2 configs override it to False, so an absent key means False
        # for these families.
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=qwen2 or attention_bias,
        o_bias=attention_bias and not qwen2,
        mlp_bias=bool(config.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        name=model_type,
    )


# ------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParamBreakdown:
    embedding: int
    attention: int  # projections incl. biases and q/k norms
    mlp: int
    norms: int  # the two per-layer RMSNorms and the final one
    lm_head: int  # 0 when tied
    matmul: int  # weights in a matmul per token (projections + head, tied or not)

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but the embedding and the output head."""
        return self.attention + self.mlp + self.norms

    def to_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["total"] = self.total
        d["non_embedding"] = self.non_embedding
        return d


def count_params(arch: Architecture) -> ParamBreakdown:
    d, L, f = arch.d_model, arch.n_layers, arch.ffn_dim
    q_o = 2 * d * arch.d_attn
    k_v = 2 * d * arch.d_kv
    attn_w = q_o + k_v
    attn_b = (arch.d_attn + 2 * arch.d_kv if arch.qkv_bias else 0) + (d if arch.o_bias else 0)
    attn_norm = 2 * arch.head_dim if arch.qk_norm else 0
    mlp_w = 3 * d * f
    mlp_b = (2 * f + d) if arch.mlp_bias else 0
    vd = arch.vocab_size * d
    return ParamBreakdown(
        embedding=vd,
        attention=L * (attn_w + attn_b + attn_norm),
        mlp=L * (mlp_w + mlp_b),
        norms=(2 * L + 1) * d,
        lm_head=0 if arch.tie_embeddings else vd,
        matmul=L * (attn_w + mlp_w) + vd,
    )


# ----------------------------------------------------------------------- FLOPs


def check_convention(convention: str) -> Convention:
    if convention not in CONVENTIONS:
        raise PlanError(f"unknown FLOPs convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    return convention  # type: ignore[return-value]


def train_flops_per_token(arch: Architecture, convention: str = DEFAULT_CONVENTION, seq_len: int | None = None) -> float:
    """Forward + backward FLOPs per training token (see the module docstring)."""
    convention = check_convention(convention)
    T = seq_len or arch.seq_len
    pc = count_params(arch)
    if convention == "palm":
        return 6 * pc.matmul + 12 * arch.n_layers * arch.d_attn * T
    if convention == "kaplan":
        return 6 * pc.non_embedding + 6 * arch.n_layers * arch.d_attn * T
    return 6 * pc.total


def flops_per_token_from_params(params: float, convention: str = DEFAULT_CONVENTION) -> float:
    """With only a parameter count (no architecture): 6·N, the attention term unknown.
    Every convention reduces to this rule of thumb (Kaplan et al. 2020, §2.1)."""
    check_convention(convention)
    require_positive("params", params)
    return 6.0 * params


def lora_params(arch: Architecture, rank: int = 16, targets: str = "all") -> int:
    """Trainable parameters of LoRA adapters (Hu et al. 2021): a d_in×r and an r×d_out
    matrix per adapted projection. ``targets``: "all" linear layers or "attention" (q,k,v,o)."""
    require_positive("LoRA rank", rank)
    d, f = arch.d_model, arch.ffn_dim
    attn = (d + arch.d_attn) * 2 + (d + arch.d_kv) * 2  # q, o, k, v
    mlp = 3 * (d + f)
    per_layer = attn + (mlp if targets == "all" else 0)
    return arch.n_layers * rank * per_layer


def lora_flops_per_token(
    arch: Architecture | None,
    base_params: float,
    rank: int = 16,
    convention: str = DEFAULT_CONVENTION,
    recompute: bool = False,
) -> float:
    """FLOPs per token to fine-tune a frozen base with LoRA.

    Derivation: a matmul y = xW costs 2 FLOPs per weight per token forward; backward
    costs 2 for the activation gradient (dL/dx = dL/dy·Wᵀ) and 2 for the weight
    gradient (dL/dW = xᵀ·dL/dy). With W frozen the weight gradient is skipped, but
    the activation gradient must still flow through every layer to reach the
    adapters below: 2N + 2N = 4N per token. The attention score/value matmuls have
    no weights, so their full 12·L·d_attn·T (forward + both backward grads) remains.
    The adapters themselves train normally: 6 FLOPs per adapter parameter. With
    activation recomputation (gradient checkpointing, usual for QLoRA) the forward
    runs twice: add 2N + 4·L·d_attn·T.
    Without an architecture: 4·N (+2·N with recompute), the attention term unknown.
    """
    check_convention(convention)
    if arch is None:
        require_positive("base model params", base_params)
        return (4.0 + (2.0 if recompute else 0.0)) * base_params
    pc = count_params(arch)
    n = pc.matmul if convention == "palm" else (pc.non_embedding if convention == "kaplan" else pc.total)
    attn_mult = 12 if convention == "palm" else (6 if convention == "kaplan" else 0)
    attn = attn_mult * arch.n_layers * arch.d_attn * arch.seq_len
    flops = 4 * n + attn + 6 * lora_params(arch, rank)
    if recompute:
        flops += 2 * n + attn / 3
    return float(flops)
