"""MinHash signatures against facts computed outside the vectorised code:
Python big-integer arithmetic, Jaccard similarity of explicit shingle sets, and
the LSH S-curve at hand-computed points."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from fmforge.config import MinHashConfig
from fmforge.data.minhash import MERSENNE_61, MinHasher, detection_probability


@pytest.fixture(scope="module")
def hasher() -> MinHasher:
    return MinHasher(MinHashConfig())


def _text(rng: random.Random, n: int, vocab_size: int = 3000) -> str:
    return " ".join(f"w{rng.randrange(vocab_size)}" for _ in range(n))


def _shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    ws = re.findall(r"\w+", text.lower())
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def test_signature_is_min_of_universal_hashes_in_exact_arithmetic(hasher: MinHasher) -> None:
    # Python integers never overflow: min over shingles of (a*x + b) mod p,
    # computed directly, must match the split-and-fold uint64 version.
    rng = random.Random(1)
    texts = [_text(rng, n) for n in (1, 4, 5, 6, 300, 700)]  # 700 words spans several blocks
    shingles = [hasher.shingle_hashes(t) for t in texts]
    sig = hasher.signatures(shingles)
    a = [int(v) for v in hasher.a[:, 0]]
    b = [int(v) for v in hasher.b[:, 0]]
    for row, xs in zip(sig, shingles):
        xs = [int(x) for x in xs]
        assert all(x < MERSENNE_61 for x in xs)
        expected = [min((ai * x + bi) % MERSENNE_61 for x in xs) for ai, bi in zip(a, b)]
        assert [int(v) % MERSENNE_61 for v in row] == expected
        assert all(int(v) <= MERSENNE_61 + 3 for v in row)  # single-fold residue bound


def test_shingles_are_casefolded_word_5grams(hasher: MinHasher) -> None:
    assert len(hasher.shingle_hashes("one two three four five six seven")) == 3
    # Case, punctuation and spacing do not matter; word order does.
    a = hasher.band_keys("The quick brown fox jumps over the lazy dog")
    b = hasher.band_keys("the QUICK, brown fox -- jumps over\nthe lazy dog!")
    c = hasher.band_keys("the quick brown fox jumps over the dog lazy")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_short_texts_are_one_shingle_and_distinct(hasher: MinHasher) -> None:
    assert len(hasher.shingle_hashes("red fox")) == 1
    assert len(hasher.shingle_hashes("")) == 1
    keys = [hasher.band_keys(t) for t in ("red fox", "red dog", "red", "red red", "fox red")]
    # different short texts share no band key at all
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            assert not np.any(keys[i] == keys[j]), (i, j)


def test_signature_agreement_estimates_jaccard(hasher: MinHasher) -> None:
    # Planted overlap: B keeps A's first 200 words and replaces the last 100.
    rng = random.Random(2)
    base = _text(rng, 300).split()
    other = base[:200] + _text(rng, 100).split()
    a, b = " ".join(base), " ".join(other)
    sa, sb = _shingle_set(a), _shingle_set(b)
    jaccard = len(sa & sb) / len(sa | sb)
    sig = hasher.signatures([hasher.shingle_hashes(a), hasher.shingle_hashes(b)])
    agreement = float(np.mean(sig[0] == sig[1]))
    # 112 values: the standard error is sqrt(J(1-J)/112) ~ 0.045 at J ~ 0.5
    assert abs(agreement - jaccard) < 0.15, (agreement, jaccard)


def test_batch_equals_one_at_a_time(hasher: MinHasher) -> None:
    rng = random.Random(3)
    texts = [_text(rng, n) for n in (0, 3, 50, 300, 900, 2)]
    batch = hasher.band_keys_batch(texts)
    assert batch.shape == (6, 14) and batch.dtype == np.uint64
    assert np.array_equal(batch, np.stack([hasher.band_keys(t) for t in texts]))


def test_keys_do_not_depend_on_the_process(hasher: MinHasher) -> None:
    # Python's str hash is salted per process; the keys must not be.
    code = (
        "from fmforge.config import MinHashConfig; from fmforge.data.minhash import MinHasher;"
        "print(MinHasher(MinHashConfig()).band_keys('déjà vu all over again and again').tolist())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = [int(k) for k in hasher.band_keys("déjà vu all over again and again")]
    assert out.stdout.strip() == str(here)


def test_pickled_hasher_gives_the_same_keys(hasher: MinHasher) -> None:
    import pickle

    text = "a hasher sent to a worker process must hash exactly like this one"
    blob = pickle.dumps(hasher)
    assert len(blob) < 2000  # the config, not the work arrays or the word cache
    assert np.array_equal(pickle.loads(blob).band_keys(text), hasher.band_keys(text))


def test_seed_changes_the_permutations() -> None:
    text = "the same text hashed under two seeds gives other keys"
    k1 = MinHasher(MinHashConfig(seed=1)).band_keys(text)
    k2 = MinHasher(MinHashConfig(seed=2)).band_keys(text)
    assert not np.any(k1 == k2)


def test_detection_probability_hand_values() -> None:
    # 1 - (1 - s**8)**14, by hand: s=0.5: 1-(1-1/256)**14 = 0.0534
    assert detection_probability(0.5, 14, 8) == pytest.approx(0.0534, abs=1e-4)
    assert detection_probability(0.9, 14, 8) == pytest.approx(0.9996, abs=1e-4)
    assert detection_probability(1.0, 14, 8) == 1.0
    assert detection_probability(0.0, 14, 8) == 0.0
