"""Loading the base and wiring LoRA through ``peft``.

``target_modules`` defaults per architecture family (``model_type`` in the base's
``config.json``): every attention and MLP projection, as QLoRA (Dettmers et al.
2023) found that adapting all linear layers matches full fine-tuning where
attention-only adapters do not. A family not listed gets peft's ``all-linear``
(every linear layer but the output head).

QLoRA loads the frozen base in 4-bit NF4 through ``bitsandbytes``, which needs
CUDA: without it the run stops before anything is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmforge.config import FinetuneConfig
from fmforge.errors import UserError

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_MODULES: dict[str, list[str]] = {
    **{family: _LLAMA_LIKE for family in (
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma",
        "gemma2", "gemma3_text", "olmo", "olmo2", "granite", "cohere", "deepseek_v2", "smollm3",
        "starcoder2_llama", "internlm2_llama", "yi", "exaone")},
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


class QLoRAUnavailable(UserError, RuntimeError):
    """QLoRA was asked for where it cannot run (no CUDA, or no bitsandbytes)."""


class BaseModelError(UserError, ValueError):
    """The base is not a Hugging Face causal LM directory fmforge can load."""


def base_config(base_dir: Path) -> dict[str, Any]:
    path = Path(base_dir) / "config.json"
    if not path.is_file():
        raise BaseModelError(f"{base_dir} has no config.json: finetune.base must be a local Hugging "
                             "Face model directory (or an fmforge run, which is exported first)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BaseModelError(f"{path} is not valid JSON: {exc}") from exc


def default_target_modules(model_type: str | None) -> list[str] | str:
    return list(TARGET_MODULES[model_type]) if model_type in TARGET_MODULES else "all-linear"


def check_qlora_possible() -> None:
    """Raise before anything loads when 4-bit training cannot run here."""
    if not torch.cuda.is_available():
        raise QLoRAUnavailable(
            "finetune.method=qlora loads the base in 4 bits through bitsandbytes, which needs a CUDA "
            "GPU, and none is available here: use finetune.method=lora (the same adapters on a "
            "full-precision base) or run on a machine with CUDA")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QLoRAUnavailable(
            "finetune.method=qlora needs the bitsandbytes package: `pip install bitsandbytes` "
            f"(import failed: {exc})") from None


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the weights are held in: float32 unless bf16/fp16 is asked for
    (``auto`` keeps float32 weights and lets autocast run the matmuls in bf16)."""
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def load_base(base_dir: Path, method: str, device: torch.device, weights_dtype: torch.dtype):
    """The base causal LM, on ``device``; 4-bit (NF4, double quantisation) for qlora."""
    from transformers import AutoModelForCausalLM

    base_config(base_dir)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if method == "qlora":
        check_qlora_possible()
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        kwargs["device_map"] = {"": device.index or 0}
    else:
        kwargs["dtype"] = weights_dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"{base_dir}: transformers cannot load it as a causal language model "
                             f"({exc})") from exc
    if method != "qlora":
        model.to(device)
    return model


@dataclass
class TrainableCount:
    trainable: int
    total: int

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (f"trainable parameters: {self.trainable:,} of {self.total:,} "
                f"({100 * self.share:.3f}%)")


def count_trainable(model: torch.nn.Module) -> TrainableCount:
    """Parameters that train, and all of them (a 4-bit weight counted as its
    unpacked size, as peft's ``print_trainable_parameters`` does)."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return TrainableCount(trainable, total)


def add_adapters(model, cfg: FinetuneConfig):
    """Wrap ``model`` with LoRA adapters; for qlora after peft's k-bit preparation
    (norms in fp32, input gradients enabled for checkpointing)."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora.target_modules or default_target_modules(getattr(model.config, "model_type", None))
    if cfg.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise BaseModelError(f"finetune.lora.target_modules={targets}: {exc}") from None
