"""Checkpoints: ``checkpoints/step-NNNNNN/`` with ``model.safetensors``,
``optimizer.pt`` and ``trainer_state.json``, each directory written atomically.

A directory counts as complete only when its ``trainer_state.json`` exists, and
that file is written last inside a temporary directory that is renamed into
place, so a run killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from fmforge.rundir import atomic_directory, atomic_write_json

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and (d / "trainer_state.json").is_file() and (d / "model.safetensors").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    cks = list_checkpoints(root)
    return cks[-1][1] if cks else None


def save_checkpoint(root: Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
                    keep: int) -> Path:
    final = checkpoint_dir(root, step)
    with atomic_directory(final) as tmp:
        # save_model de-duplicates the tied embedding/head tensor.
        save_model(model, str(Path(tmp) / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
        atomic_write_json(Path(tmp) / "trainer_state.json", {"step": step, **state})
    for _, old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "trainer_state.json").read_text(encoding="utf-8"))


def load_checkpoint(ckpt: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    ckpt = Path(ckpt)
    missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu",
                                             weights_only=True))
    return load_trainer_state(ckpt)
