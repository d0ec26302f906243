"""Continued pretraining: method full on the run's own token shards, encoded with
the base model's tokenizer (tokenizer.path), starting from the base's weights."""

from __future__ import annotations

import random

import pytest
import torch

from fmforge.config import config_from_dict
from fmforge.finetune.stage import run_finetune


@pytest.mark.slow
def test_full_finetune_on_token_shards_from_the_base_tokenizer(tmp_path, ft, tiny_base):
    from transformers import AutoModelForCausalLM

    from fmforge.pipeline import run_pipeline
    from fmforge.rundir import RunDir

    rng = random.Random(3)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):  # a "domain": sentences in a fixed word order, which the base does not know
        words = ft.WORDS[:6] * 6
        start = rng.randrange(6)
        (corpus / f"doc{i}.txt").write_text(" ".join(words[start:start + 30]) + "\n")
    cfg = config_from_dict({
        "name": "cpt", "out_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "domain", "paths": [str(corpus / "*.txt")]}], "val_fraction": 0.1,
                 "dedup": "none"},
        "tokenizer": {"path": str(tiny_base), "vocab_size": 260},
        "finetune": {"base": str(tiny_base), "method": "full", "train_on": "tokens", "seq_len": 16,
                     "micro_batch_size": 8, "max_steps": 40, "lr": 3e-3, "device": "cpu",
                     "dtype": "float32", "tensorboard": False, "log_every": 5, "eval_every": 40}})
    run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    meta = RunDir(cfg.run_dir).tokens_meta()
    assert meta["train_tokens"] > 0
    summary = run_finetune(cfg)
    assert summary["train_on"] == "tokens" and summary["trainable_share"] == 1.0
    assert summary["val_loss"] < 0.5 * summary["first_loss"]  # the domain's order is learned
    model = AutoModelForCausalLM.from_pretrained(summary["output"])  # a standalone HF model
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base))
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
