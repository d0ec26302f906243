"""MinHash keys recomputed in exact Python integers from the algorithm's public
definition (BLAKE2b word hashes, a polynomial mod 2**64, splitmix64's published
finaliser, (a*x + b) mod 2**61-1, the rows of a band combined the same way):
the vectorised uint64 code must give the very same numbers, since keys written
by tasks on different machines and versions are compared with each other."""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np
import pytest

from fmforge.config import MinHashConfig
from fmforge.data.minhash import MinHasher, words
from fmforge.data.split import hash_u64

M64 = (1 << 64) - 1
P = (1 << 61) - 1
MULT = 0x9E3779B97F4A7C15  # the golden-ratio multiplier, odd


def splitmix64_finaliser(z: int) -> int:
    # Steele, Lea and Flood's splitmix64, its published constants.
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def word_hash(w: str) -> int:
    return int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")


def shingles_exact(text: str, n: int) -> list[int]:
    ws = [word_hash(w) for w in re.findall(r"\w+", text.casefold())]
    k = min(n, len(ws))
    out = []
    for i in range(len(ws) - k + 1):
        h = sum(ws[i + j] * pow(MULT, j, 1 << 64) for j in range(k)) & M64
        if k < n:
            h = (h + k) & M64
        out.append(splitmix64_finaliser(h) % P)
    return out


def keys_exact(text: str, cfg: MinHashConfig) -> list[int]:
    xs = shingles_exact(text, cfg.ngram)
    k = cfg.bands * cfg.rows
    a = [1 + hash_u64(cfg.seed, "minhash-a", str(i)) % 0xFFFFFFFF for i in range(k)]
    b = [hash_u64(cfg.seed, "minhash-b", str(i)) % P for i in range(k)]
    sig = [min((a[i] * x + b[i]) % P for x in xs) for i in range(k)]
    keys = []
    for band in range(cfg.bands):
        rows = sig[band * cfg.rows:(band + 1) * cfg.rows]
        keys.append(splitmix64_finaliser(sum(v * pow(MULT, r, 1 << 64) for r, v in enumerate(rows)) & M64))
    return keys


TEXTS = [
    "",
    "one",
    "Two Words",
    "four words in all",
    "exactly five words are here",
    "The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
    "déjà vu: ÜBER straße, 東京 and 42 numbers_with_underscores!",
]


@pytest.mark.parametrize("cfg", [MinHashConfig(), MinHashConfig(ngram=3, bands=4, rows=3, seed=7)],
                         ids=["fineweb", "small"])
def test_band_keys_equal_the_exact_integer_computation(cfg):
    hasher = MinHasher(cfg)
    rng = random.Random(5)
    long = " ".join(f"w{rng.randrange(400)}" for _ in range(600))  # several blocks of 256 shingles
    texts = TEXTS + [long]
    for t in texts:
        # Residues 0..3 may appear as p..p+3 (documented): compare mod p.
        got = [int(v) % P for v in hasher.shingle_hashes(t)]
        assert got == shingles_exact(t, cfg.ngram), t
        assert [int(k) for k in hasher.band_keys(t)] == keys_exact(t, cfg), t
    batch = hasher.band_keys_batch(texts)
    assert [[int(k) for k in row] for row in batch] == [keys_exact(t, cfg) for t in texts]


def test_words_are_casefolded_runs_of_word_characters():
    assert words("Straße, ÉCOLE-x_y 3.14!") == ["strasse", "école", "x_y", "3", "14"]


def test_the_word_cache_is_cleared_past_its_bound(monkeypatch):
    import fmforge.data.minhash as minhash

    monkeypatch.setattr(minhash, "_WORD_CACHE_MAX", 3)
    hasher = MinHasher(MinHashConfig())
    hasher.shingle_hashes("a b c d")
    assert len(hasher._words) == 4
    hasher.shingle_hashes("e")  # more than 3 cached: cleared first
    assert set(hasher._words) == {"e"}
    hasher.shingle_hashes("f g")
    assert set(hasher._words) == {"e", "f", "g"}
    hasher.shingle_hashes("h")  # exactly 3 cached is not beyond the bound: kept
    assert set(hasher._words) == {"e", "f", "g", "h"}
    # The keys do not depend on what the cache held.
    assert np.array_equal(hasher.band_keys("a b c d e f"), MinHasher(MinHashConfig()).band_keys("a b c d e f"))


def test_an_empty_list_of_documents_has_no_signatures():
    sig = MinHasher(MinHashConfig()).signatures([])
    assert sig.shape == (0, 112) and sig.dtype == np.uint64
