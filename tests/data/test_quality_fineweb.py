"""FineWeb's three rules (Penedo et al. 2024, section 3.5) at their thresholds."""

from __future__ import annotations

import random
import string

from fmforge.config import FineWebConfig
from fmforge.data.fineweb import FineWeb
from fmforge.data.readers.base import Document


def fineweb(text: str) -> str | None:
    return FineWeb(FineWebConfig())(Document("d", text, "s"))


def words(rng: random.Random, n: int, length: int = 6) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=length)) for _ in range(n))


def test_lines_ending_in_punctuation_at_least_12_percent():
    rng = random.Random(0)
    # 25 long lines: 3 end in a full stop (0.12), kept; 2 (0.08), dropped.
    lines = [words(rng, 8) for _ in range(25)]
    kept = [line + "." for line in lines[:3]] + lines[3:]
    assert fineweb("\n".join(kept)) is None
    dropped = [line + "." for line in lines[:2]] + lines[2:]
    assert fineweb("\n".join(dropped)) == "fineweb:min_punctuated_line_fraction"
    # CJK full stops count as sentence ends
    assert fineweb("\n".join([line + "\u3002" for line in lines[:3]] + lines[3:])) is None


def test_short_lines_at_most_67_percent():
    rng = random.Random(1)
    short = [words(rng, 3) + "." for _ in range(68)]  # 3 * 6 + 2 + 1 = 21 characters
    long = [words(rng, 8) + "." for _ in range(33)]
    assert all(len(s) <= 30 for s in short) and all(len(s) > 30 for s in long)
    # 67 of 100 (0.67) kept; 68 of 101 (0.673) dropped.
    assert fineweb("\n".join(short[:67] + long)) is None
    assert fineweb("\n".join(short + long)) == "fineweb:max_short_line_fraction"


def test_duplicate_line_characters_at_most_1_percent():
    rng = random.Random(2)
    body = [words(rng, 8) + "." for _ in range(17)]  # 17 * 56 = 952 characters
    repeat = "Read more."  # 10 characters, twice: 10 repeated
    lines = body + [repeat, repeat]
    text = "\n".join(lines)
    chars = len(text) - text.count("\n")
    assert chars == 972
    # pad the first line so the page holds 1000 (0.01, kept) or 999 characters
    assert fineweb("x" * 27 + " " + text) is None
    assert fineweb("x" * 26 + " " + text) == "fineweb:max_duplicate_line_char_fraction"


def test_newlines_per_word_at_most_0_3():
    rng = random.Random(3)
    # 10 lines of 3 words and a full stop: 40 tokens. 12 newlines: 0.3, kept.
    lines = [words(rng, 3, length=12) + "." for _ in range(10)]
    seps = ["\n\n"] * 3 + ["\n"] * 6
    assert fineweb(lines[0] + "".join(s + line for s, line in zip(seps, lines[1:]))) is None
    seps = ["\n\n"] * 4 + ["\n"] * 5  # 13 newlines: 0.325
    assert fineweb(lines[0] + "".join(s + line for s, line in zip(seps, lines[1:]))) == \
        "fineweb:max_newline_word_ratio"


def test_blank_page_is_empty():
    assert fineweb(" \n\n \n") == "fineweb:empty"
