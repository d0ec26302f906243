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


def open_tokens(run: RunDir, split: str) -> np.ndarray:
    meta = load_meta(run)
    path = run.tokens / f"{split}.bin"
    if meta.get(f"{split}_tokens", 0) == 0:
        return np.zeros(0, dtype=np.dtype(meta["dtype"]))
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


