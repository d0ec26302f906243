"""A source's chain of per-document steps, built from the config.

Every document of a source goes through the same chain, in this order:

    clean -> length -> language -> the preset's quality filters -> pii

- ``clean`` always runs first (normalisation; control characters and
  mojibake as ``data.cleaning`` says), so every later step sees the text
  that will be stored;
- ``length`` (``data.min_chars``/``max_chars``; ``LengthFilter``, here) next: it is the cheapest test
  and throws out empty pages before anything costly looks at them;
- ``language`` only when the source lists ``languages``; before the quality
  filters, because their rules (stop words, sentence ends) are English-made
  and mean nothing for text in another language;
- the quality filters of the source's preset (``sources[].filters``, else
  ``data.filters.preset``); a filter whose config says ``enabled: false`` is
  left out:

  ========  ==============================================================
  preset    steps
  ========  ==============================================================
  none      none (the default: clean and length only)
  web       gopher_quality, gopher_repetition, c4, fineweb
  prose     gopher_quality, gopher_repetition
  code      code
  ========  ==============================================================

  ``web`` is FineWeb's stack (datatrove runs the two Gopher steps in the
  other order; the kept documents are the same, since neither rewrites the
  text; quality goes first here because it is cheaper and drops more).
  ``prose`` (books, manuals, documentation) keeps Gopher's document-level
  statistics, which hold for any well-formed prose, and leaves out C4 and
  FineWeb: their *line* rules were written against web boilerplate and
  wrongly remove good book and manual text -- headings, verse, dialogue and
  list items have no full stop (C4 deletes those lines, FineWeb's
  punctuated- and short-line rules drop the page), and a manual with one
  code sample has a curly bracket (C4 drops the page). ``code`` replaces
  them all with rules for source files (see :mod:`fmforge.data.code_quality`);
- ``pii`` last, when ``data.pii.enabled``: it rewrites, and the quality
  filters should judge the text as written, not a page full of placeholders.

A step returns ``None`` to keep the document (it may have rewritten
``doc.text`` or added to ``doc.metadata``) or the drop reason ``NAME:RULE``;
the chain stops at the first reason. Every step keeps ``counters()`` of what
it changed (rewrites, not drops: the stage counts drops by reason).
"""

from __future__ import annotations

from typing import Protocol

from fmforge.config import DataConfig, SourceConfig
from fmforge.data.c4 import C4
from fmforge.data.cleaning import Clean
from fmforge.data.code_quality import CodeQuality
from fmforge.data.fineweb import FineWeb
from fmforge.data.gopher import GopherQuality, GopherRepetition
from fmforge.data.quality import WordSplit
from fmforge.data.readers.base import Document


class DocumentStep(Protocol):
    name: str

    def __call__(self, doc: Document) -> str | None: ...

    def counters(self) -> dict[str, int]: ...


STEP_NAMES: tuple[str, ...] = ("clean", "length", "language", "gopher_quality",
                               "gopher_repetition", "c4", "fineweb", "code", "pii")

PRESETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "web": ("gopher_quality", "gopher_repetition", "c4", "fineweb"),
    "prose": ("gopher_quality", "gopher_repetition"),
    "code": ("code",),
}


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
    ``length:too_long``. The quality filters have their own modules."""

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


def preset_of(data: DataConfig, source: SourceConfig) -> str:
    return source.filters if source.filters is not None else data.filters.preset


def build_steps(data: DataConfig, source: SourceConfig) -> list[DocumentStep]:
    """The steps for one source's documents, in the order they run.

    Build one chain per worker: the quality filters of a chain share one word
    split (a document is split once, not once per filter), and the steps'
    counters are the chain's own.
    """
    steps: list[DocumentStep] = [Clean(data.cleaning), LengthFilter(data.min_chars, data.max_chars)]
    if source.languages is not None:
        from fmforge.data.langid import LanguageFilter  # needs the `data` extra
        steps.append(LanguageFilter(source.languages, data.language))
    f = data.filters
    split = WordSplit()
    makers = {
        "gopher_quality": (f.gopher_quality, lambda: GopherQuality(f.gopher_quality, split)),
        "gopher_repetition": (f.gopher_repetition,
                              lambda: GopherRepetition(f.gopher_repetition, split)),
        "c4": (f.c4, lambda: C4(f.c4)),
        "fineweb": (f.fineweb, lambda: FineWeb(f.fineweb, split)),
        "code": (f.code, lambda: CodeQuality(f.code)),
    }
    for name in PRESETS[preset_of(data, source)]:
        cfg, make = makers[name]
        if cfg.enabled:
            steps.append(make())
    if data.pii.enabled:
        from fmforge.data.pii import PII
        steps.append(PII(data.pii))
    return steps


def run_steps(steps: list[DocumentStep], doc: Document) -> str | None:
    """Run a chain on one document: ``None`` if kept, else the first reason."""
    for step in steps:
        reason = step(doc)
        if reason is not None:
            return reason
    return None


def step_reasons(steps: list[DocumentStep]) -> tuple[str, ...]:
    """Every reason the chain can give, for a data card that lists zero counts."""
    return tuple(r for s in steps for r in getattr(s, "reasons", ()))
