"""The reference pages cover what they claim to: every config key is documented."""

from pathlib import Path

from fmforge.config import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    PlanConfig,
    RunConfig,
    SourceConfig,
    TokenizerConfig,
    TrainConfig,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_config_key_is_in_the_config_reference():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    missing = []
    for section in (RunConfig, DataConfig, SourceConfig, TokenizerConfig, ModelConfig,
                    TrainConfig, EvalConfig, PlanConfig):
        for name, field in section.model_fields.items():
            if field.exclude:
                continue
            if f"`{name}`" not in text:
                missing.append(f"{section.__name__}.{name}")
    assert missing == []
