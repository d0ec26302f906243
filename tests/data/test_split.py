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
