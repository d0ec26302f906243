"""fmforge's Transformer <-> Hugging Face ``LlamaForCausalLM``: weights and config.

The architectures are the same (RMSNorm, rotate-half RoPE, SwiGLU, GQA, no
biases); only names differ, and fmforge fuses two groups of matrices:

- ``blocks.N.attn.qkv_proj.weight`` is ``[q_proj; k_proj; v_proj]`` by rows,
- ``blocks.N.mlp.gate_up_proj.weight`` is ``[gate_proj; up_proj]`` by rows,

so export is row slices and import is a concatenation; no permutation, since
both sides use the rotate-half layout within a head. A tied head is stored once,
as the embedding (what ``transformers`` writes for ``tie_word_embeddings``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from fmforge.config import ModelConfig
from fmforge.errors import UserError


class UnsupportedModelError(UserError, ValueError):
    """A checkpoint whose architecture fmforge's Transformer cannot reproduce exactly."""


# LlamaConfig's defaults: transformers leaves a key equal to its default out of
# the config.json it writes, so a missing key means this value.
LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
    "head_dim": None, "hidden_act": "silu", "max_position_embeddings": 2048,
    "initializer_range": 0.02, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
}


def _layer(i: int) -> str:
    return f"model.layers.{i}."


def to_hf_state_dict(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """fmforge weights (``Transformer.state_dict()`` names) -> HF Llama names, fused
    matrices split. Every tensor is a contiguous copy (safetensors refuses views
    and shared storage). A tied head is left out, as transformers saves it."""
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        ours, p = f"blocks.{i}.", _layer(i)
        q, k, v = state[ours + "attn.qkv_proj.weight"].split([q_rows, kv_rows, kv_rows])
        gate, up = state[ours + "mlp.gate_up_proj.weight"].split([cfg.ffn_dim, cfg.ffn_dim])
        out.update({
            p + "input_layernorm.weight": state[ours + "attn_norm.weight"],
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": state[ours + "attn.o_proj.weight"],
            p + "post_attention_layernorm.weight": state[ours + "mlp_norm.weight"],
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": state[ours + "mlp.down_proj.weight"],
        })
    return {name: t.detach().contiguous().clone() for name, t in out.items()}


def from_hf_state_dict(hf: Mapping[str, torch.Tensor], cfg: ModelConfig,
                       source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """HF Llama weights -> fmforge names (``Transformer.load_state_dict``), fused.
    ``hf`` maps names to tensors (or to anything with a ``[...]``-free tensor value,
    e.g. a lazy safetensors view already materialised)."""

    def get(name: str) -> torch.Tensor:
        if name not in hf:
            raise UnsupportedModelError(f"{source} has no tensor {name!r}: not a Llama checkpoint "
                                        "fmforge can import (or an incomplete one)")
        return hf[name]

    out = {"embed.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    out["lm_head.weight"] = out["embed.weight"] if cfg.tie_embeddings else get("lm_head.weight")
    for i in range(cfg.n_layers):
        ours, p = f"blocks.{i}.", _layer(i)
        out.update({
            ours + "attn_norm.weight": get(p + "input_layernorm.weight"),
            ours + "attn.qkv_proj.weight": torch.cat([get(p + "self_attn.q_proj.weight"),
                                                      get(p + "self_attn.k_proj.weight"),
                                                      get(p + "self_attn.v_proj.weight")]),
            ours + "attn.o_proj.weight": get(p + "self_attn.o_proj.weight"),
            ours + "mlp_norm.weight": get(p + "post_attention_layernorm.weight"),
            ours + "mlp.gate_up_proj.weight": torch.cat([get(p + "mlp.gate_proj.weight"),
                                                         get(p + "mlp.up_proj.weight")]),
            ours + "mlp.down_proj.weight": get(p + "mlp.down_proj.weight"),
        })
    known = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        _layer(i) + s for i in range(cfg.n_layers) for s in (
            "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
            "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")}
    # rotary_emb.inv_freq: a buffer some older checkpoints saved; recomputed from the config.
    extra = sorted(n for n in hf if n not in known and not n.endswith("rotary_emb.inv_freq"))
    if extra:
        raise UnsupportedModelError(
            f"{source} holds tensors a plain Llama does not have ({', '.join(extra[:5])}"
            f"{', ...' if len(extra) > 5 else ''}): biases, quantisation scales or another "
            "architecture; fmforge imports only bias-free Llama checkpoints")
    return out


def hf_config(cfg: ModelConfig, bos_id: int | None, eos_id: int | None,
              pad_id: int | None, dtype: str = "float32") -> dict[str, Any]:
    """``config.json`` of the LlamaForCausalLM with ``cfg``'s architecture. The
    rope keys are written both ways (``rope_theta``/``rope_scaling`` for vLLM and
    transformers 4.x, ``rope_parameters`` for transformers 5)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def model_config_from_hf(config: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """The ``ModelConfig`` of a Llama ``config.json``; refuses, naming the key, any
    architecture fmforge's Transformer would not reproduce exactly."""

    def get(key: str) -> Any:
        return config[key] if key in config else LLAMA_DEFAULTS[key]

    def refuse(key: str, why: str) -> None:
        raise UnsupportedModelError(f"{source}: {key} = {config.get(key)!r}: {why}; fmforge imports "
                                    "only plain Llama checkpoints (model_type 'llama')")

    if config.get("model_type") != "llama":
        refuse("model_type", "not a Llama model")
    archs = config.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in archs:
        refuse("architectures", "not LlamaForCausalLM")
    if get("hidden_act") != "silu":
        refuse("hidden_act", "fmforge's MLP is SwiGLU (silu)")
    for key in ("attention_bias", "mlp_bias"):
        if get(key):
            refuse(key, "fmforge's layers have no biases")
    scaling = get("rope_scaling")
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        refuse("rope_scaling", "rope scaling (llama3, linear, dynamic, yarn ...) is not implemented")
    params = config.get("rope_parameters") or {}
    if params.get("rope_type", "default") != "default":
        refuse("rope_parameters", "rope scaling (llama3, linear, dynamic, yarn ...) is not implemented")
    theta = params.get("rope_theta", get("rope_theta"))
    hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
    if hidden % heads:
        refuse("num_attention_heads", f"does not divide hidden_size={hidden}")
    head_dim = get("head_dim")
    if head_dim is not None and int(head_dim) != hidden // heads:
        refuse("head_dim", f"differs from hidden_size / num_attention_heads = {hidden // heads}")
    kv = get("num_key_value_heads") or heads
    try:
        return ModelConfig(
            vocab_size=int(get("vocab_size")), d_model=hidden, n_layers=int(get("num_hidden_layers")),
            n_heads=heads, n_kv_heads=int(kv), d_ff=int(get("intermediate_size")),
            seq_len=int(get("max_position_embeddings")), rope_theta=float(theta),
            norm_eps=float(get("rms_norm_eps")), tie_embeddings=bool(get("tie_word_embeddings")),
            init_std=float(get("initializer_range")),
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise UnsupportedModelError(f"{source}: not an architecture fmforge supports: {exc}") from exc


def to_transformers(model, attn_implementation: str = "sdpa"):
    """An in-memory ``transformers.LlamaForCausalLM`` with ``model``'s architecture and
    a copy of its weights (what ``fmforge export hf`` writes, without the files):
    for parity tests and side-by-side benchmarks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.cfg
    hf = LlamaForCausalLM(LlamaConfig(**hf_config(cfg, None, None, None),
                                      attn_implementation=attn_implementation))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict(), cfg), strict=False)
    allowed = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if unexpected or set(missing) - allowed:
        raise ValueError(f"weight mapping to LlamaForCausalLM failed: missing {missing}, "
                         f"unexpected {unexpected}")
    return hf.eval()
