"""The reference pages cover what they claim to: every config key has a row of its
own in docs/config.md's table for its section (its name in the row's first cell,
not just anywhere on the page), the fine-tune's keys included."""

import re
import typing
from pathlib import Path

import pytest

from fmforge.config import (
    DataConfig,
    DatamixConfig,
    EvalConfig,
    ExportConfig,
    FinetuneConfig,
    LadderConfig,
    ModelConfig,
    PlanConfig,
    RunConfig,
    Section,
    StepConfig,
    TokenizerConfig,
    TrainConfig,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"
TOP = "Top level"


def _rows_by_section() -> dict[str, set[str]]:
    """Backticked names in the first cell of each table row, per `## ` section."""
    rows: dict[str, set[str]] = {}
    section = None
    for line in (DOCS / "config.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip().strip("`")
            rows.setdefault(section, set())
        elif line.startswith("|") and section is not None:
            first = line.split("|")[1]
            rows[section].update(re.findall(r"`([^`]+)`", first))
    return rows


def _section_of(annotation) -> type[Section] | None:
    """The Section a field holds (itself, a list of it, or an optional one)."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, Section):
            return t
        for inner in typing.get_args(t):
            if isinstance(inner, type) and issubclass(inner, Section):
                return inner
    return None


def _keys(section: type[Section], prefix: str = "") -> list[str]:
    """Every leaf key of ``section`` as a dotted path (nested sections walked)."""
    out = []
    for name, field in section.model_fields.items():
        if field.exclude:
            continue
        nested = _section_of(field.annotation)
        if nested is not None:
            out += _keys(nested, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def _documented(path: str, names: set[str]) -> bool:
    # By its full path (`minhash.ngram`, `filters.c4.min_sentences`); a source's
    # keys have a table of their own, by name (`paths`, `weight`).
    return path in names or (path.startswith("sources.") and path.removeprefix("sources.") in names)


SECTIONS = {"data": DataConfig, "tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig,
            "eval": EvalConfig, "plan": PlanConfig, "ladder": LadderConfig, "datamix": DatamixConfig,
            "export": ExportConfig}


@pytest.mark.parametrize("doc_section", [TOP, *SECTIONS])
def test_every_config_key_has_a_row_in_its_sections_table(doc_section):
    rows = _rows_by_section()
    if doc_section == TOP:
        keys = [n for n, f in RunConfig.model_fields.items()
                if _section_of(f.annotation) is None and not f.exclude]
    else:
        keys = _keys(SECTIONS[doc_section])
    missing = [k for k in keys if not _documented(k, rows[doc_section])]
    assert missing == [], f"docs/config.md, section {doc_section}: no table row for {missing}"


def test_every_finetune_key_has_one_row_and_the_shared_ones_are_trains():
    rows = _rows_by_section()
    own = [k for k in _keys(FinetuneConfig) if k.split(".")[0] not in StepConfig.model_fields]
    assert any(k.startswith("lora.") for k in own)
    missing = [k for k in own if k not in rows["finetune"]]
    assert missing == [], f"docs/config.md, section finetune: no table row for {missing}"
    # The optimization keys are documented once, in train's table...
    assert [k for k in StepConfig.model_fields if k not in rows["train"]] == []
    # ...and the finetune section lists each default it changes, with its value there.
    text = (DOCS / "config.md").read_text(encoding="utf-8").split("## `finetune`")[1]
    for name in StepConfig.model_fields:
        ours, train = FinetuneConfig.model_fields[name].default, StepConfig.model_fields[name].default
        if ours != train:
            row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")), None)
            assert row is not None, f"finetune changes the default of {name} but has no row for it"
            if ours is not None:
                assert float(row.split("|")[2]) == ours, row
