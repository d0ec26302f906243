"""Hugging Face models on local disk, for inference: a model directory, or a PEFT
adapter directory on its base. Fine-tuning (merging adapters) and evaluation
(scoring any local model on a run's held-out bytes) both load them here."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class AdapterError(ValueError):
    """An adapter directory that cannot be used as given."""


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: Path, base: str | Path | None = None) -> Path:
    """The base an adapter was trained on: ``base`` when given, else the path the
    adapter records (``base_model_name_or_path``)."""
    if base is not None:
        found = Path(base)
    else:
        conf = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
        recorded = conf.get("base_model_name_or_path")
        if not recorded:
            raise AdapterError(f"{adapter_dir}/adapter_config.json names no base model: pass --base")
        found = Path(recorded)
    if not (found / "config.json").is_file():
        raise AdapterError(f"the adapter {adapter_dir} was trained on {found}, which is not a local "
                           "Hugging Face model directory here: pass --base PATH to the base")
    return found


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_model(path: str | Path, device: torch.device | str = "cpu", base: str | Path | None = None,
               dtype: torch.dtype = torch.float32):
    """A model directory, or an adapter directory on its base (unmerged), in eval mode."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if is_adapter_dir(path):
        from peft import PeftModel

        base_model = AutoModelForCausalLM.from_pretrained(str(adapter_base(path, base)), dtype=dtype,
                                                          local_files_only=True)
        model = PeftModel.from_pretrained(base_model, str(path), is_trainable=False)
    elif (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    else:
        raise FileNotFoundError(f"{path} is neither a model directory (config.json) nor an adapter "
                                "directory (adapter_config.json)")
    return model.to(device).eval()
