"""Tiny trained runs to export: tied embeddings with grouped-query attention, and an
untied head with plain multi-head attention and another rope base."""

from __future__ import annotations

import pytest
import torch

from fmforge.config import config_from_dict
from fmforge.pipeline import run_pipeline
from fmforge.rundir import RunDir

SHAPES = {
    "gqa-tied": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "tie_embeddings": True},
    "mha-untied": {"d_model": 32, "n_heads": 4, "n_kv_heads": 4, "tie_embeddings": False,
                   "rope_theta": 500_000.0, "norm_eps": 1e-6},
}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, make_tiny_config) -> dict[str, RunDir]:
    """Trained for a few steps (so the weights are not their initial values) with a
    window of 64 tokens, room for a prompt and 30 greedy tokens."""
    runs = {}
    for name, model in SHAPES.items():
        raw = make_tiny_config(tmp_path_factory.mktemp(name),
                               model={**model, "n_layers": 2, "seq_len": 64},
                               train={"max_steps": 12, "checkpoint_every": 12, "eval_every": 12,
                                      "micro_batch_size": 4})
        run, _ = run_pipeline(config_from_dict(raw), stages=("data", "tokenizer", "tokenize", "train"))
        runs[name] = run
    return runs


@pytest.fixture(params=list(SHAPES))
def tiny_run(request, tiny_runs) -> RunDir:
    return tiny_runs[request.param]


@pytest.fixture(scope="session")
def greedy():
    """Greedy decoding by full recomputation (argmax of the last position's logits),
    the reference every exported model must reproduce token for token."""

    @torch.no_grad()
    def decode(model, ids: list[int], n: int) -> list[int]:
        ids = list(ids)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[-n:]

    return decode
