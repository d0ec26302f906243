"""Reading the token files of ``tokens/``: ``meta.json`` and the memory-mapped
``train.bin``/``val.bin`` (uint16 when the vocabulary fits, else uint32)."""

from __future__ import annotations

import numpy as np

from fmforge.rundir import RunDir

SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def load_meta(run: RunDir) -> dict:
    return run.tokens_meta()


class DamagedTokensError(ValueError):
    """A token file that does not hold what ``meta.json`` says it holds."""


def open_tokens(run: RunDir, split: str) -> np.ndarray:
    """The tokens of ``split``, memory-mapped, after checking that the file holds
    exactly the number of tokens ``meta.json`` records: a file cut short (a full
    disk, a copy that stopped) would otherwise train on less, or not open at all."""
    meta = load_meta(run)
    path = run.tokens / f"{split}.bin"
    dtype = np.dtype(meta["dtype"])
    expected = int(meta.get(f"{split}_tokens", 0))
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    redo = "rebuild the token files with `fmforge tokenize CONFIG --force`"
    if not path.is_file():
        raise DamagedTokensError(f"{path} is missing, though {run.tokens / 'meta.json'} records "
                                 f"{expected} {split} tokens: {redo}")
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        what = (f"{size} bytes, not a whole number of {dtype.name} tokens: it is truncated mid-token"
                if size % dtype.itemsize else f"{size // dtype.itemsize} {dtype.name} tokens")
        raise DamagedTokensError(
            f"{path} holds {what}, but {run.tokens / 'meta.json'} records {expected} "
            f"({expected * dtype.itemsize} bytes); the file is truncated or damaged: {redo}")
    return np.memmap(path, dtype=dtype, mode="r")


