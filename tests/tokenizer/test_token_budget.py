"""A training mixture given in tokens: data.total_tokens and a share per source.
The realised token counts per source come out at the shares (within a document
or so), counted directly from the token file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmforge.config import ConfigError, config_from_dict
from fmforge.data.stage import run_data_stage
from fmforge.rundir import RunDir
from fmforge.tokenizer.encode import run_tokenize_stage
from fmforge.tokenizer.tokens import open_tokens
from fmforge.tokenizer.train import run_tokenizer_stage


def _cfg(tmp_path, **data):
    return config_from_dict({
        "name": "b", "seed": 3, "out_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "short", "paths": [str(tmp_path / "s" / "*.txt")], "share": 0.5},
                             {"name": "long", "paths": [str(tmp_path / "l" / "*.txt")], "share": 0.5}],
                 "min_chars": 1, "val_fraction": 0.0, **data},
        "tokenizer": {"vocab_size": 300}, "model": {"seq_len": 16},
    })


def test_shares_of_a_token_budget_are_met(tmp_path):
    for i in range(200):  # short documents: few tokens per source
        (tmp_path / "s").mkdir(exist_ok=True)
        (tmp_path / "s" / f"{i:03d}.txt").write_text(f"short note {i}\n")
    for i in range(40):  # long documents: many more tokens
        (tmp_path / "l").mkdir(exist_ok=True)
        (tmp_path / "l" / f"{i:03d}.txt").write_text(f"a long chapter {i} " + "with many words " * 40)
    cfg = _cfg(tmp_path, total_tokens=8_000)
    run = RunDir(tmp_path / "run")
    run_data_stage(cfg, run)
    run_tokenizer_stage(cfg, run)
    run_tokenize_stage(cfg, run)
    meta = json.loads((run.tokens / "meta.json").read_text())
    offsets = np.load(run.tokens / "train.docs.npy")
    src = np.load(run.tokens / "train.sources.npy")
    per_source = np.bincount(src, weights=np.diff(offsets), minlength=2)
    assert len(open_tokens(run, "train")) == offsets[-1] == meta["train_tokens"] == per_source.sum()
    # each source within a few of its documents of half the budget
    names = meta["sources"]
    for i, name in enumerate(names):
        doc_tokens = meta["mixture"]["per_source"][name]["tokens_before"] / max(1, int((src == i).sum()))
        assert abs(per_source[i] - 4_000) < 4_000 * 0.15 + 5 * doc_tokens, (name, per_source[i])
        assert meta["mixture"]["per_source"][name]["tokens"] == per_source[i]
    # the short source had far fewer tokens, so it is repeated, the long one subsampled
    assert meta["mixture"]["per_source"]["short"]["weight"] > 1 > meta["mixture"]["per_source"]["long"]["weight"]


def test_a_budget_needs_shares_on_every_source_and_no_weights(tmp_path):
    with pytest.raises(ConfigError, match="share on every source"):
        config_from_dict({"name": "x", "data": {"total_tokens": 100, "sources": [
            {"name": "a", "paths": ["a"], "share": 1.0}, {"name": "b", "paths": ["b"]}]}})
    with pytest.raises(ConfigError, match="sum to 1"):
        config_from_dict({"name": "x", "data": {"total_tokens": 100, "sources": [
            {"name": "a", "paths": ["a"], "share": 0.3}, {"name": "b", "paths": ["b"], "share": 0.3}]}})
