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

The data stage sees its documents as a stream spread over tasks, so the rule is
computed by ``SplitGuard`` from running counts and extremes; ``assign_val`` is
the same rule over a list.

The draws come from ``hash_u64``, a keyed BLAKE2b of a document's own identity,
never from a running RNG; mixture repeats and the shuffle (``scatter.py``),
the token-budget mixture and MinHash's permutations use it too. A document's
fate therefore does not depend on which other documents exist or in what order
they were read, and changing ``seed`` changes every draw.
"""

from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

_SPLIT_PURPOSE = "fmforge.split"
_SCALE = float(2**64)


def hash_u64(seed: int, purpose: str, *parts: bytes | str) -> int:
    """A 64-bit integer from ``parts``, keyed by ``seed`` and separated by ``purpose``."""
    h = hashlib.blake2b(
        digest_size=8, key=str(seed).encode("ascii"), person=purpose.encode("ascii")[:16]
    )
    for part in parts:
        b = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return int.from_bytes(h.digest(), "little")


def hash_uniform(seed: int, purpose: str, *parts: bytes | str) -> float:
    """A deterministic draw in [0, 1)."""
    return hash_u64(seed, purpose, *parts) / _SCALE


def split_key(digest: bytes, seed: int) -> int:
    """The 64-bit split hash of a document whose text has this content digest."""
    return hash_u64(seed, _SPLIT_PURPOSE, digest)


def split_threshold(val_fraction: float) -> int:
    return int(val_fraction * 2**64)


class SplitGuard:
    """Counts a stream of split keys and says which documents must change side.

    ``add(key, order, ref)``: ``order`` breaks ties among identical keys (the
    document id), ``ref`` is what ``moves`` returns to name the document.
    """

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction
        self.threshold = split_threshold(val_fraction)
        self.n = 0
        self.n_val = 0
        self._min: tuple[int, list[tuple[str, Hashable]]] | None = None
        self._max: tuple[int, list[tuple[str, Hashable]]] | None = None

    def add(self, key: int, order: str, ref: Hashable) -> bool:
        """Record one document; return its natural side (True: val)."""
        self.n += 1
        is_val = key < self.threshold
        self.n_val += is_val
        if self._min is None or key < self._min[0]:
            self._min = (key, [(order, ref)])
        elif key == self._min[0]:
            self._min[1].append((order, ref))
        if self._max is None or key > self._max[0]:
            self._max = (key, [(order, ref)])
        elif key == self._max[0]:
            self._max[1].append((order, ref))
        return is_val

    def moves(self) -> tuple[set[Hashable], set[Hashable]]:
        """``(to_val, to_train)``: the refs whose side the guarantee changes."""
        if self.val_fraction <= 0 or self.n < 2:
            return set(), set()
        if self.n_val == 0 and self._min is not None:
            return self._tied(self._min[1]), set()
        if self.n_val == self.n and self._max is not None:
            return set(), self._tied(self._max[1])
        return set(), set()

    def _tied(self, tied: list[tuple[str, Hashable]]) -> set[Hashable]:
        if len(tied) == self.n:  # all identical: moving all would empty the other split
            return {min(tied, key=lambda t: t[0])[1]}
        return {ref for _, ref in tied}


def assign_val(keys: Sequence[int], val_fraction: float, ids: Sequence[str] | None = None) -> list[bool]:
    """``is_val`` for each document, from its ``split_key``; see the module docstring."""
    guard = SplitGuard(val_fraction)
    order_ids = list(ids) if ids is not None else [""] * len(keys)
    is_val = [guard.add(k, order_ids[i], i) for i, k in enumerate(keys)]
    to_val, to_train = guard.moves()
    for i in to_val:
        is_val[i] = True  # type: ignore[index]
    for i in to_train:
        is_val[i] = False  # type: ignore[index]
    return is_val
