"""Hugging Face models on local disk, for inference: a model directory, or a PEFT
adapter directory on its base. Fine-tuning (merging adapters) and evaluation
(scoring any local model on a run's held-out bytes) both load them here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fmforge.errors import InputFileMissing, UserError


class AdapterError(UserError, ValueError):
    """An adapter directory that cannot be used as given."""


class ModelDirError(UserError, ValueError):
    """A model directory (or an adapter's base) transformers cannot load: the message
    names it and carries transformers' reason."""


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: Path, base: str | Path | None = None) -> Path:
    """The base an adapter was trained on: ``base`` when given, else the path the
    adapter records (``base_model_name_or_path``)."""
    if base is not None:
        found = Path(base)
    else:
        path = Path(adapter_dir) / "adapter_config.json"
        try:
            conf = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{path} is not valid JSON: {exc}") from exc
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

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: transformers cannot load its tokenizer ({exc})") from exc


def load_model(path: str | Path, device: torch.device | str = "cpu", base: str | Path | None = None,
               dtype: torch.dtype = torch.float32):
    """A model directory, or an adapter directory on its base (unmerged), in eval mode."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if is_adapter_dir(path):
        from peft import PeftModel

        base_dir = adapter_base(path, base)
        base_model = _from_pretrained(AutoModelForCausalLM, base_dir, dtype)
        try:
            model = PeftModel.from_pretrained(base_model, str(path), is_trainable=False)
        except (OSError, ValueError, RuntimeError) as exc:  # a missing file, another base's shapes
            raise AdapterError(f"{path}: peft cannot load the adapter on {base_dir} ({exc})") from exc
    elif (path / "config.json").is_file():
        model = _from_pretrained(AutoModelForCausalLM, path, dtype)
    else:
        raise InputFileMissing(f"{path} is neither a model directory (config.json) nor an adapter "
                               "directory (adapter_config.json)")
    return model.to(device).eval()


def _from_pretrained(auto, path: Path, dtype: torch.dtype):
    try:
        return auto.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: transformers cannot load it as a causal language model "
                            f"({exc})") from exc
