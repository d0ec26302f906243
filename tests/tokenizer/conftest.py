"""Runs for the tokenizer tests: data shards written directly (any text, no
cleaning), then the tokenizer and tokenize stages called as functions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from fmforge.config import load_config
from fmforge.data.shards import write_shards
from fmforge.rundir import RunDir

WORDS = ("alpha beta gamma delta naïve café Ünïcödé 東京 данные 123 4567 x=y+1; "
         "don't we'll they're it's").split()


def docs(n: int, seed: int = 0, source: str = "a") -> list[tuple[str, str, str]]:
    """``n`` (id, text, source) rows of short mixed-script text."""
    rng = random.Random(seed)
    return [(f"{source}-{seed}-{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25)))
             + rng.choice(["\n", ".\n\n", "!", ""]), source) for i in range(n)]


def make_run(tmp_path: Path, make_tiny_config, train: list, val: list, shard_max_docs: int = 10_000,
             **tokenizer) -> tuple:
    """(cfg, run) with the given rows as the data stage's shards and a data card."""
    raw = make_tiny_config(tmp_path)
    raw["tokenizer"].update(tokenizer)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run = RunDir(cfg.run_dir)
    run.data.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("val", val)):
        write_shards(run.data, split, rows, shard_max_docs)
    sources = sorted({r[2] for r in [*train, *val]})
    card = {"sources": {s: {"name": s} for s in sources},
            "splits": {split: {"documents": len(rows), "bytes": sum(len(r[1].encode()) for r in rows)}
                       for split, rows in (("train", train), ("val", val))}}
    (run.data / "data_card.json").write_text(json.dumps(card))
    (run.root / "config.yaml").write_text(cfg.to_yaml())
    return cfg, run


@pytest.fixture
def direct_run(tmp_path, make_tiny_config):
    """make_run bound to this test's tmp_path."""
    return lambda train, val, **kw: make_run(tmp_path, make_tiny_config, train, val, **kw)


@pytest.fixture
def make_docs():
    """The docs() row maker."""
    return docs
