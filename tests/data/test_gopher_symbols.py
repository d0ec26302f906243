"""Gopher's symbol rules with each symbol alone (Rae et al. 2021, appendix A.1.1,
as datatrove's GopherQualityFilter implements them): a bullet line starts with
"•" or "-" after its leading blanks; an ellipsis is "..." or "…", at a line's end
for the ellipsis-lines rule and anywhere for the symbol-to-word ratio, as is "#".
A document built from one form alone must cross each threshold, so no form can
go missing unnoticed; the fractions are worked out in the comments."""

from __future__ import annotations

import pytest

from fmforge.config import GopherQualityConfig
from fmforge.data.gopher import GopherQuality
from fmforge.data.readers.base import Document

LINE = "the cat and the dog"


def quality(text: str) -> str | None:
    return GopherQuality(GopherQualityConfig())(Document("d", text, "s"))


@pytest.mark.parametrize("bullet", ["-", "\u2022", "  -", "\t\u2022"])
def test_each_bullet_form_alone_crosses_the_90_percent_line(bullet):
    # 9 of 10 lines: 0.9 is not over 0.9; 10 of 10 is.
    assert quality("\n".join([LINE] + [f"{bullet} {LINE}"] * 9)) is None
    assert quality("\n".join([f"{bullet} {LINE}"] * 10)) == "gopher_quality:max_bullet_lines_ratio"


def test_a_dash_inside_a_line_is_no_bullet():
    assert quality("\n".join([f"{LINE} - {LINE}"] * 10)) is None


@pytest.mark.parametrize("ellipsis", ["...", "\u2026", "...  ", "\u2026\t"])
def test_each_ellipsis_form_alone_ends_30_percent_of_lines(ellipsis):
    # 3 of 10 lines: 0.3 is kept; 4 of 10: 0.4, dropped. Ten words a line keep
    # the symbol-to-word ratio, checked first, under its limit: 4/104 = 0.038.
    lines = [f"{LINE} {LINE}"] * 10
    kept = [f"{line}{ellipsis}" if i < 3 else line for i, line in enumerate(lines)]
    dropped = [f"{line}{ellipsis}" if i < 4 else line for i, line in enumerate(lines)]
    assert quality("\n".join(kept)) is None
    assert quality("\n".join(dropped)) == "gopher_quality:max_ellipsis_lines_ratio"


def test_an_ellipsis_inside_a_line_does_not_end_it():
    lines = [f"{LINE}... {LINE}"] * 4 + [f"{LINE} {LINE}"] * 6
    assert quality("\n".join(lines)) is None


@pytest.mark.parametrize("symbol", ["#", "...", "\u2026"])
def test_each_symbol_alone_counts_toward_the_one_in_ten_ratio(symbol):
    words = ["the", "and"] + ["apple"] * 48
    # 50 words and 5 symbol tokens: 5/55 = 0.091, kept; 6/56 = 0.107, dropped.
    # The symbols open the text, so no line ends in an ellipsis.
    assert quality(" ".join([symbol] * 5 + words)) is None
    assert quality(" ".join([symbol] * 6 + words)) == "gopher_quality:max_symbol_word_ratio"
