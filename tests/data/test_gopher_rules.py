"""The Gopher steps' parts, each against a hand count or Python's own
definition: the drop reasons a data card lists, line counting against
``str.splitlines``, duplicate counting, distinct case-sensitive stop words, and
the edges of the n-gram rules (too few words, rules switched off)."""

from __future__ import annotations

import pytest

from fmforge.config import GopherQualityConfig, GopherRepetitionConfig
from fmforge.data.gopher import (
    STOP_WORDS,
    GopherQuality,
    GopherRepetition,
    _has_stop_words,
    _n_lines,
    _ngram_rule,
    _repeated_chars,
    duplicates,
)


def test_reasons_name_every_config_key():
    q = GopherQuality(GopherQualityConfig())
    assert q.reasons == tuple("gopher_quality:" + r for r in (
        "min_words", "max_words", "min_avg_word_length", "max_avg_word_length", "max_symbol_word_ratio",
        "max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio", "min_stop_words"))
    r = GopherRepetition(GopherRepetitionConfig(max_top_ngram_char_fraction={3: 0.2, 2: 0.3},
                                                max_dup_ngram_char_fraction={6: 0.1, 5: 0.2}))
    assert r.reasons == (
        "gopher_repetition:max_dup_paragraph_fraction", "gopher_repetition:max_dup_paragraph_char_fraction",
        "gopher_repetition:max_dup_line_fraction", "gopher_repetition:max_dup_line_char_fraction",
        "gopher_repetition:max_top_2gram_char_fraction", "gopher_repetition:max_top_3gram_char_fraction",
        "gopher_repetition:max_dup_5gram_char_fraction", "gopher_repetition:max_dup_6gram_char_fraction")
    assert STOP_WORDS == ("the", "be", "to", "of", "and", "that", "have", "with")


@pytest.mark.parametrize("text", ["", "a", "a\n", "a\nb", "a\nb\n", "\n", "\n\n", "a\n\nb\n\n", "x\n\n\ny"])
def test_line_count_is_what_splitlines_gives(text):
    want = 1 if text == "" else len(text.splitlines())  # an empty text is one (empty) line
    assert _n_lines(text) == want


def test_duplicates_by_hand():
    assert duplicates([]) == (0, 0)
    assert duplicates(["ab", "cd"]) == (0, 0)
    # "ab" three times (2 repeats of 2 chars), "xyz" twice (1 repeat of 3 chars)
    assert duplicates(["ab", "xyz", "ab", "q", "ab", "xyz"]) == (3, 2 * 2 + 3)


def test_stop_words_are_distinct_whole_and_case_sensitive():
    assert _has_stop_words("the cat and the dog", 2)
    assert not _has_stop_words("the the the the", 2)  # one distinct stop word
    assert not _has_stop_words("The cat And dog", 2)  # case-sensitive, as datatrove
    assert not _has_stop_words("theme tobe and", 2)  # inside words they do not count
    assert not _has_stop_words("that's the way", 2)  # "that's" is not "that"
    assert _has_stop_words("of to", 2) and not _has_stop_words("of to", 3)
    assert _has_stop_words("with", 1)


def test_no_word_is_dropped_even_with_min_words_zero():
    q = GopherQuality(GopherQualityConfig(min_words=0))
    assert q.check("") == "min_words" and q.check("... !!! ???") == "min_words"


def test_quality_rules_in_order_on_hand_built_texts():
    cfg = GopherQualityConfig(min_words=3, max_words=6, min_avg_word_length=2, max_avg_word_length=6,
                              max_symbol_word_ratio=0.25, max_bullet_lines_ratio=0.5,
                              max_ellipsis_lines_ratio=0.5, min_alpha_words_ratio=0.5, min_stop_words=2)
    q = GopherQuality(cfg)
    assert q.check("the cat and dog") is None
    assert q.check("the and") == "min_words"
    assert q.check("the cat and dog ran far off") == "max_words"  # 7 words
    assert q.check("the a and b") is None  # mean 2.0: at the bound, kept
    assert q.check("to a of b") == "min_avg_word_length"  # mean 1.5
    assert q.check("the and catsitter") is None  # mean 5.0 ... (3 + 3 + 9) / 3
    assert q.check("the and catsittersss") is None  # (3 + 3 + 12) / 3 = 6.0: at the bound
    assert q.check("the and catsitterssss") == "max_avg_word_length"  # 19 / 3 > 6
    assert q.check("the cat and # dog") is None  # 1 '#' in 5 tokens (4 words + '#'): 0.2
    assert q.check("the cat and ## dog") == "max_symbol_word_ratio"  # 2 of 6
    assert q.check("the cat and dog ... ...") == "max_symbol_word_ratio"
    assert q.check("- the cat\nand dog") is None  # 1 bullet line of 2: 0.5, kept
    assert q.check("- the cat\n- and dog") == "max_bullet_lines_ratio"
    lenient = GopherQuality(cfg.model_copy(update={"max_symbol_word_ratio": 1.0}))
    assert lenient.check("the cat...\nand dog…\nyes") == "max_ellipsis_lines_ratio"  # 2 of 3
    assert lenient.check("the cat...\nand dog\nyes") is None  # 1 of 3
    assert lenient.check("the cat... and\ndog no") is None  # an ellipsis mid-line ends no line
    assert q.check("the 12 and 34") is None  # 2 of 4 words with a letter: 0.5, kept
    assert q.check("the 12 34 56") == "min_alpha_words_ratio"
    assert q.check("the cat sat down") == "min_stop_words"


