"""Adapters as models: load a base with its adapter, and merge the adapter into a
standalone Hugging Face model (``W + (alpha/r)·B·A`` folded into each weight, by
peft's ``merge_and_unload``), which anything that reads the base's family reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from fmforge.inference.hf_models import AdapterError, adapter_base, is_adapter_dir, load_model, load_tokenizer
from fmforge.rundir import atomic_directory

__all__ = ["AdapterError", "adapter_base", "is_adapter_dir", "load_model", "load_tokenizer", "merge_adapter"]


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None,
                  dtype: torch.dtype = torch.float32, write_card: Callable[[Path], Any] | None = None) -> Path:
    """Write base + adapter as one standalone model (weights, config, tokenizer with
    the chat template the adapter was trained with). Appears complete or not at all;
    ``write_card(dir)`` adds its model card before (the CLI passes
    ``fmforge.export.card.write_merged_card``)."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise AdapterError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise FileExistsError(f"{out_dir} exists and is not a model directory: name a new or empty one")
    model = load_model(adapter_dir, "cpu", base, dtype)
    merged = model.merge_and_unload()
    tok_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else adapter_base(adapter_dir, base)
    tokenizer = load_tokenizer(tok_source)
    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if write_card is not None:
            write_card(tmp)
    return out_dir
