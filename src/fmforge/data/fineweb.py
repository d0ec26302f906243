"""FineWeb's own three rules (Penedo et al. 2024, section 3.5), the ``fineweb`` step.

Found by comparing what C4's filters removed against what they should have,
they catch list-like and boilerplate pages that Gopher and C4 let through.
Over the non-blank lines of a page:

- ``min_punctuated_line_fraction``: at least 12% of lines end in sentence-ending
  punctuation (a page of menu items and headings has none);
- ``max_short_line_fraction``: at most 67% of lines are ``short_line_chars``
  (30) characters or shorter;
- ``max_duplicate_line_char_fraction``: lines repeating an earlier line hold at
  most 1% of the page's characters (newlines not counted);
- ``max_newline_word_ratio``: at most 0.3 newlines per word (all newlines of
  the page, blank lines included).

Each reason is ``fineweb:<that key>``; a page with no non-blank line is
``fineweb:empty``. Lines are not stripped before the punctuation test (a line
ending in a space does not end in a full stop), as in datatrove. The
sentence-ending characters are the common ones of Unicode's Sentence_Terminal
set (Latin, CJK, Arabic, Devanagari, Ethiopic, Armenian, Myanmar, Khmer ...: 43
characters, all in datatrove's list);
datatrove lists all 159, some of scripts we have never met in web text.
Words are counted as in :mod:`fmforge.data.quality` (words plus symbol
tokens, standing in for datatrove's spaCy tokens).
"""

from __future__ import annotations

from fmforge.config import FineWebConfig
from fmforge.data.gopher import duplicates
from fmforge.data.quality import RuleFilter, WordSplit

SENTENCE_TERMINALS = tuple(
    ".?!"
    "\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0964\u0965"  # Armenian, Arabic, Syriac, NKo, Devanagari
    "\u104a\u104b\u1362\u1367\u1368\u166e\u17d4\u17d5\u1803\u1809"  # Myanmar, Ethiopic, Canadian, Khmer, Mongolian
    "\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c"  # double marks, interrobang, reversed ?
    "\u3002\ua4ff\ua60e\ua6f3\ua6f7\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61"  # CJK, Lisu, Vai, Bamum, full width
)


class FineWeb(RuleFilter):
    name = "fineweb"

    def __init__(self, cfg: FineWebConfig, split: WordSplit | None = None) -> None:
        self.cfg = cfg
        self.split = split or WordSplit()
        self.reasons = tuple(f"fineweb:{r}" for r in (
            "empty", "min_punctuated_line_fraction", "max_short_line_fraction",
            "max_duplicate_line_char_fraction", "max_newline_word_ratio"))



    def check(self, text: str) -> str | None:
        c = self.cfg
        lines = [line for line in text.split("\n") if line and not line.isspace()]
        if not lines:
            return "empty"
        n_lines = len(lines)
        punctuated = sum(1 for line in lines if line.endswith(SENTENCE_TERMINALS))
        if punctuated / n_lines < c.min_punctuated_line_fraction:
            return "min_punctuated_line_fraction"
        short = c.short_line_chars
        if sum(1 for line in lines if len(line) <= short) / n_lines > c.max_short_line_fraction:
            return "max_short_line_fraction"
        dup_chars = duplicates(lines)[1]
        if dup_chars / (len(text) - text.count("\n")) > c.max_duplicate_line_char_fraction:
            return "max_duplicate_line_char_fraction"
        newlines = text.count("\n")
        # Every whitespace-separated chunk holds at least one token, so a page
        # that passes against the chunk count passes: skip the word split.
        if newlines / len(text.split()) > c.max_newline_word_ratio and \
                newlines / self.split.n_tokens(text) > c.max_newline_word_ratio:
            return "max_newline_word_ratio"
        return None
