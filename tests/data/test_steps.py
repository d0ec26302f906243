"""The chain of steps a source's documents go through, from config and preset."""

from __future__ import annotations

import json
import pathlib

import pytest

from fmforge.config import DataConfig
from fmforge.data.readers.base import Document
from fmforge.data.steps import STEP_NAMES, build_steps, run_steps, step_reasons


def data(**kw) -> DataConfig:
    source = {"name": "s", "paths": ["x"]}
    source.update(kw.pop("source", {}))
    return DataConfig(sources=[source], **kw)


def names(d: DataConfig) -> list[str]:
    return [s.name for s in build_steps(d, d.sources[0])]


def test_default_is_clean_and_length_only():
    assert names(data()) == ["clean", "length"]


def test_presets():
    assert names(data(source={"filters": "web"})) == [
        "clean", "length", "gopher_quality", "gopher_repetition", "c4", "fineweb"]
    assert names(data(source={"filters": "prose"})) == [
        "clean", "length", "gopher_quality", "gopher_repetition"]
    assert names(data(source={"filters": "code"})) == ["clean", "length", "code"]
    # the data-wide preset applies where the source names none
    assert names(data(filters={"preset": "prose"}))[-1] == "gopher_repetition"
    assert names(data(filters={"preset": "web"}, source={"filters": "none"})) == ["clean", "length"]


def test_disabled_filter_is_left_out():
    d = data(source={"filters": "web"}, filters={"c4": {"enabled": False}})
    assert "c4" not in names(d) and "fineweb" in names(d)


def test_language_and_pii_steps_in_place():
    d = data(source={"filters": "prose", "languages": ["en"]}, pii={"enabled": True})
    assert names(d) == ["clean", "length", "language", "gopher_quality", "gopher_repetition", "pii"]
    assert set(names(d)) <= set(STEP_NAMES)


def test_length_reasons_as_today():
    d = data(min_chars=10, max_chars=20)
    steps = build_steps(d, d.sources[0])
    assert run_steps(steps, Document("a", " \n ", "s")) == "length:empty"
    assert run_steps(steps, Document("a", "short", "s")) == "length:too_short"
    assert run_steps(steps, Document("a", "x" * 21, "s")) == "length:too_long"
    assert run_steps(steps, Document("a", "x" * 20, "s")) is None


def test_code_preset_keeps_stdlib_code_that_web_drops():
    src = pathlib.Path(json.__file__).read_text(encoding="utf-8")
    for preset, expected in (("code", None), ("web", "gopher_quality:min_alpha_words_ratio")):
        d = data(source={"filters": preset})
        doc = Document("json/__init__.py", src, "s")
        assert run_steps(build_steps(d, d.sources[0]), doc) == expected, preset


def test_web_chain_rewrites_then_judges_the_rewritten_text():
    d = data(source={"filters": "web"}, pii={"enabled": True})
    steps = build_steps(d, d.sources[0])
    sentences = [
        "The library opens at nine in the morning and closes at six in the evening.",
        "Members can borrow up to ten books at a time for a period of three weeks.",
        "The reading room on the second floor is quiet and has good light all day.",
        "Children have their own corner with picture books and a small stage for plays.",
        "Questions about the catalogue can be sent to help@library.example.org by mail.",
        "Late returns cost a small fee, which goes to the fund for new books and magazines.",
    ]
    page = "Home | Catalogue | Events\n" + "\n".join(sentences) + "\nThis site uses cookies.\n"
    doc = Document("p", page, "s")
    assert run_steps(steps, doc) is None
    assert doc.text == "\n".join(sentences).replace("help@library.example.org", "<EMAIL>")
    counters = {s.name: s.counters() for s in steps}
    assert counters["c4"]["lines_removed"] == 2
    assert counters["pii"]["email"] == 1


def test_every_reason_names_its_step():
    d = data(source={"filters": "web", "languages": ["en"]}, pii={"enabled": True})
    reasons = step_reasons(build_steps(d, d.sources[0]))
    assert "gopher_quality:min_words" in reasons and "fineweb:max_newline_word_ratio" in reasons
    assert all(r.split(":")[0] in STEP_NAMES for r in reasons)


@pytest.mark.parametrize("preset", ["none", "web", "prose", "code"])
def test_counters_are_plain_int_dicts(preset):
    d = data(source={"filters": preset})
    for s in build_steps(d, d.sources[0]):
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in s.counters().items())
