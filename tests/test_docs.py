"""The reference pages cover what they claim to: every config key is documented."""

from pathlib import Path

from fmforge.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PlanConfig,
    RunConfig,
    Section,
    SourceConfig,
    TokenizerConfig,
    TrainConfig,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_config_key_is_in_the_config_reference():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    missing = []
    sections = [RunConfig, DataConfig, SourceConfig, TokenizerConfig, ModelConfig,
                TrainConfig, EvalConfig, PlanConfig]
    seen = set()
    while sections:  # nested sections too (data.filters.c4, data.minhash, ...)
        section = sections.pop()
        if section in seen:
            continue
        seen.add(section)
        for name, field in section.model_fields.items():
            if field.exclude:
                continue
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
                sections.append(field.annotation)  # documented through its own keys
                continue
            # a top-level key as `name`, a nested one by its dotted path `a.b.name`
            if f"`{name}`" not in text and f".{name}`" not in text:
                missing.append(f"{section.__name__}.{name}")
    assert missing == []
