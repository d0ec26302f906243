"""The clean step: normalisation, control characters, mojibake."""

from __future__ import annotations

from fmforge.config import CleaningConfig
from fmforge.data.cleaning import Clean
from fmforge.data.readers.base import Document


def clean(text: str, **cfg) -> tuple[str, dict[str, int]]:
    step = Clean(CleaningConfig(**cfg))
    doc = Document("d", text, "s")
    assert step(doc) is None  # cleaning never drops
    return doc.text, step.counters()


def test_normalises_bom_line_ends_and_nfc():
    text, _ = clean("\ufeffcafe\u0301\r\nnext\rline")
    assert text == "caf\u00e9\nnext\nline"


def test_control_characters_removed_tab_and_newline_kept():
    text, c = clean("a\x00b\tc\nd\x1b[0me\x7f\x9f\u200d")
    # NUL, ESC, DEL and the C1 APC go; tab, newline and the zero-width joiner
    # (a format character emoji and Indic text need) stay.
    assert text == "ab\tc\nd[0me\u200d"
    assert c["control_characters_removed"] == 4


def test_control_characters_kept_when_switched_off():
    text, c = clean("a\x00b", remove_control_characters=False)
    assert text == "a\x00b" and c["control_characters_removed"] == 0


def test_mojibake_repaired_only_when_enabled():
    broken = "caf\u00c3\u00a9 cr\u00c3\u00a8me br\u00c3\u00bbl\u00c3\u00a9e"  # 'café crème brûlée' read as Latin-1
    assert clean(broken)[0] == broken
    text, c = clean(broken, fix_mojibake=True)
    assert text == "café crème brûlée"
    assert c["mojibake_fixed_documents"] == 1


def test_mojibake_repair_leaves_correct_text_alone():
    # ftfy's other defaults would straighten these quotes and narrow the
    # full-width letters; only encoding repair is asked for.
    fine = "\u201cquoted\u201d \uff21\uff22 \ufb01sh na\u00efve"
    text, c = clean(fine, fix_mojibake=True)
    assert text == fine and c["mojibake_fixed_documents"] == 0
