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