def test_repetition_edges():
    r = GopherRepetition(GopherRepetitionConfig())
    assert r.check("") is None
    assert r.check("word") is None  # fewer than two tokens: no n-gram rule applies
    off = GopherRepetition(GopherRepetitionConfig(max_top_ngram_char_fraction={},
                                                  max_dup_ngram_char_fraction={}))
    assert off.check("a b a b a b a b a b a b a b a b") is None
    # Paragraph and line rules by hand: "x" repeated.
    assert r.check("alpha beta\n\nalpha beta\n\ngamma delta") == "max_dup_paragraph_fraction"
    lines = GopherRepetition(GopherRepetitionConfig(max_dup_paragraph_fraction=1.0,
                                                    max_dup_paragraph_char_fraction=1.0))
    assert lines.check("alpha beta\nalpha beta\ngamma delta") == "max_dup_line_fraction"


def test_ngram_rule_by_hand():
    # Every 2-gram unique: the first one is "the most common" (count 1).
    words = ["ab", "cd", "ef"]
    assert _ngram_rule(words, 9, {2: 0.6}, {}) is None  # "ab cd": 5 chars / 9 = 0.56
    # 5 chars * 1 / 8 = 0.625 -> over 0.5
    assert _ngram_rule(words, 8, {2: 0.5}, {}) == "max_top_2gram_char_fraction"
    # n longer than the text: no rule
    assert _ngram_rule(words, 8, {4: 0.0}, {}) is None
    # The top 1-gram: "aa" 3 times = 6 chars of 10.
    assert _ngram_rule(["aa", "aa", "b", "aa"], 10, {1: 0.59}, {}) == "max_top_1gram_char_fraction"
    assert _ngram_rule(["aa", "aa", "b", "aa"], 10, {1: 0.6}, {}) is None
    # Duplicated 2-grams: "x y" at 0 and 2 and 4: the repeats at 2 and 4 hold 4 chars.
    assert _ngram_rule(["x", "y", "x", "y", "x", "y"], 10, {}, {2: 0.39}) == "max_dup_2gram_char_fraction"
    assert _ngram_rule(["x", "y", "x", "y", "x", "y"], 10, {}, {2: 0.4}) is None
    # Nothing repeats at n = 2, so n = 3 is never looked at.
    assert _ngram_rule(["a", "b", "c", "d"], 7, {}, {2: 0.0, 3: 0.0}) is None


def test_repeated_chars_skips_the_words_a_repeat_covers():
    # "a b" at 0, repeated at 2 and at 3? positions 2 and 3 overlap: only 2 counts.
    grams = [("a", "b"), ("a", "b"), ("a", "b")]
    assert _repeated_chars([0, 2, 3], grams, 2) == 2
    assert _repeated_chars([0, 2, 4], grams, 2) == 4
    assert _repeated_chars([0, 1], ["aa", "aa"], 1) == 2  # 1-grams are plain strings
    assert _repeated_chars([], [], 3) == 0


def test_ngram_rule_edges_by_hand():
    # An n-gram as long as the text is still an n-gram: "ab ab" is 5 of 5 characters.
    assert _ngram_rule(["ab", "ab"], 5, {2: 0.5}, {}) == "max_top_2gram_char_fraction"
    # A top-n rule longer than the text stops the top rules, not the duplicate ones:
    # "a b" repeated at 2 and 4 holds 4 of 11 characters.
    assert _ngram_rule(list("ababab"), 11, {4: 2.0, 9: 0.1}, {2: 0.1}) == "max_dup_2gram_char_fraction"
    # Every 2-gram unique: the first, "abcdef x" (8 characters), is the top one, not "x y".
    assert _ngram_rule(["abcdef", "x", "y"], 10, {2: 0.5}, {}) == "max_top_2gram_char_fraction"


def test_two_tokens_are_enough_for_the_ngram_rules():
    assert GopherRepetition(GopherRepetitionConfig()).check("aaaa aaaa") == "max_top_2gram_char_fraction"
