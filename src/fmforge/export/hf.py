"""Hugging Face format, both ways.

``export_hf``: a run's latest checkpoint becomes a directory that
``transformers`` (``AutoModelForCausalLM``/``AutoTokenizer``), vLLM and anything
else that reads Llama checkpoints loads: ``config.json``, ``model.safetensors``,
``generation_config.json`` and the run's tokenizer files.

``import_hf``: a Llama checkpoint on local disk becomes a run directory
(``config.yaml``, ``tokenizer/``, ``checkpoints/step-000000/``) that
``fmforge generate`` and ``load_trained`` read like a trained run.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from fmforge.config import ModelConfig, RunConfig, config_from_dict
from fmforge.errors import InputFileMissing
from fmforge.export.mapping import (
    UnsupportedModelError,
    from_hf_state_dict,
    hf_config,
    model_config_from_hf,
    to_hf_state_dict,
)
from fmforge.inference.loading import TrainedModel, load_trained
from fmforge.model.transformer import Transformer
from fmforge.rundir import RunDir, atomic_directory, atomic_write_json, atomic_write_text
from fmforge.tokenizer.load import special_token_ids
from fmforge.train.checkpoint import save_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# What `import hf` writes in the data section: a run needs one source to be a
# valid config, and an imported model has none until the user names its data.
DATA_PLACEHOLDER = "SET-ME/path/to/your/text/**/*.txt"


# ------------------------------------------------------------------- token ids


# ---------------------------------------------------------------------- export


def _prepare_out_dir(out_dir: Path, marker: str) -> None:
    """Refuse to replace a directory that is not an earlier export (the export is
    written beside it and renamed over it, which would delete its files)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / marker).is_file())):
        raise FileExistsError(
            f"{out_dir} exists and is not an earlier export (no {marker}): name a new or empty "
            "directory; an export replaces the whole directory")


