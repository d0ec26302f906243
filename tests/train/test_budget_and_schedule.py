"""A budget in minutes, a WSD run extended from where its decay began, the
global batch in tokens, and what training leaves for TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fmforge.config import ConfigError, TrainConfig, load_config
from fmforge.pipeline import run_pipeline
from fmforge.rundir import read_metrics
from fmforge.train.budget import warn_if_cpu_shared
from fmforge.train.checkpoint import list_checkpoints
from fmforge.train.optim import lr_at


def _write(tmp_path: Path, raw: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


TRAIN_ONLY = ("data", "tokenizer", "tokenize", "train")


def _train_losses(tmp_path: Path, make_tiny_config, name: str, **train) -> list[float]:
    """Train the tiny config with these train settings in its own directory; the
    logged loss of every step."""
    raw = make_tiny_config(tmp_path / name, train=train)
    run, _ = run_pipeline(load_config(_write(tmp_path, raw, f"{name}.yaml")), stages=TRAIN_ONLY)
    return [r["loss"] for r in read_metrics(run.metrics)]


def test_a_minutes_budget_fixes_the_steps_and_follows_that_schedule(tmp_path, make_tiny_config,
                                                                   monkeypatch, capsys):
    # Another program's work on the CPU while the steps are timed: said, since it
    # makes the (final) step count smaller than on an idle machine.
    busy = torch.get_num_threads() + 1.5
    monkeypatch.setattr("fmforge.train.budget.os.getloadavg", lambda: (busy, busy, busy))
    raw = make_tiny_config(tmp_path, train={"max_steps": None, "max_minutes": 0.05,
                                            "warmup_steps": 8, "eval_every": 1000,
                                            "checkpoint_every": 1000})
    run, _ = run_pipeline(load_config(_write(tmp_path, raw)), stages=TRAIN_ONLY)
    budget = json.loads((run.root / "train_budget.json").read_text())
    steps = budget["max_steps"]
    summary = run.stage_record("train")["summary"]
    assert summary["steps"] == steps > 8
    # The stage spent about the budget (3 s): not far over it, nor a small fraction.
    assert 0.5 * 3.0 < summary["stage_seconds"] < 3.0 * 1.5 + 1
    # Every step's learning rate is the one a run given `steps` from the start takes.
    cfg = TrainConfig(**{**raw["train"], "max_steps": steps, "max_minutes": None})
    logged = {r["step"]: r["lr"] for r in read_metrics(run.metrics)}
    assert len(logged) == steps
    assert all(logged[s + 1] == lr_at(s, steps, cfg) for s in range(steps))
    ckpt_state = json.loads((list_checkpoints(run.checkpoints)[-1][1] / "trainer_state.json").read_text())
    assert ckpt_state["max_steps"] == steps
    assert f"load average was {busy:.1f}" in capsys.readouterr().err


def test_no_warning_when_only_training_loads_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr("fmforge.train.budget.os.getloadavg", lambda: (2.5, 2.0, 2.0))
    warn_if_cpu_shared(2)  # 2 training threads; 0.5 of noise is not another program
    warn_if_cpu_shared(1)  # 1.5 more than training's one thread is
    assert capsys.readouterr().err.count("load average was 2.5") == 1


def test_a_budget_needs_its_probe_steps_in_warmup():
    with pytest.raises(ValueError, match="warmup_steps >= 8"):
        TrainConfig(max_minutes=5, warmup_steps=2)
    TrainConfig(max_minutes=5, warmup_steps=0, schedule="constant")  # constant: no dependence


def test_a_finished_wsd_run_is_extended_from_where_its_decay_began(tmp_path, make_tiny_config):
    train = {"max_steps": 20, "schedule": "wsd", "decay_fraction": 0.25, "warmup_steps": 2,
             "checkpoint_every": 4, "keep_checkpoints": 1, "eval_every": 1000}
    path = _write(tmp_path, make_tiny_config(tmp_path, train=train))
    run, _ = run_pipeline(load_config(path))
    # keep_checkpoints=1, yet the checkpoint where the decay began (step 15) is kept.
    assert [s for s, _ in list_checkpoints(run.checkpoints)] == [15, 20]

    run_pipeline(load_config(path, ["train.max_steps=40"]))
    extended = {r["step"]: r["loss"] for r in read_metrics(run.metrics)}
    # A fresh 40-step run for comparison, in its own directory.
    fresh_raw = make_tiny_config(tmp_path / "fresh", train={**train, "max_steps": 40})
    fresh, _ = run_pipeline(load_config(_write(tmp_path, fresh_raw, "fresh.yaml")))
    reference = {r["step"]: r["loss"] for r in read_metrics(fresh.metrics)}
    assert extended == reference
    aside = list((run.root / "checkpoints.previous").glob("*/step-000020"))  # kept, not deleted
    assert len(aside) == 1 and "max_steps changed from 20 to 40" in (aside[0].parent / "reason.txt").read_text()


def test_each_change_of_training_keeps_the_earlier_checkpoints(tmp_path, make_tiny_config):
    # Two changes in a row: the first lineage's checkpoints must survive the second.
    train = {"max_steps": 6, "checkpoint_every": 3, "eval_every": 1000}
    path = _write(tmp_path, make_tiny_config(tmp_path, train=train))
    run, _ = run_pipeline(load_config(path))
    run_pipeline(load_config(path, ["train.lr=0.002"]))
    run_pipeline(load_config(path, ["train.lr=0.003"]))
    asides = sorted((run.root / "checkpoints.previous").iterdir())
    assert len(asides) == 2
    for aside in asides:
        assert [s for s, _ in list_checkpoints(aside)] == [3, 6]
        assert "changed since the last checkpoint" in (aside / "reason.txt").read_text()
    assert [s for s, _ in list_checkpoints(run.checkpoints)] == [3, 6]


def test_global_batch_tokens_sets_accumulation_and_trains_like_the_old_fields(tmp_path, make_tiny_config):
    by_tokens = _train_losses(tmp_path, make_tiny_config, "a", max_steps=6, micro_batch_size=4,
                              global_batch_tokens=4 * 32 * 2)
    by_steps = _train_losses(tmp_path, make_tiny_config, "b", max_steps=6, micro_batch_size=4,
                             grad_accum_steps=2)
    assert len(by_tokens) == 6
    assert by_tokens == by_steps
    with pytest.raises(ConfigError, match="not a multiple"):
        TrainConfig(micro_batch_size=4, global_batch_tokens=1000).grad_accum_for(32, 1)


def test_activation_checkpointing_changes_memory_not_the_losses(tmp_path, make_tiny_config):
    plain = _train_losses(tmp_path, make_tiny_config, "plain", max_steps=5)
    recomputed = _train_losses(tmp_path, make_tiny_config, "ac", max_steps=5,
                               activation_checkpointing=True)
    assert len(plain) == 5
    assert plain == pytest.approx(recomputed, rel=1e-6)


def test_tensorboard_gets_the_logged_scalars(tmp_path, make_tiny_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = make_tiny_config(tmp_path, train={"max_steps": 10, "eval_every": 5})
    run, _ = run_pipeline(load_config(_write(tmp_path, raw)), stages=TRAIN_ONLY)
    events = EventAccumulator(str(run.root / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s"} <= tags
    logged = [r["loss"] for r in read_metrics(run.metrics)]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6)


def test_float16_is_refused_without_cuda(tmp_path, make_tiny_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    raw = make_tiny_config(tmp_path, train={"dtype": "float16"})
    with pytest.raises(ValueError, match="float16 needs CUDA"):
        run_pipeline(load_config(_write(tmp_path, raw)))


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, make_tiny_config):
    """train.compile runs the model through torch.compile (inductor, a C++ compiler
    on CPU); the losses agree with eager to float32 rounding."""
    eager = _train_losses(tmp_path, make_tiny_config, "eager", max_steps=4)
    compiled = _train_losses(tmp_path, make_tiny_config, "compiled", max_steps=4, compile=True)
    assert len(eager) == 4
    assert compiled == pytest.approx(eager, rel=1e-4)
