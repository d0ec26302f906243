"""MinHash signatures and LSH band keys of documents, vectorised in numpy.

Two documents whose word 5-gram sets have Jaccard similarity ``s`` agree on one
min-hash value with probability ``s``; grouping ``rows`` values into a band and
hashing the band to one 64-bit key makes two documents share a band key with
probability ``s**rows``, and share at least one of ``bands`` keys with
probability ``1 - (1 - s**rows)**bands``. With FineWeb's 14 bands x 8 rows that
S-curve is 0.05 at s = 0.5, 0.5 at s = 0.69, 0.92 at s = 0.8 and 0.9996 at
s = 0.9, so the dedup stage only has to compare equal keys (``dedup.py``),
never documents.

Everything here is deterministic across processes and machines: words are
hashed with BLAKE2b and the permutations come from ``split.hash_u64`` (never
Python's salted ``hash()`` nor a numpy RNG stream, which may change between
numpy versions), so keys written by tasks on different machines agree.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from fmforge.config import MinHashConfig
from fmforge.data.split import hash_u64

# Words are maximal runs of Unicode word characters (letters, digits, "_") of
# the casefolded text: punctuation, spacing and case never make two copies of
# a text look different.
WORD = re.compile(r"\w+")

MERSENNE_61 = (1 << 61) - 1
_P = np.uint64(MERSENNE_61)
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK29 = np.uint64((1 << 29) - 1)
_U3, _U29, _U32, _U61 = (np.uint64(s) for s in (3, 29, 32, 61))
# Odd multiplier for the polynomial combination of word and row hashes.
_MULT = 0x9E3779B97F4A7C15
# Shingles per block of the (permutations x shingles) computation: the three
# uint64 work arrays (112 x 256 x 8 bytes = 229 KB each) stay in cache and are
# allocated once, which is most of the speed (fresh big arrays cost page faults).
_BLOCK = 256
# The word-hash cache is cleared beyond this many words so memory stays bounded
# on corpora with unbounded vocabularies (ids, numbers, URLs).
_WORD_CACHE_MAX = 1 << 20


def _powers(n: int) -> np.ndarray:
    """_MULT**k mod 2**64 for k < n."""
    out, v = [], 1
    for _ in range(n):
        out.append(v)
        v = (v * _MULT) & 0xFFFFFFFFFFFFFFFF
    return np.array(out, dtype=np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every input bit flips ~half the output
    bits, which a polynomial sum alone does not give."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


class _WordHashes(dict):
    """word -> 64-bit BLAKE2b, computed on first sight (most words repeat)."""

    def __missing__(self, word: str) -> int:
        h = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        self[word] = h
        return h


def words(text: str) -> list[str]:
    """The casefolded words that shingles are made of."""
    return WORD.findall(text.casefold())


class MinHasher:
    """Signatures of ``bands * rows`` min-hash values and one key per band.

    Permutation ``i`` is ``h_i(x) = (a_i * x + b_i) mod p`` with ``p = 2**61 - 1``
    over shingle hashes ``x < p``. ``a_i`` is drawn below ``2**32`` so that
    ``a*x`` splits, on ``x``'s 32-bit halves, into two products below ``2**64``
    (no uint64 overflow); the high product is moved into place and both are
    reduced with the Mersenne identity ``2**61 = 1 (mod p)``. The value kept is
    the single-fold residue: congruent to ``h_i(x)`` and in ``[0, p + 3]``, so
    still one-to-one in ``x`` (all min-hash needs); only residues 0..3 appear as
    p..p+3, which skips the cost of a full reduction per element.
    """

    def __init__(self, cfg: MinHashConfig):
        self.cfg = cfg
        self.ngram, self.bands, self.rows = cfg.ngram, cfg.bands, cfg.rows
        k = cfg.bands * cfg.rows
        a = [1 + hash_u64(cfg.seed, "minhash-a", str(i)) % 0xFFFFFFFF for i in range(k)]
        b = [hash_u64(cfg.seed, "minhash-b", str(i)) % MERSENNE_61 for i in range(k)]
        self.a = np.array(a, dtype=np.uint64)[:, None]  # (k, 1): broadcasts over shingles
        self.b = np.array(b, dtype=np.uint64)[:, None]
        self._word_pow = _powers(cfg.ngram)
        self._row_pow = _powers(cfg.rows)
        self._words = _WordHashes()
        self._work = [np.empty(k * _BLOCK, dtype=np.uint64) for _ in range(3)]

    def __reduce__(self) -> tuple[type, tuple[MinHashConfig]]:
        # Sent to workers (Ray) as its config alone: the rest is rebuilt there.
        return (MinHasher, (self.cfg,))

    # shingles ---------------------------------------------------------------

    def shingle_hashes(self, text: str) -> np.ndarray:
        """Hashes (< p) of the word n-grams of ``text``, one per position; a text
        with fewer than ``ngram`` words is one shingle of all its words."""
        ws = words(text)
        if len(self._words) > _WORD_CACHE_MAX:
            self._words.clear()
        w = np.fromiter(map(self._words.__getitem__, ws), dtype=np.uint64, count=len(ws))
        n = min(self.ngram, len(w))
        m = len(w) - n + 1
        # Polynomial over the n word hashes of each window (mod 2**64), then
        # mixed: order-sensitive, and one changed word changes the whole hash.
        h = np.zeros(m, dtype=np.uint64)
        for k in range(n):
            h += w[k : k + m] * self._word_pow[k]
        if n < self.ngram:  # short text: keep its length in the hash so "a" != "a a" by construction
            h += np.uint64(n)
        return _mix64(h) % _P

    # min-hash -----------------------------------------------------------------

    def _permute_block(self, x: np.ndarray) -> np.ndarray:
        """(k, len(x)) values h_i(x_j), using the preallocated work arrays."""
        m = len(x)
        t, u, v = (w[: len(self.a) * m].reshape(-1, m) for w in self._work)  # contiguous
        x0 = (x & _MASK32)[None, :]
        x1 = (x >> _U32)[None, :]  # < 2**29
        # a*x1*2**32 (mod p): a*x1 < 2**61 = hi*2**29 + lo -> hi*2**61 + lo*2**32 = hi + lo*2**32
        np.multiply(self.a, x1, out=t)
        np.right_shift(t, _U29, out=u)
        t &= _MASK29
        t <<= _U32
        t += u
        # + a*x0 (< 2**64), folded once: (y & p) + (y >> 61)
        np.multiply(self.a, x0, out=u)
        np.bitwise_and(u, _P, out=v)
        t += v
        u >>= _U61
        t += u
        t += self.b  # t < 2**63 here
        np.bitwise_and(t, _P, out=u)
        t >>= _U61
        t += u
        return t

    def signatures(self, shingles: list[np.ndarray]) -> np.ndarray:
        """(len(shingles), bands*rows) min-hash signatures; each array must be non-empty."""
        k = self.bands * self.rows
        sig = np.full((len(shingles), k), np.iinfo(np.uint64).max, dtype=np.uint64)
        if not shingles:
            return sig
        lengths = np.array([len(s) for s in shingles])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        x = np.concatenate(shingles)
        # Blocks of the concatenated shingles; each block's columns are reduced
        # per document (reduceat over the document starts inside the block).
        for s in range(0, len(x), _BLOCK):
            e = min(s + _BLOCK, len(x))
            d0 = int(np.searchsorted(starts, s, side="right")) - 1
            d1 = int(np.searchsorted(starts, e, side="left"))
            local = np.maximum(starts[d0:d1], s) - s
            vals = self._permute_block(x[s:e])
            mins = np.minimum.reduceat(vals, local, axis=1)
            np.minimum(sig[d0:d1], mins.T, out=sig[d0:d1])
        return sig

    def keys_of_signatures(self, sig: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: each band's ``rows`` values hashed to one key."""
        n = sig.shape[0]
        grouped = sig.reshape(n, self.bands, self.rows)
        keys = (grouped * self._row_pow).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64
        return _mix64(keys)

    def band_keys(self, text: str) -> np.ndarray:
        """uint64, shape (bands,): one key per band of ``rows`` min-hash values."""
        return self.band_keys_batch([text])[0]

    def band_keys_batch(self, texts: list[str]) -> np.ndarray:
        """(len(texts), bands) keys; faster than one call per text for short texts."""
        sig = self.signatures([self.shingle_hashes(t) for t in texts])
        return self.keys_of_signatures(sig)


def detection_probability(similarity: float, bands: int, rows: int) -> float:
    """The chance two documents of Jaccard ``similarity`` share a band key."""
    return 1.0 - (1.0 - similarity**rows) ** bands
