"""The train/val split: a document goes to val iff a seeded hash of its text
falls below ``val_fraction``.

Hashing the text (not the path or the position) keeps the split stable when
files are added, removed or reordered, and puts identical texts on the same
side, so with ``dedup: none`` a repeated document cannot leak from train to val.

Guarantee: with ``val_fraction > 0`` and at least two documents, both splits are
non-empty. If no hash falls below the fraction, the document(s) with the
smallest hash move to val; if every hash does, the one(s) with the largest hash
move to train. Documents sharing that extreme hash (identical texts) move
together, unless that would empty the other split, in which case only the
first of them (by id) moves.
"""

from __future__ import annotations

from typing import Sequence

from fmforge.data.hashing import hash_u64

_SPLIT_PURPOSE = "fmforge.split"


def split_key(digest: bytes, seed: int) -> int:
    """The 64-bit split hash of a document whose text has this content digest."""
    return hash_u64(seed, _SPLIT_PURPOSE, digest)


def assign_val(keys: Sequence[int], val_fraction: float, ids: Sequence[str] | None = None) -> list[bool]:
    """``is_val`` for each document, from its ``split_key``; see the module docstring."""
    n = len(keys)
    threshold = int(val_fraction * 2**64)
    is_val = [k < threshold for k in keys]
    if val_fraction <= 0 or n < 2:
        return is_val
    order_ids = list(ids) if ids is not None else [""] * n
    n_val = sum(is_val)
    if n_val == 0:
        _move(is_val, keys, order_ids, to_val=True, extreme=min(keys))
    elif n_val == n:
        _move(is_val, keys, order_ids, to_val=False, extreme=max(keys))
    return is_val


def _move(is_val: list[bool], keys: Sequence[int], ids: list[str], *, to_val: bool, extreme: int) -> None:
    tied = [i for i, k in enumerate(keys) if k == extreme]
    if len(tied) == len(keys):  # all identical: moving all would empty the other split
        tied = [min(tied, key=lambda i: (ids[i], i))]
    for i in tied:
        is_val[i] = to_val
