from __future__ import annotations

from dataclasses import dataclass

from fmforge.data.mixture import copies, mix, shuffle


@dataclass(frozen=True)
class Item:
    id: str
    source: str
    digest: bytes
    nbytes: int


def _items(source: str, n: int) -> list[Item]:
    return [Item(f"{source}/{i}", source, f"{source}{i}".encode(), 10) for i in range(n)]


def test_copies_floor_plus_fraction():
    assert copies(2.0, 0.99) == 2
    assert copies(1.5, 0.49) == 2 and copies(1.5, 0.5) == 1
    assert copies(0.25, 0.3) == 0


def test_weight_two_doubles_and_half_roughly_halves():
    items = _items("a", 1000) + _items("b", 1000) + _items("c", 100)
    out, stats = mix(items, {"a": 2.0, "b": 0.5, "c": 1.0}, seed=7)
    assert stats["a"].documents_after == 2000 and stats["a"].bytes_after == 20000
    assert 430 <= stats["b"].documents_after <= 570
    assert stats["c"].documents_after == 100
    assert len(out) == sum(s.documents_after for s in stats.values())
    assert abs(sum(s.share_of_train_bytes for s in stats.values()) - 1) < 1e-9
    assert {c for it, c in out if it.source == "a"} == {0, 1}


def test_mix_and_shuffle_are_deterministic_and_order_independent():
    items = _items("a", 200) + _items("b", 200)
    w = {"a": 1.3, "b": 0.7}
    out1 = shuffle(mix(items, w, 3)[0], 3)
    out2 = shuffle(mix(list(reversed(items)), w, 3)[0], 3)
    assert out1 == out2
    assert [p[0].source for p in out1[:50]].count("a") not in (0, 50)  # actually shuffled
    assert shuffle(mix(items, w, 4)[0], 4) != out1
