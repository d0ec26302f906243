from __future__ import annotations

from collections import Counter

from fmforge.data.scatter import copies, document_copies, shuffle_key


def _docs(source: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{source}/{i}", f"{source}{i}".encode()) for i in range(n)]


def test_copies_floor_plus_fraction():
    assert copies(2.0, 0.99) == 2
    assert copies(1.5, 0.49) == 2 and copies(1.5, 0.5) == 1
    assert copies(0.25, 0.3) == 0


def test_weight_two_doubles_and_half_roughly_halves():
    w = {"a": 2.0, "b": 0.5, "c": 1.0}
    docs = {s: _docs(s, n) for s, n in (("a", 1000), ("b", 1000), ("c", 100))}
    after = {s: sum(document_copies(w[s], 7, i, d) for i, d in ds) for s, ds in docs.items()}
    assert after["a"] == 2000
    assert 430 <= after["b"] <= 570
    assert after["c"] == 100


def test_mix_and_shuffle_are_deterministic_and_order_independent():
    w = {"a": 1.3, "b": 0.7}
    docs = [(s, i, d) for s in "ab" for i, d in _docs(s, 200)]

    def order(items, seed):
        copies_ = [(s, i, d, c) for s, i, d in items for c in range(document_copies(w[s], seed, i, d))]
        return [(s, i, c) for s, i, d, c in sorted(copies_, key=lambda x: shuffle_key(seed, "train", x[1], x[2], x[3]))]

    out1 = order(docs, 3)
    assert out1 == order(list(reversed(docs)), 3)
    assert [s for s, _, _ in out1[:50]].count("a") not in (0, 50)  # actually shuffled
    assert order(docs, 4) != out1
    # the copies of a repeated document are keyed apart
    assert max(Counter(i for _, i, _ in out1).values()) == 2
    assert shuffle_key(3, "train", "a/0", b"a0", 0) != shuffle_key(3, "val", "a/0", b"a0", 0)
