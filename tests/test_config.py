"""The config rejects bad input naming the key, and dotted overrides apply."""

from pathlib import Path

import pytest
import yaml

from fmforge.config import ConfigError, load_config

BASE = {
    "name": "t",
    "data": {"sources": [{"name": "a", "paths": ["*.txt"]}]},
    "model": {"d_model": 64, "n_heads": 4, "n_layers": 2},
}


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_unknown_key_is_named(tmp_path):
    raw = {**BASE, "train": {"max_stepz": 3}}
    with pytest.raises(ConfigError, match=r"train\.max_stepz: unknown key"):
        load_config(write(tmp_path, raw))


def test_wrong_type_is_named(tmp_path):
    raw = {**BASE, "train": {"lr": "fast"}}
    with pytest.raises(ConfigError, match=r"train\.lr:.*'fast'"):
        load_config(write(tmp_path, raw))


def test_inconsistent_heads_are_explained(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.n_heads=5 must divide model\.d_model=384"):
        load_config(write(tmp_path, BASE), ["model.d_model=384", "model.n_heads=5"])


def test_kv_heads_must_divide_heads(tmp_path):
    with pytest.raises(ConfigError, match=r"n_kv_heads=3 must divide model\.n_heads=4"):
        load_config(write(tmp_path, BASE), ["model.n_kv_heads=3"])


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"data: required key is missing"):
        load_config(write(tmp_path, {"name": "t"}))


def test_overrides_apply_with_yaml_types(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.max_steps=50", "train.warmup_steps=5", "model.n_layers=4",
                                              "train.lr=3e-4", "model.tie_embeddings=false",
                                              "data.sources.0.weight=2.5"])
    assert cfg.train.max_steps == 50 and cfg.model.n_layers == 4
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.tie_embeddings is False
    assert cfg.data.sources[0].weight == 2.5
    assert cfg.run_dir == Path("runs/t")


def test_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(write(tmp_path, BASE), ["train.max_steps"])
    with pytest.raises(ConfigError, match=r"train\.bogus: unknown key"):
        load_config(write(tmp_path, BASE), ["train.bogus=1"])


def test_demo_config_is_valid():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert cfg.tokenizer.vocab_size == 8192
    assert {s.name for s in cfg.data.sources} == {"stdlib-code", "package-docs"}


def test_duplicate_section_is_rejected_with_its_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE) + "train:\n  max_steps: 5\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"line \d+: key 'train' is given twice"):
        load_config(p)


def test_resolved_config_makes_relative_source_paths_absolute(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    saved = yaml.safe_load(cfg.to_yaml())
    assert saved["data"]["sources"][0]["paths"] == [str(tmp_path / "*.txt")]
    assert saved["train"]["max_steps"] == 1000  # defaults are written out too


def test_boolean_for_a_number_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train: max_steps must be a number, got true"):
        load_config(write(tmp_path, BASE), ["train.max_steps=true"])


def test_minutes_alone_decide_the_steps_and_a_given_max_steps_still_caps_them(tmp_path):
    """`train.max_minutes` with no `max_steps` of the user's: the minutes decide
    (the default of 1000 steps is for runs without a budget, and capped a 2-minute
    run of a small model at 1000 steps, 88 s of its 120). A `max_steps` the user
    gives stays an upper bound."""
    minutes = load_config(write(tmp_path, {**BASE, "train": {"max_minutes": 2}}))
    assert minutes.train.max_steps is None
    assert yaml.safe_load(minutes.to_yaml())["train"]["max_steps"] is None  # the run records it
    both = load_config(write(tmp_path, {**BASE, "train": {"max_minutes": 2, "max_steps": 1000}}))
    assert both.train.max_steps == 1000
    assert load_config(write(tmp_path, BASE)).train.max_steps == 1000  # no budget: the default
    overridden = load_config(write(tmp_path, BASE), ["train.max_minutes=3"])
    assert overridden.train.max_steps is None


@pytest.mark.parametrize("value, said", [
    ("**/*.gz", r"data\.sources\.0\.exclude: a list of glob patterns.*exclude: \[\"\*\*/\*\.gz\"\]"),
    ([""], r"data\.sources\.0\.exclude: pattern 1 is empty"),
    (["**/*.gz", "  "], r"data\.sources\.0\.exclude: pattern 2 is empty"),
])
def test_a_bad_exclude_is_named_with_what_to_write(tmp_path, value, said):
    raw = {**BASE, "data": {"sources": [{"name": "a", "paths": ["*.txt"], "exclude": value}]}}
    with pytest.raises(ConfigError, match=said):
        load_config(write(tmp_path, raw))
