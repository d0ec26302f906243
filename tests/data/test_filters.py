from __future__ import annotations

from fmforge.data.readers.base import Document
from fmforge.data.steps import LengthFilter, length_filter_reason


def test_length_filter_reasons():
    assert length_filter_reason("", 0, None) == "empty"
    assert length_filter_reason(" \n\t", 0, None) == "empty"
    assert length_filter_reason("short", 10, None) == "too_short"
    assert length_filter_reason("x" * 11, 1, 10) == "too_long"
    assert length_filter_reason("x" * 10, 10, 10) is None


def test_length_step_prefixes_its_name():
    step = LengthFilter(min_chars=5, max_chars=None)
    assert step(Document("d", "abcd", "s")) == "length:too_short"
    assert step(Document("d", "abcde", "s")) is None
    assert step(Document("d", "", "s")) == "length:empty"
