"""C4's page cleaning (Raffel et al. 2020, section 2.2), the ``c4`` step.

Unlike the other filters this one *rewrites* the page: it keeps only the lines
that look like prose and joins them with single newlines, then drops the page
if fewer than ``min_sentences`` sentences are left. Line rules, in the order
datatrove (and TensorFlow Datasets' c4_utils, the original) apply them:

1. a line with a word longer than ``max_word_length`` characters goes;
2. Wikipedia-style citation marks ("[1]", "[edit]", "[citation needed]") are
   cut out of the line (``remove_citations``);
3. a line that does not end in terminal punctuation (. ? ! " ') or ends in an
   ellipsis goes;
4. a line with fewer than ``min_words_per_line`` words goes (words counted
   before the citations were cut, as datatrove does);
5. "lorem ipsum" anywhere drops the page (``c4:drop_lorem_ipsum``);
6. a line mentioning "javascript" goes;
7. a curly bracket drops the page (``c4:drop_curly_bracket``): code, not prose;
8. a line about terms of use, privacy or cookie policies goes.

Drop reasons: ``c4:drop_lorem_ipsum``, ``c4:drop_curly_bracket``,
``c4:min_sentences``. Counters: ``lines_removed`` (all rules), one
``lines_removed_<rule>`` per line rule, ``citations_removed``.

Sentences of the kept lines are counted with a regular expression (a run of
. ! ? that ends a line or is followed by a space; at least one per kept line),
where datatrove uses spaCy's sentence splitter; an abbreviation ("Mr. Smith")
counts as a sentence end here and not there.
"""

from __future__ import annotations

import re

from fmforge.config import C4Config
from fmforge.data.readers.base import Document

_CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_TERMINAL = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
           "use of cookies", "use cookies")
_SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")

LINE_RULES = ("max_word_length", "terminal_punctuation", "min_words_per_line",
              "javascript", "policy")


class C4:
    name = "c4"

    def __init__(self, cfg: C4Config) -> None:
        self.cfg = cfg
        self.reasons = tuple(f"c4:{r}" for r in ("drop_lorem_ipsum", "drop_curly_bracket",
                                                  "min_sentences"))
        self._removed = dict.fromkeys(LINE_RULES, 0)
        self._citations = 0

    def counters(self) -> dict[str, int]:
        out = {"lines_removed": sum(self._removed.values()),
               "citations_removed": self._citations}
        out.update({f"lines_removed_{k}": v for k, v in self._removed.items()})
        return out

    def __call__(self, doc: Document) -> str | None:
        c = self.cfg
        removed = self._removed
        kept: list[str] = []
        sentences = 0
        max_word = c.max_word_length
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            if len(line) > max_word and any(len(w) > max_word for w in words):
                removed["max_word_length"] += 1
                continue
            if c.remove_citations and "[" in line:
                line, n = _CITATION_RE.subn("", line)
                self._citations += n
            if c.drop_lines_without_terminal_punctuation and (
                    not line.endswith(_TERMINAL) or line.endswith("...")):
                removed["terminal_punctuation"] += 1
                continue
            if len(words) < c.min_words_per_line:
                removed["min_words_per_line"] += 1
                continue
            lower = line.lower()
            if c.drop_lorem_ipsum and "lorem ipsum" in lower:
                return "c4:drop_lorem_ipsum"
            if c.drop_javascript_lines and "javascript" in lower:
                removed["javascript"] += 1
                continue
            if c.drop_curly_bracket and "{" in line:
                return "c4:drop_curly_bracket"
            if c.drop_policy_lines and any(p in lower for p in _POLICY):
                removed["policy"] += 1
                continue
            if sentences < c.min_sentences:  # enough is enough: stop counting
                sentences += max(1, len(_SENTENCE_END_RE.findall(line)))
            kept.append(line)
        if sentences < c.min_sentences or not kept:
            return "c4:min_sentences"
        doc.text = "\n".join(kept)
        return None
