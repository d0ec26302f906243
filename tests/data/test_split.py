from __future__ import annotations

import random

from fmforge.data.dedup import content_digest
from fmforge.data.split import assign_val, split_key


def _keys(texts, seed=1):
    return [split_key(content_digest(t.encode()), seed) for t in texts]


TEXTS = [f"document {i} " * 3 for i in range(400)]


def test_split_is_deterministic_and_order_independent():
    a = dict(zip(TEXTS, assign_val(_keys(TEXTS), 0.1)))
    b = dict(zip(TEXTS, assign_val(_keys(TEXTS), 0.1)))
    shuffled = TEXTS[:]
    random.Random(0).shuffle(shuffled)
    c = dict(zip(shuffled, assign_val(_keys(shuffled), 0.1)))
    assert a == b == c
    n_val = sum(a.values())
    assert 0 < n_val < len(TEXTS)
    assert 20 <= n_val <= 60  # ~10% of 400


def test_membership_does_not_depend_on_other_documents():
    full = dict(zip(TEXTS, assign_val(_keys(TEXTS), 0.1)))
    half = TEXTS[::2]
    part = dict(zip(half, assign_val(_keys(half), 0.1)))
    assert all(part[t] == full[t] for t in half)


def test_seed_changes_the_split():
    assert assign_val(_keys(TEXTS, 1), 0.1) != assign_val(_keys(TEXTS, 2), 0.1)


def test_tiny_corpora_get_both_splits():
    for n in (2, 3, 5):
        texts = TEXTS[:n]
        keys = _keys(texts)
        is_val = assign_val(keys, 0.001)
        assert sum(is_val) >= 1 and sum(is_val) < n
        # the smallest hash moved to val
        assert is_val[keys.index(min(keys))]
        is_val = assign_val(keys, 0.999999)
        assert 1 <= sum(is_val) < n


def test_no_val_when_fraction_zero_or_single_document():
    assert assign_val(_keys(TEXTS[:10]), 0.0) == [False] * 10
    assert assign_val(_keys(TEXTS[:1]), 0.5) in ([False], [True])


def test_identical_texts_land_on_the_same_side_and_never_empty_a_split():
    keys = _keys(["same"] * 4)
    is_val = assign_val(keys, 0.001)
    assert sum(is_val) == 1


# The hashes against hashlib's BLAKE2b directly, the split's boundaries on keys
# worked out by hand (2**64 * fraction), and the guarantee's ties.

import hashlib  # noqa: E402

import pytest  # noqa: E402

from fmforge.data.split import SplitGuard, hash_u64, hash_uniform, split_threshold  # noqa: E402


def _blake(seed: int, person: bytes, *parts: bytes) -> int:
    """The documented draw: BLAKE2b-64 keyed by the seed's decimal digits,
    personalised by the purpose (BLAKE2b takes at most 16 bytes of it), over each
    part preceded by its length as 8 little-endian bytes."""
    framed = b"".join(len(p).to_bytes(8, "little") + p for p in parts)
    return int.from_bytes(hashlib.blake2b(framed, digest_size=8, key=str(seed).encode(),
                                          person=person).digest(), "little")


def test_draws_are_keyed_blake2b_and_never_change_between_versions():
    # a user's val split must not move under them: pinned, and derived from hashlib
    digest = hashlib.blake2b(b"hello world", digest_size=16).digest()
    assert split_key(digest, 1337) == 0x865C752B9C9D84F8 == _blake(1337, b"fmforge.split", digest)
    assert split_key(digest, 1338) != split_key(digest, 1337)
    # str parts are UTF-8; each part is framed by its length, so ("ab", "c") is not ("a", "bc")
    assert hash_u64(3, "p", "é", b"x") == _blake(3, b"p", "é".encode(), b"x")
    assert hash_u64(3, "p", "ab", "c") != hash_u64(3, "p", "a", "bc")
    assert hash_u64(3, "p") == _blake(3, b"p")
    # a purpose longer than BLAKE2b's 16-byte personalisation: its first 16 bytes
    assert hash_u64(7, "fmforge.mix.tokens.order", "12", "3") == 0xAD5D4D3A3936DAFB \
        == _blake(7, b"fmforge.mix.toke", b"12", b"3")
    assert hash_u64(1, "a", "x") != hash_u64(1, "b", "x")


