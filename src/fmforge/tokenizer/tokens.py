"""Reading the token files of ``tokens/``: ``meta.json`` and each split's tokens
(uint16 when the vocabulary fits, else uint32).

A split is stored as several files, one per encoded unit: ``tokens/{split}/NNNNN.bin``,
listed in order with their token counts in ``meta.json``'s ``files``. ``open_tokens``
maps each file and reads them as one sequence (``SplitTokens``) without copying
them into one. A run tokenized before the split was kept in pieces holds one
``tokens/{split}.bin`` and no ``files``; it opens the same way.
"""

from __future__ import annotations

import functools
import operator
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmforge.errors import UserError
from fmforge.rundir import RunDir

SPLITS = ("train", "val")
REBUILD = "rebuild the token files with `fmforge tokenize CONFIG --force`"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def load_meta(run: RunDir) -> dict:
    return run.tokens_meta()


class DamagedTokensError(UserError, ValueError):
    """A token file that does not hold what ``meta.json`` says it holds."""


# Memory maps kept open at once: each holds its file open, and a split of a large
# corpus has thousands of files (one per encoded unit) where many systems allow a
# process 1,024. A training window reads one or two files; reopening one costs
# tens of microseconds.
MAX_OPEN_FILES = 64


class SplitTokens:
    """A token split held in several arrays (memory-mapped files), read as their
    concatenation: ``len``, ``dtype``, ``tokens[i]``, ``tokens[a:b]`` (a window
    across files is copied into one array; one inside a file is a view of it) and
    ``np.asarray(tokens)``, which concatenates (for a small split, like val).

    A part is an array, or a function that opens one (with ``lengths`` giving the
    sizes): those are opened when first read and at most ``MAX_OPEN_FILES`` of them
    stay open, the least recently read closed first."""

    ndim = 1

    def __init__(self, parts: Sequence[Any], dtype: Any, paths: Sequence[Path] | None = None,
                 lengths: Sequence[int] | None = None):
        self.dtype = np.dtype(dtype)
        self.parts = list(parts)
        self.paths = list(paths) if paths is not None else None
        sizes = list(lengths) if lengths is not None else [len(p) for p in self.parts]
        # starts[k]: the index of file k's first token; starts[-1]: the total
        self._starts = np.zeros(len(self.parts) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._starts[1:])
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def _part(self, k: int) -> np.ndarray:
        part = self.parts[k]
        if not callable(part):
            return part
        arr = self._open.get(k)
        if arr is None:
            arr = self._open[k] = part()
            if len(self._open) > MAX_OPEN_FILES:
                self._open.popitem(last=False)  # its map closes once no view of it is left
        else:
            self._open.move_to_end(k)
        return arr

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def _file_of(self, i: int) -> int:
        # the last file starting at or before i: never an empty one, since the file
        # after an empty file starts at the same index
        return int(np.searchsorted(self._starts, i, side="right")) - 1

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self._take(np.arange(start, stop, step))
            return self._window(start, stop)
        try:
            i = operator.index(key)
        except TypeError:
            return self._take(np.asarray(key))
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a split of {n} tokens")
        i %= n
        k = self._file_of(i)
        return self._part(k)[i - self._starts[k]]

    def _window(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first, last = self._file_of(start), self._file_of(stop - 1)
        s = self._starts
        if first == last:
            return self._part(first)[start - s[first]: stop - s[first]]
        return np.concatenate([self._part(k)[max(start, s[k]) - s[k]: min(stop, s[k + 1]) - s[k]]
                               for k in range(first, last + 1)])

    def _take(self, index: np.ndarray) -> np.ndarray:
        if index.dtype.kind not in "iu":
            raise TypeError(f"a token split is indexed by integers or slices, not {index.dtype}")
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"an index is out of range for a split of {n} tokens")
        index = index % max(n, 1)
        files = np.searchsorted(self._starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for k in np.unique(files).tolist():
            mine = files == k
            out[mine] = self._part(k)[index[mine] - self._starts[k]]
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = np.empty(len(self), dtype=self.dtype)
        for k in range(len(self.parts)):  # one file at a time: never all of them open
            whole[self._starts[k]: self._starts[k + 1]] = self._part(k)
        return whole.astype(dtype if dtype is not None else self.dtype, copy=False)

    def __repr__(self) -> str:
        return f"SplitTokens({len(self):,} {self.dtype.name} tokens in {len(self.parts)} files)"


def split_files(meta: dict, split: str) -> list[tuple[str, int]]:
    """(path under ``tokens/``, token count) of each file of ``split``, in order."""
    if "files" in meta:
        return [(f["path"], int(f["tokens"])) for f in meta["files"].get(split, [])]
    expected = int(meta.get(f"{split}_tokens", 0))  # the one-file layout of earlier runs
    return [(f"{split}.bin", expected)] if expected else []


def _map_file(path: Path, expected: int, dtype: np.dtype, split: str, meta_path: Path) -> Any:
    """A function that memory-maps the file, after checking that it holds exactly
    the tokens ``meta.json`` records: a file cut short (a full disk, a copy that
    stopped) would otherwise train on less, or not open at all."""
    if expected == 0:
        return np.zeros(0, dtype=dtype)
    if not path.is_file():
        raise DamagedTokensError(f"{path} is missing, though {meta_path} records "
                                 f"{expected} {split} tokens in it: {REBUILD}")
    size = path.stat().st_size
    if size != expected * dtype.itemsize:
        what = (f"{size} bytes, not a whole number of {dtype.name} tokens: it is truncated mid-token"
                if size % dtype.itemsize else f"{size // dtype.itemsize} {dtype.name} tokens")
        raise DamagedTokensError(
            f"{path} holds {what}, but {meta_path} records {expected} "
            f"({expected * dtype.itemsize} bytes); the file is truncated or damaged: {REBUILD}")
    return functools.partial(np.memmap, path, dtype=dtype, mode="r")


def open_tokens(run: RunDir, split: str) -> SplitTokens:
    """The tokens of ``split``: each of its files memory-mapped and checked against
    ``meta.json``, read as one sequence."""
    meta = load_meta(run)
    dtype = np.dtype(meta["dtype"])
    meta_path = run.tokens / "meta.json"
    files = split_files(meta, split)
    expected = int(meta.get(f"{split}_tokens", 0))
    listed = sum(n for _, n in files)
    if listed != expected:
        raise DamagedTokensError(f"{meta_path} lists {split} files of {listed} tokens in all but records "
                                 f"{expected} {split} tokens: {REBUILD}")
    paths = [run.tokens / rel for rel, _ in files]
    return SplitTokens([_map_file(p, n, dtype, split, meta_path) for p, (_, n) in zip(paths, files)], dtype,
                       paths, lengths=[n for _, n in files])
