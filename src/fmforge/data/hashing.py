"""Seeded, order-independent hash draws.

Split membership, mixture repeats and shuffling all come from a keyed BLAKE2b
of a document's own identity, never from a running RNG, so a document's fate
does not depend on which other documents exist or in what order they were read.
Changing ``seed`` changes every draw.
"""

from __future__ import annotations

import hashlib

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
