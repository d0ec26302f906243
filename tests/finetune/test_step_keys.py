"""The optimization keys under ``finetune:`` are ``train:``'s, and each one acts:
issue 20 found ``beta1``, ``beta2`` and ``max_skipped_steps`` silently replaced by
their defaults in the fine-tune's copy of the training settings."""

from __future__ import annotations

import random

import pytest
import torch

from fmforge.finetune.stage import run_finetune
from fmforge.train.loop import TrainingDiverged


@pytest.fixture(scope="module")
def examples(tmp_path_factory, ft):
    d = tmp_path_factory.mktemp("keys")
    rng = random.Random(3)
    return ft.write_jsonl(d / "train.jsonl", [ft.reverse_example(rng) for _ in range(24)])


def test_adam_betas_and_weight_decay_under_finetune_reach_the_optimizer(tmp_path, ft, tiny_base, examples):
    cfg = ft.finetune_config(tmp_path / "run", tiny_base, [examples], max_steps=2, beta1=0.5, beta2=0.6,
                             weight_decay=0.05, checkpoint_every=2)
    run_finetune(cfg)
    saved = torch.load(cfg.run_dir / "finetune" / "checkpoints" / "step-000002" / "optimizer.pt")
    groups = saved["param_groups"]
    assert {tuple(g["betas"]) for g in groups} == {(0.5, 0.6)}
    assert 0.05 in {g["weight_decay"] for g in groups}


def test_a_finetune_whose_steps_are_all_non_finite_stops_after_max_skipped_steps(
        tmp_path, ft, tiny_base, examples, monkeypatch):
    import fmforge.finetune.trainer as trainer

    real = trainer.loss_sum

    def poisoned(model, batch, device):
        summed, n = real(model, batch, device)
        return summed * float("nan"), n

    monkeypatch.setattr(trainer, "loss_sum", poisoned)
    cfg = ft.finetune_config(tmp_path / "run", tiny_base, [examples], max_steps=8, max_skipped_steps=3)
    with pytest.raises(TrainingDiverged, match=r"3 consecutive steps .* finetune\.lr"):
        run_finetune(cfg)


def test_activation_checkpointing_under_finetune_recomputes_the_layers_and_learns_the_same(
        tmp_path, ft, tiny_base, examples, monkeypatch):
    """With finetune.activation_checkpointing each decoder layer runs again in the
    backward pass (its MLP's calls counted by a hook), and the losses are those of a
    run without it."""
    import fmforge.finetune.stage as stage
    from fmforge.rundir import read_metrics

    calls = {}
    real_load = stage.load_base

    def counting_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        # a module inside the layer: a recompute in the backward pass calls it again
        # (a pre-hook: torch stops a recompute once it has what backward needs, which
        # can be before the module's forward returns)
        mlp = model.model.layers[0].mlp
        mlp.register_forward_pre_hook(lambda *a: calls.__setitem__(run, calls.get(run, 0) + 1))
        return model

    monkeypatch.setattr(stage, "load_base", counting_load)
    losses = {}
    for run, on in (("plain", False), ("checkpointed", True)):
        cfg = ft.finetune_config(tmp_path / run, tiny_base, [examples], max_steps=3, lr=1e-2,
                                 activation_checkpointing=on)
        run_finetune(cfg)
        losses[run] = [r["loss"] for r in read_metrics(cfg.run_dir / "finetune" / "metrics.jsonl")
                       if "loss" in r]
    assert losses["checkpointed"] == pytest.approx(losses["plain"], rel=1e-5)
    assert calls["checkpointed"] > calls["plain"]  # layer 0 again in each backward