def export_hf(run: RunDir, out_dir: str | Path, trained: TrainedModel | None = None,
              card_paths: bool = False, plan_actual: dict | None = None, decision: dict | None = None) -> Path:
    """Write the run's latest checkpoint as a Hugging Face Llama directory, with its
    model card (README.md; ``card_paths``: naming this machine's paths too;
    ``plan_actual``, ``decision``: the planner's figures the card shows, when given).
    The directory appears complete or not at all (written aside, then renamed)."""
    from fmforge.export.card import run_card, write_card

    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, "config.json")
    trained = trained or load_trained(run, device="cpu")
    model = trained.model
    cfg = model.cfg
    state = {k: v.float().cpu() for k, v in model.state_dict().items()}
    ids = special_token_ids(run.tokenizer, trained.tokenizer)
    ids["eos"] = trained.eos_id if trained.eos_id is not None else ids["eos"]
    config = hf_config(cfg, ids["bos"], ids["eos"], ids["pad"])
    generation = {"_from_model_config": True, "bos_token_id": ids["bos"],
                  "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    with atomic_directory(out_dir) as tmp:
        save_file(to_hf_state_dict(state, cfg), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", config)
        atomic_write_json(tmp / "generation_config.json", generation)
        for name in TOKENIZER_FILES:
            if (run.tokenizer / name).is_file():
                shutil.copyfile(run.tokenizer / name, tmp / name)
        write_card(run_card(run, cfg, trained.step, out_dir.name, paths=card_paths,
                            plan_actual=plan_actual, decision=decision), tmp)
    return out_dir


# ---------------------------------------------------------------------- import


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(load_file(str(hf_dir / shard)))
        return tensors
    if any(hf_dir.glob("*.bin")):
        raise UnsupportedModelError(
            f"{hf_dir} holds pickled PyTorch weights (*.bin), which fmforge does not unpickle: "
            "convert them to safetensors first (load with transformers and "
            "`save_pretrained(dir, safe_serialization=True)`)")
    raise InputFileMissing(f"{hf_dir} has no model.safetensors (nor model.safetensors.index.json)")


def _copy_tokenizer(hf_dir: Path, dest: Path) -> None:
    if not (hf_dir / "tokenizer.json").is_file():
        try:
            from transformers import AutoTokenizer
        except ImportError:
            AutoTokenizer = None
        if AutoTokenizer is None:
            raise InputFileMissing(
                f"{hf_dir} has no tokenizer.json (a fast tokenizer), and transformers, which could "
                "convert its tokenizer, is not installed: `pip install fmforge[hf]`")
        try:
            tok = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(f"{hf_dir}: transformers cannot load its tokenizer ({exc})") from exc
        if not getattr(tok, "is_fast", False):
            raise UnsupportedModelError(f"{hf_dir}: its tokenizer has no fast (tokenizer.json) form")
        tok.save_pretrained(str(dest))
        return
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, dest / name)


def _run_config(name: str, root: Path, model_cfg: ModelConfig, tokenizer, eos: str | None,
                pad: str | None) -> RunConfig:
    vocab = int(model_cfg.vocab_size)
    if vocab < 260:
        raise UnsupportedModelError(f"vocab_size {vocab} is below the 260 a run's tokenizer needs")
    raw = {
        "name": name,
        "out_dir": str(root.resolve()),
        "data": {"sources": [{"name": "corpus", "paths": [DATA_PLACEHOLDER]}]},
        "tokenizer": {"vocab_size": min(max(tokenizer.get_vocab_size(), 260), vocab),
                      **({"eos_token": eos} if eos else {}), **({"pad_token": pad} if pad else {})},
        "model": model_cfg.model_dump(mode="json"),
    }
    return config_from_dict(raw)


def import_hf(hf_dir: str | Path, run_root: str | Path) -> RunDir:
    """A Llama checkpoint (config.json, safetensors, tokenizer files) becomes a new
    run directory whose step-0 checkpoint holds its weights in fmforge's layout."""
    from tokenizers import Tokenizer

    hf_dir, run_root = Path(hf_dir), Path(run_root)
    if not (hf_dir / "config.json").is_file():
        raise InputFileMissing(f"{hf_dir} has no config.json: expected a Hugging Face model directory")
    if run_root.exists() and any(run_root.iterdir()):
        raise FileExistsError(f"{run_root} already exists and is not empty: name a new run directory")
    try:
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{hf_dir / 'config.json'} is not valid JSON: {exc}") from exc
    model_cfg = model_config_from_hf(config, str(hf_dir / "config.json"))
    weights = _read_hf_weights(hf_dir)
    ours = from_hf_state_dict(weights, model_cfg, str(hf_dir))
    model = Transformer(model_cfg)
    for name, t in ours.items():  # every shape, checked before anything is written
        want = model.state_dict()[name].shape
        if tuple(t.shape) != tuple(want):
            raise UnsupportedModelError(f"{hf_dir}: {name} has shape {tuple(t.shape)}, but the "
                                        f"config implies {tuple(want)}")
    with torch.no_grad():
        model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_root.name) or "imported"
    with atomic_directory(run_root) as tmp:
        run = RunDir(tmp)
        run.tokenizer.mkdir()
        _copy_tokenizer(hf_dir, run.tokenizer)
        tok = Tokenizer.from_file(str(run.tokenizer / "tokenizer.json"))
        ids = special_token_ids(run.tokenizer, tok)
        eos_id = config.get("eos_token_id")
        eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
        eos = tok.id_to_token(eos_id) if isinstance(eos_id, int) else None
        eos = eos or (tok.id_to_token(ids["eos"]) if ids["eos"] is not None else None)
        pad = tok.id_to_token(ids["pad"]) if ids["pad"] is not None else None
        cfg = _run_config(name, run_root, model_cfg, tok, eos, pad)
        atomic_write_text(run.config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False,
                                                     allow_unicode=True))
        save_checkpoint(run.checkpoints, 0, model, None,
                        {"model": model_cfg.model_dump(mode="json"),
                         "imported_from": str(hf_dir.resolve())}, keep=1)
    return RunDir(run_root)