def test_uniform_draws_are_the_hash_over_two_to_the_64_in_zero_one():
    draws = [hash_uniform(5, "t", str(i)) for i in range(4000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.02  # uniform: mean 1/2, sd 0.29/sqrt(4000)
    assert sum(d < 0.25 for d in draws) == pytest.approx(1000, abs=90)
    assert hash_uniform(5, "t", "0") == _blake(5, b"t", b"0") / 18446744073709551616.0


@pytest.mark.parametrize("fraction, threshold", [(0.25, 2**62), (0.5, 2**63), (0.0, 0), (1.0, 2**64),
                                                 (0.1, 1844674407370955264)])
def test_a_document_is_val_iff_its_key_is_below_fraction_times_two_to_the_64(fraction, threshold):
    # 0.1 * 2**64 in binary64 is 1844674407370955161.6 rounded to the double 1844674407370955264
    assert split_threshold(fraction) == threshold
    if 0 < fraction < 1:
        keys = [threshold - 1, threshold, 0, 2**64 - 1]
        assert assign_val(keys, fraction) == [True, False, True, False]


def test_the_data_stage_rule_is_the_uniform_draw_below_the_fraction():
    texts = [f"text {i}" for i in range(2000)]
    digests = [content_digest(t.encode()) for t in texts]
    is_val = assign_val([split_key(d, 9) for d in digests], 0.3)
    assert is_val == [hash_uniform(9, "fmforge.split", d) < 0.3 for d in digests]
    assert sum(is_val) == pytest.approx(600, abs=70)


def _guard(keys, fraction, ids=None):
    g = SplitGuard(fraction)
    sides = [g.add(k, (ids or [""] * len(keys))[i], f"r{i}") for i, k in enumerate(keys)]
    return sides, g.moves(), g


def test_the_guard_counts_and_moves_the_extreme_keys():
    low = split_threshold(0.5)
    sides, moves, g = _guard([low + 5, low + 1, low + 9], 0.5)  # none below: no val
    assert sides == [False, False, False] and (g.n, g.n_val) == (3, 0)
    assert moves == ({"r1"}, set())  # the smallest hash goes to val
    sides, moves, g = _guard([3, 1, 9], 0.5)  # all below: no train
    assert sides == [True, True, True] and (g.n, g.n_val) == (3, 3)
    assert moves == (set(), {"r2"})  # the largest hash goes to train
    _, moves, g = _guard([1, low + 1, 2, low + 2], 0.5)  # both sides already
    assert moves == (set(), set()) and g.n_val == 2


def test_identical_extreme_keys_move_together_unless_that_empties_the_other_side():
    low = split_threshold(0.5)
    # two documents share the smallest hash: both go to val, the third stays in train
    _, moves, _ = _guard([low + 1, low + 7, low + 1], 0.5)
    assert moves == ({"r0", "r2"}, set())
    _, moves, _ = _guard([1, 7, 7], 0.5)  # the largest shared: both to train
    assert moves == (set(), {"r1", "r2"})
    # every document identical: only the first by id moves
    _, moves, _ = _guard([low + 4] * 3, 0.5, ids=["b", "a", "c"])
    assert moves == ({"r1"}, set())
    _, moves, _ = _guard([4] * 3, 0.5, ids=["b", "c", "a"])
    assert moves == (set(), {"r2"})
    assert assign_val([4, 4, 4], 0.5, ids=["b", "c", "a"]) == [True, True, False]
    assert assign_val([low + 4] * 3, 0.5, ids=["b", "a", "c"]) == [False, True, False]


def test_a_guard_with_no_fraction_or_one_document_moves_nothing():
    low = split_threshold(0.5)
    assert _guard([low + 1], 0.5)[1] == (set(), set())
    assert _guard([1], 0.5)[1] == (set(), set())
    assert _guard([1, 2], 0.0)[1] == (set(), set())
    assert _guard([], 0.5)[1] == (set(), set())
    assert _guard([5, 6], 0.0)[0] == [False, False]
    # two documents, one fraction: each side gets one
    assert assign_val([low + 2, low + 1], 0.5) == [False, True]
    assert assign_val([2, 1], 0.5) == [False, True]  # the larger hash to train
    assert assign_val([2, 1], 1.0) == [False, True]
