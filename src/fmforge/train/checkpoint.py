"""Checkpoints: ``checkpoints/step-NNNNNN/``, each directory written atomically.

One process (and DDP, whose rank 0 holds the whole model) writes
``model.safetensors``, ``optimizer.pt`` and ``trainer_state.json``. FSDP writes
the sharded model and optimizer with ``torch.distributed.checkpoint`` (DCP) into
``dcp/``, every rank its own shards, so a checkpoint of a model that fits on no
single GPU never gathers on one; DCP reshards on load, so a run resumes on a
different number of processes (or on one, without FSDP).
``fmforge checkpoint consolidate`` turns ``dcp/`` into one ``model.safetensors``.

A directory counts as complete only when its ``trainer_state.json`` exists; that
file is written last inside a temporary directory, everything is fsynced, and
the directory is renamed into place, so a run killed (or a machine that loses
power) mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from fmforge.errors import UserError
from fmforge.rundir import (
    ArtifactMissingError,
    atomic_directory,
    atomic_write_json,
    clear_interrupted_replacement,
    fsync_dir,
    fsync_tree,
    replace_directory,
    replaced_copies,
    standard_permissions,
    standard_permissions_of_file,
)

class CheckpointFormatError(UserError, ValueError):
    """A sound checkpoint that this way of training cannot resume (not damage)."""


class CheckpointReadError(RuntimeError):
    """Reading a sharded checkpoint failed (DCP's own exception, made an Exception)."""


STEP_DIR = re.compile(r"^step-(\d{6,})$")
DCP_DIR = "dcp"


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def _has_weights(d: Path) -> bool:
    return (d / "model.safetensors").is_file() or (d / DCP_DIR / ".metadata").is_file()


def _complete(d: Path) -> bool:
    return (d / "trainer_state.json").is_file() and _has_weights(d)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints, oldest first. A step whose directory is missing
    because a save of that step again was killed between moving the old copy
    aside and renaming the new one into place is listed at its old copy
    (``.step-N.old-*``), the only complete one on disk; the next save of that
    step renames it back."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {}
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and _complete(d):
            found[int(m.group(1))] = d
    for d in root.glob(".step-*.old-*"):
        m = STEP_DIR.match(d.name[1:].split(".old-")[0])
        if m and int(m.group(1)) not in found and not (root / m.group(0)).exists():
            old = next((c for c in replaced_copies(root / m.group(0)) if _complete(c)), None)
            if old is not None:
                found[int(m.group(1))] = old
    return sorted(found.items())


def latest_checkpoint(root: Path) -> Path | None:
    cks = list_checkpoints(root)
    return cks[-1][1] if cks else None


def prune_checkpoints(root: Path, keep: int, protect: set[int] = frozenset()) -> None:
    """Keep the newest ``keep`` checkpoints, and those whose step is in ``protect``
    (the step where a WSD decay began, from which a longer run continues)."""
    for step, old in list_checkpoints(root)[:-keep]:
        if step not in protect:
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(root: Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict[str, Any],
                    keep: int, protect: set[int] = frozenset()) -> Path:
    """One process: weights (safetensors), optimizer state and trainer state."""
    final = checkpoint_dir(root, step)
    with atomic_directory(final) as tmp:
        # save_model de-duplicates the tied embedding/head tensor.
        save_model(model, str(Path(tmp) / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
        atomic_write_json(Path(tmp) / "trainer_state.json", {"step": step, **state})
    prune_checkpoints(root, keep, protect)
    return final


def save_sharded_checkpoint(root: Path, step: int, model: torch.nn.Module,
                            optimizer: torch.optim.Optimizer, state: dict[str, Any],
                            keep: int, is_main: bool, barrier,
                            protect: set[int] = frozenset()) -> Path:
    """Every rank writes its shards through DCP into a temporary directory that
    rank 0 created; rank 0 then adds the trainer state, fsyncs and renames."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoint_dir(root, step)
    tmp = Path(root) / f".{final.name}.tmp-sharded"
    if is_main:
        # A copy of this step left aside by a killed save goes back into place
        # (it may be the only complete one); partial copies go.
        clear_interrupted_replacement(final)
        tmp.mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / DCP_DIR))
    barrier()
    if is_main:
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **state})
        standard_permissions(tmp)
        fsync_tree(tmp)
        replace_directory(tmp, final)
        prune_checkpoints(root, keep, protect)
    barrier()
    return final


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "trainer_state.json").read_text(encoding="utf-8"))


def load_checkpoint(ckpt: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) into ``model``, which may be a plain
    module or one sharded by FSDP; either checkpoint format works for either.

    A sharded checkpoint that was consolidated holds both ``dcp/`` and
    ``model.safetensors``; its optimizer state lives only in ``dcp/``, so resuming
    it (an optimizer given) reads ``dcp/``, on any number of processes."""
    ckpt = Path(ckpt)
    single_file = (ckpt / "model.safetensors").is_file()
    sharded_too = (ckpt / DCP_DIR / ".metadata").is_file()
    if single_file and not _is_sharded_module(model) and not (optimizer is not None and sharded_too):
        load_model(model, str(ckpt / "model.safetensors"), strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu",
                                                 weights_only=True))
    else:
        _load_through_dcp(ckpt, model, optimizer)
    return load_trainer_state(ckpt)


def checkpoint_damage(ckpt: Path) -> str | None:
    """What is damaged in a checkpoint that ``list_checkpoints`` counts as complete,
    or None when every file it holds is whole. Checks structure and sizes only
    (what a killed copy, a full disk or a bad sector leaves), never by loading
    tensors, so it tells damage apart from a failure of the loading itself (out of
    memory, a bug): only damage may set a checkpoint aside. An I/O error while
    checking propagates: an unreadable disk is not a damaged checkpoint."""
    ckpt = Path(ckpt)
    try:
        json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"trainer_state.json is not valid JSON ({exc})"
    except FileNotFoundError:
        return "trainer_state.json is missing"
    sharded = ckpt / DCP_DIR
    if (sharded / ".metadata").is_file():
        found = _dcp_damage(sharded)
        if found:
            return found
    if (ckpt / "model.safetensors").is_file():
        found = _safetensors_damage(ckpt / "model.safetensors")
        if found:
            return found
        if not (sharded / ".metadata").is_file():
            if not (ckpt / "optimizer.pt").is_file():
                return "optimizer.pt is missing"
            return _zip_damage(ckpt / "optimizer.pt")
    return None


def _safetensors_damage(path: Path) -> str | None:
    """The file must be exactly its 8-byte header length, the JSON header, and the
    tensor data that header describes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"{path.name} is truncated: its header alone needs {n + 8:,} bytes, the file has {size:,}"
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} has a corrupt header"
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} has a corrupt header"
    if size != 8 + n + end:
        return f"{path.name} has {size:,} bytes where its header describes {8 + n + end:,}"
    return None


def _zip_damage(path: Path) -> str | None:
    """``torch.save`` writes a zip archive with a CRC per member: check them all."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        return f"{path.name} is not a whole archive ({exc})"
    return f"{path.name} is corrupt (member {bad} fails its CRC)" if bad else None


def _dcp_damage(sharded: Path) -> str | None:
    """Every byte range that ``dcp/.metadata`` points at must exist."""
    import pickle

    from torch.distributed.checkpoint import FileSystemReader

    try:
        meta = FileSystemReader(str(sharded)).read_metadata()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
        return f"{DCP_DIR}/.metadata is corrupt ({type(exc).__name__}: {exc})"
    needed: dict[str, int] = {}
    for info in (meta.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, end in sorted(needed.items()):
        path = sharded / name
        if not path.is_file():
            return f"{DCP_DIR}/{name} is missing"
        if path.stat().st_size < end:
            return f"{DCP_DIR}/{name} is truncated ({path.stat().st_size:,} of {end:,} bytes)"
    return None


def _is_sharded_module(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _load_through_dcp(ckpt: Path, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer | None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if (ckpt / DCP_DIR / ".metadata").is_file():
        model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else [])
        want = {"model": model_sd} | ({"optim": optim_sd} if optimizer is not None else {})
        with warnings.catch_warnings():
            # One process reading a sharded checkpoint is intended (resume on fewer
            # processes, inference, consolidation); DCP warns about it regardless.
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            try:
                dcp.load(want, checkpoint_id=str(ckpt / DCP_DIR))
            except CheckpointException as exc:
                # DCP's exception derives from BaseException, which no ``except
                # Exception`` (the resume's damage check, the CLI) would see.
                raise CheckpointReadError(f"reading {ckpt / DCP_DIR} failed: {exc}") from exc
        set_state_dict(model, optimizer if optimizer is not None else [],
                       model_state_dict=want["model"],
                       optim_state_dict=want.get("optim", {}))
        return
    raise CheckpointFormatError(
        f"{ckpt} was written by one process (or DDP) and holds no sharded checkpoint, so "
        "FSDP cannot resume it: resume with train.parallel=ddp (or on one process); the "
        "checkpoint is untouched"
    )


def consolidate(ckpt: Path, model: torch.nn.Module) -> Path:
    """Write ``model.safetensors`` for a sharded (DCP) checkpoint, loading it into
    the plain, single-process ``model`` first. Returns the file written."""
    ckpt = Path(ckpt)
    if not (ckpt / DCP_DIR / ".metadata").is_file():
        raise ArtifactMissingError(f"{ckpt} has no sharded checkpoint ({DCP_DIR}/): nothing to consolidate")
    _load_through_dcp(ckpt, model, None)
    out = ckpt / "model.safetensors"
    tmp = ckpt / ".model.safetensors.tmp"
    save_model(model, str(tmp))
    standard_permissions_of_file(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    fsync_dir(ckpt)
    return out
