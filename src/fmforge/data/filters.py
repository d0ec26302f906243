"""Document filters: which documents are not worth training on, and why.

Each filter returns the reason it drops a document (a short key) so the data
card can count drops per source and per reason; nothing is removed silently.
:class:`LengthFilter` is the ``length`` step of a source's chain
(:mod:`fmforge.data.steps`); the quality filters have their own modules.
"""

from __future__ import annotations

from fmforge.config import DataConfig
from fmforge.data.document import Document

def length_filter_reason(text: str, min_chars: int, max_chars: int | None) -> str | None:
    """``None`` to keep, else the reason to drop.

    Whitespace-only text is always ``empty`` (even with ``min_chars: 0``); the
    length bounds count characters of the normalised text.
    """
    n = len(text)
    if n == 0 or text.isspace():
        return "empty"
    if n < min_chars:
        return "too_short"
    if max_chars is not None and n > max_chars:
        return "too_long"
    return None


def describe_reason(reason: str, data: DataConfig, max_bytes: int | None = None) -> str:
    """A reason with the setting that caused it, for error messages."""
    return {
        "empty": "empty (whitespace only)",
        "too_short": f"too_short (data.min_chars={data.min_chars})",
        "too_long": f"too_long (data.max_chars={data.max_chars})",
        "max_bytes": f"max_bytes (source max_bytes={max_bytes})",
    }.get(reason, reason)


class LengthFilter:
    """The ``length`` step: ``data.min_chars`` / ``data.max_chars`` over the
    cleaned text; reasons ``length:empty``, ``length:too_short``,
    ``length:too_long``."""

    name = "length"
    reasons = ("length:empty", "length:too_short", "length:too_long")

    def __init__(self, min_chars: int, max_chars: int | None) -> None:
        self.min_chars = min_chars
        self.max_chars = max_chars

    def counters(self) -> dict[str, int]:
        return {}

    def __call__(self, doc: Document) -> str | None:
        reason = length_filter_reason(doc.text, self.min_chars, self.max_chars)
        return None if reason is None else f"length:{reason}"
