"""The training mixture in The Pile's "epochs" convention, and the shuffle.

A source with weight ``w`` contributes each of its training documents
``floor(w)`` times, plus once more when a seeded hash draw of the document is
below ``frac(w)``: weight 2.0 doubles a source, 0.5 keeps about half of it. The
draw is per document, so the expected share is exact and the result does not
depend on the other documents. Only the train split is mixed; val stays the
natural held-out distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, TypeVar

from fmforge.data.hashing import hash_u64, hash_uniform


class Mixable(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def digest(self) -> bytes: ...
    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Mixable)


def copies(weight: float, draw: float) -> int:
    """How many times a document with this uniform ``draw`` enters the mix."""
    whole = math.floor(weight)
    return whole + (1 if draw < weight - whole else 0)


@dataclass
class MixStats:
    documents_before: int = 0
    bytes_before: int = 0
    documents_after: int = 0
    bytes_after: int = 0
    share_of_train_bytes: float = 0.0


def mix(items: Sequence[T], weights: Mapping[str, float], seed: int) -> tuple[list[tuple[T, int]], dict[str, MixStats]]:
    """Repeat/subsample ``items`` by source weight.

    Returns ``(item, copy_index)`` pairs (unshuffled) and per-source statistics.
    """
    out: list[tuple[T, int]] = []
    stats: dict[str, MixStats] = {name: MixStats() for name in weights}
    for item in items:
        st = stats[item.source]
        st.documents_before += 1
        st.bytes_before += item.nbytes
        n = copies(weights[item.source], hash_uniform(seed, "fmforge.mix", item.id, item.digest))
        for c in range(n):
            out.append((item, c))
        st.documents_after += n
        st.bytes_after += n * item.nbytes
    total = sum(s.bytes_after for s in stats.values())
    for s in stats.values():
        s.share_of_train_bytes = s.bytes_after / total if total else 0.0
    return out, stats


def shuffle(pairs: Sequence[tuple[T, int]], seed: int, purpose: str = "fmforge.shuffle") -> list[tuple[T, int]]:
    """A seeded shuffle that sorts by a hash of (id, digest, copy): independent of input order."""
    return sorted(
        pairs,
        key=lambda p: (hash_u64(seed, purpose, p[0].id, p[0].digest, str(p[1])), p[0].id, p[1]),
    )
