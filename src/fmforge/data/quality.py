"""What the quality filters share: one word split of a document, made once.

Gopher's quality and repetition rules and FineWeb's newline rule all count
words. Splitting a document is the costliest thing they do, so the filters of
one chain share a :class:`WordSplit` that remembers the split of the last text
it saw: the second filter of a document pays nothing. C4 rewrites the text, so
the cache is keyed on the text *object* (held, so its identity cannot be
reused) and FineWeb, after C4, splits the new text once.

What a word is. datatrove splits with spaCy's English tokenizer, which makes
punctuation its own token ("mat." -> "mat", "."; "don't" -> "do", "n't"). We
split with two precompiled regular expressions instead, at C speed and with no
model to load:

- a *word* is a run of letters, digits or underscores, with apostrophes inside
  it ("don't", "John's" stay whole);
- a *symbol token* is a run of other non-space characters (".", "...", "#",
  ")." -- spaCy would make the last two tokens).

Rules that datatrove counts over all spaCy tokens (the alphabetic-word share,
the '#'/ellipsis-per-word ratios, FineWeb's newlines per word) count words plus
symbol tokens here; rules over "non-symbol" tokens (word count, mean word
length) count words. The n-gram repetition rules run over words and symbol
tokens in order, as datatrove's n-grams include its punctuation tokens (with
words only, agreement with datatrove's gopher_repetition was 95.7%; see
benchmarks/README.md, bench_data).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmforge.data.readers.base import Document

import re

# Apostrophes inside a word keep it whole: contractions and possessives are
# one word to a reader, and splitting them would inflate the counts.
_WORD = r"\w+(?:['\u2019]\w+)*"
# ... and an apostrophe inside a word is part of that word, not a symbol token.
_SYMBOL = r"(?:[^\w\s'\u2019]|(?<!\w)['\u2019]|['\u2019](?!\w))+"
WORD_RE = re.compile(_WORD)
SYMBOL_RE = re.compile(_SYMBOL)
TOKEN_RE = re.compile(f"{_WORD}|{_SYMBOL}")
# The same expressions with ASCII classes, for ASCII text (most English web
# text): the same matches there, found ~30% faster than with Unicode classes.
_WORD_ASCII_RE = re.compile(_WORD, re.ASCII)
_SYMBOL_ASCII_RE = re.compile(_SYMBOL, re.ASCII)
_TOKEN_ASCII_RE = re.compile(f"{_WORD}|{_SYMBOL}", re.ASCII)


class WordSplit:
    """The words of the last text asked about, and counts derived from them.

    One instance is shared by the filters of one step chain (one worker
    process runs one chain at a time, so no lock is needed).
    """

    __slots__ = ("_text", "_ascii", "_words", "_symbols", "_letterless", "_tokens")

    def __init__(self) -> None:
        self._text: str | None = None
        self._ascii = True
        self._words: list[str] = []
        self._symbols = -1
        self._letterless = -1
        self._tokens: list[str] | None = None

    def _see(self, text: str) -> None:
        if text is not self._text:
            self._text = text
            self._ascii = text.isascii()
            self._words = (_WORD_ASCII_RE if self._ascii else WORD_RE).findall(text)
            self._symbols = -1
            self._letterless = -1
            self._tokens = None

    def tokens(self, text: str) -> list[str]:
        """Words and symbol tokens in text order (what datatrove's word
        tokenizer returns: punctuation included)."""
        self._see(text)
        if self._tokens is None:
            self._tokens = (_TOKEN_ASCII_RE if self._ascii else TOKEN_RE).findall(text)
        return self._tokens

    def words(self, text: str) -> list[str]:
        self._see(text)
        return self._words

    def n_symbol_tokens(self, text: str) -> int:
        self._see(text)
        if self._symbols < 0:
            self._symbols = len((_SYMBOL_ASCII_RE if self._ascii else SYMBOL_RE).findall(text))
        return self._symbols

    def n_tokens(self, text: str) -> int:
        """Words plus symbol tokens: datatrove's ``len(split_into_words(text))``."""
        return len(self.words(text)) + self.n_symbol_tokens(text)

    def n_letterless_words(self, text: str) -> int:
        """Words without a letter: numbers ("2024", "3'000" is not counted: a
        word with an apostrophe or underscore is taken to have a letter, which
        spares a per-word Python test)."""
        self._see(text)
        if self._letterless < 0:
            self._letterless = sum(map(str.isdecimal, self._words))
        return self._letterless


class RuleFilter(ABC):
    """A filter that judges the text as written and never rewrites it:
    ``check(text)`` gives the rule (config key) whose threshold the document
    crossed, or None; the step's reason is ``NAME:RULE``."""

    name = ""

    def counters(self) -> dict[str, int]:
        return {}

    @abstractmethod
    def check(self, text: str) -> str | None:
        """The rule whose threshold ``text`` crosses, or None to keep it."""

    def __call__(self, doc: "Document") -> str | None:
        rule = self.check(doc.text)
        return None if rule is None else f"{self.name}:{rule}"
