"""The budget sizing rule of `fmforge init` and `model: auto`, checked against the
planner's own estimate of the chosen model and against a config's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmforge.config import ConfigError, config_from_dict, load_config
from fmforge.hardware import get_hardware
from fmforge.plan.autosize import (
    WIDTHS,
    resolve_auto_model,
    shape_for_width,
    size_model,
)
from fmforge.plan.estimate import plan_for_run


def run_config(size, minutes: float, tmp_path: Path, gpu: str = "a10g"):
    return config_from_dict({
        "name": "sized", "out_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "s", "paths": ["x/*.txt"]}]},
        "tokenizer": {"vocab_size": size.vocab_size},
        "model": {"d_model": size.d_model, "n_layers": size.n_layers, "n_heads": size.n_heads},
        "train": {"max_minutes": minutes, "max_steps": None, "device": "cuda"}, "plan": {"gpu": gpu}})


def test_a_smaller_budget_buys_a_smaller_model():
    hw = get_hardware("a10g")
    sizes = [size_model(hw, minutes * 60) for minutes in (1, 10, 100, 1000)]
    params = [s.params for s in sizes]
    assert params == sorted(params) and params[0] < params[-1]
    assert sizes[0].vocab_size <= sizes[-1].vocab_size


@pytest.mark.parametrize("minutes", [2, 30, 240])
def test_the_planned_run_of_the_chosen_model_fits_the_minutes_and_is_compute_optimal(minutes, tmp_path, monkeypatch):
    hw = get_hardware("a10g")
    size = size_model(hw, minutes * 60)
    # the planner's own plan of a run with this model and budget
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("fmforge.plan.estimate.detect_gpu", lambda: "a10g")
    plan = plan_for_run(run_config(size, minutes, tmp_path))
    assert plan["params"] == size.params
    assert plan["tokens"] / plan["tokens_per_s"] <= minutes * 60
    # Chinchilla's 20 tokens per (non-embedding) parameter, less the budget's unused 5%
    assert plan["tokens"] >= 20 * size.non_embedding_params * 0.95
    # and it is the largest such shape: the next width of the family gets fewer than 20
    nxt = WIDTHS[WIDTHS.index(size.d_model) + 1]
    layers, heads = shape_for_width(nxt)
    bigger = size_model(hw, minutes * 60, vocab_size=None)
    from dataclasses import replace

    from fmforge.plan.autosize import vocab_for

    bigger = replace(bigger, d_model=nxt, n_layers=layers, n_heads=heads, vocab_size=vocab_for(nxt, layers, heads, 256))
    plan_big = plan_for_run(run_config(bigger, minutes, tmp_path))
    from fmforge.model.counting import count_parameters

    assert plan_big["tokens"] < 20 * count_parameters(run_config(bigger, minutes, tmp_path).resolved_model()).non_embedding


def test_a_ladder_law_decides_when_one_is_given():
    hw = get_hardware("a10g")
    base = size_model(hw, 600)
    # a one-variable law fitted at 200 tokens per non-embedding parameter asks for a smaller model
    ladder = {"law": {"E": 0.5, "A": 10.0, "alpha": 0.3, "tokens_per_param": 200.0}}
    by_ladder = size_model(hw, 600, ladder=ladder)
    assert by_ladder.params < base.params and "ladder" in by_ladder.rule
    assert by_ladder.tokens >= 200 * by_ladder.non_embedding_params


def test_model_auto_config_rules(tmp_path):
    def cfg(model, train):
        return {"name": "a", "data": {"sources": [{"name": "s", "paths": ["*.txt"]}]}, "model": model,
                "train": train}

    c = config_from_dict(cfg("auto", {"max_minutes": 2}))
    assert c.model.auto
    with pytest.raises(ConfigError, match="model: auto is not sized yet"):
        c.resolved_model()
    with pytest.raises(ConfigError, match=r"remove model\.d_model"):
        config_from_dict(cfg({"auto": True, "d_model": 128}, {"max_minutes": 2}))
    with pytest.raises(ConfigError, match=r"set train\.max_minutes"):
        config_from_dict(cfg("auto", {"max_steps": 500}))
    with pytest.raises(ConfigError, match="model must be a section of keys or `auto`"):
        config_from_dict(cfg("big", {"max_minutes": 2}))


def test_model_auto_is_sized_once_recorded_and_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "name: auto-run\ndata:\n  sources: [{name: s, paths: ['*.txt']}]\nmodel: auto\n"
        "train: {max_minutes: 1, device: cpu, dtype: float32}\nplan: {mfu: 0.3}\n")
    cfg = load_config(tmp_path / "c.yaml")
    sized, size, reused = resolve_auto_model(cfg)
    assert not reused and not sized.model.auto
    assert (sized.model.d_model, sized.tokenizer.vocab_size) == (size.d_model, size.vocab_size)
    record = json.loads((tmp_path / "runs/auto-run/model_size.json").read_text())
    assert record["size"]["d_model"] == size.d_model and record["inputs"]["max_minutes"] == 1
    # the resolved config (what runs/NAME/config.yaml holds) names the chosen keys
    assert f"d_model: {size.d_model}" in sized.to_yaml()
    again = resolve_auto_model(load_config(tmp_path / "c.yaml"))
    assert again[2] and again[1] == size
    # a longer budget is decided again, bigger
    longer = resolve_auto_model(load_config(tmp_path / "c.yaml", ["train.max_minutes=600", "train.max_steps=null"]))
    assert not longer[2] and longer[1].params > size.params

    from typer.testing import CliRunner

    from fmforge.cli import app

    res = CliRunner().invoke(app, ["plan", str(tmp_path / "c.yaml")])
    assert res.exit_code == 0, res.output


def test_under_torchrun_the_decision_must_exist_before_the_launch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "name: dist\ndata:\n  sources: [{name: s, paths: ['*.txt']}]\nmodel: auto\n"
        "train: {max_minutes: 1, device: cpu, dtype: float32}\nplan: {mfu: 0.3}\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    from fmforge.plan.errors import PlanError

    with pytest.raises(PlanError, match="without torchrun"):
        resolve_auto_model(load_config(tmp_path / "c.yaml"))
    assert not (tmp_path / "runs/dist/model_size.json").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    decided = resolve_auto_model(load_config(tmp_path / "c.yaml"))[1]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    sized, size, reused = resolve_auto_model(load_config(tmp_path / "c.yaml"))
    assert reused and size == decided and sized.model.d_model == decided.d_model


def test_the_two_variable_law_never_picks_a_model_the_data_cannot_feed():
    """2e6 tokens of data and an H100-hour: Chinchilla's two-variable law alone picks
    a model of hundreds of millions of parameters that repeats the data hundreds of
    times; a model the data can feed trains on at least 20 tokens per parameter
    within 4 passes over it (Muennighoff et al. 2023)."""
    from fmforge.plan.scaling import CHINCHILLA

    hw = get_hardware("h100-sxm")
    size = size_model(hw, 3600, ladder={"law": CHINCHILLA.to_dict()}, data_tokens=2e6)
    assert 20 * size.non_embedding_params <= 4 * 2e6
    epochs = size.tokens / 2e6
    assert epochs > 16
    said = " ".join(size.notes)
    assert f"repeat its data {epochs:,.1f} times" in said and "2M of data" in said


@pytest.mark.parametrize("artifact", ["tokens", "data_card"])
def test_model_auto_sizes_for_the_data_the_run_has(tmp_path, monkeypatch, artifact):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "name: fed\ndata:\n  sources: [{name: s, paths: ['*.txt']}]\nmodel: auto\n"
        "train: {max_minutes: 60, max_steps: null, device: cpu, dtype: float32}\nplan: {mfu: 0.3}\n")
    unlimited = size_model(get_hardware("cpu", cpu_dtype="float32"), 3600, dtype="float32", mfu=0.3)
    run = tmp_path / "runs" / "fed"
    if artifact == "tokens":
        (run / "tokens").mkdir(parents=True)
        (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 1_000_000}))
    else:
        (run / "data").mkdir(parents=True)
        (run / "data" / "data_card.json").write_text(json.dumps({"splits": {"train": {"bytes": 4_000_000}}}))
    _, size, reused = resolve_auto_model(load_config(tmp_path / "c.yaml"))
    assert not reused
    assert 20 * unlimited.non_embedding_params > 4 * 1e6  # without the data, a model too big for it
    assert 20 * size.non_embedding_params <= 4 * 1e6
    assert f"repeat its data {size.tokens / 1e6:,.1f} times" in " ".join(size.notes)
    assert "1M of data" in " ".join(size.notes)


def test_model_auto_sizes_again_when_the_data_arrives_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "name: late\ndata:\n  sources: [{name: s, paths: ['*.txt']}]\nmodel: auto\n"
        "train: {max_minutes: 60, max_steps: null, device: cpu, dtype: float32}\nplan: {mfu: 0.3}\n")
    _, blind, _ = resolve_auto_model(load_config(tmp_path / "c.yaml"))
    run = tmp_path / "runs" / "late"
    (run / "tokens").mkdir(parents=True)
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 1_000_000}))
    _, fed, reused = resolve_auto_model(load_config(tmp_path / "c.yaml"))
    assert not reused and fed.params < blind.params
    assert resolve_auto_model(load_config(tmp_path / "c.yaml"))[2]  # the same data: the same decision
    # once its tokenizer is trained, new data keeps the model and says how to size again
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer.json").write_text("{}")
    (run / "tokens" / "meta.json").write_text(json.dumps({"train_tokens": 100_000_000}))
    _, kept, reused = resolve_auto_model(load_config(tmp_path / "c.yaml"))
    assert reused and kept.model_keys() == fed.model_keys()
    assert any("delete" in n and "model_size.json" in n for n in kept.notes)
