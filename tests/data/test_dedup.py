from __future__ import annotations

from fmforge.data.dedup import ExactDedup, content_digest


def test_exact_dedup_first_occurrence_wins():
    d = ExactDedup()
    a, b = content_digest(b"alpha"), content_digest(b"beta")
    assert not d.is_duplicate(a)
    d.add(a)
    assert d.is_duplicate(a) and not d.is_duplicate(b)
    assert content_digest(b"alpha") == a


def test_disabled_dedup_never_reports():
    d = ExactDedup(enabled=False)
    a = content_digest(b"alpha")
    d.add(a)
    assert not d.is_duplicate(a)
