"""The training mixture in The Pile's "epochs" convention, and the shuffle.

A source with weight ``w`` contributes each of its training documents
``floor(w)`` times, plus once more when a seeded hash draw of the document is
below ``frac(w)``: weight 2.0 doubles a source, 0.5 keeps about half of it. The
draw is per document, so the expected share is exact and the result does not
depend on the other documents. Only the train split is mixed; val stays the
natural held-out distribution.

Each copy then gets a seeded shuffle key, a hash of the document and the copy
number: sorting by it is one shuffle of the whole split, whatever order the
documents were read in (the data stage's scatter and gather phases do that).
"""

from __future__ import annotations

import math

from fmforge.data.hashing import hash_u64, hash_uniform

SHUFFLE_PURPOSE = {"train": "fmforge.shuffle", "val": "fmforge.shuffle.val"}


def copies(weight: float, draw: float) -> int:
    """How many times a document with this uniform ``draw`` enters the mix."""
    whole = math.floor(weight)
    return whole + (1 if draw < weight - whole else 0)


def document_copies(weight: float, seed: int, doc_id: str, digest: bytes) -> int:
    """How many times this training document enters the mix at ``weight``."""
    return copies(weight, hash_uniform(seed, "fmforge.mix", doc_id, digest))


def shuffle_key(seed: int, split: str, doc_id: str, digest: bytes, copy: int) -> int:
    """The 64-bit key that orders copy ``copy`` of a document within ``split``."""
    return hash_u64(seed, SHUFFLE_PURPOSE[split], doc_id, digest, str(copy))
