"""Shared fixtures: a tiny corpus and config that run the whole pipeline in seconds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("FMFORGE_NO_PROGRESS", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never write the user's ~/.cache (the CPU peak is measured once per session)."""
    os.environ["FMFORGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("fmforge-cache"))

WORDS = ("alpha beta gamma delta value total count index result item name data "
         "left right start stop").split()


def make_corpus(root: Path, n_docs: int = 40, seed: int = 0) -> Path:
    """Small, structured, code-like documents: learnable, so the loss must fall."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = []
        for _ in range(rng.randint(4, 9)):
            fn, a, b = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
            lines.append(f"def {fn}_{i % 7}({a}, {b}):\n    return {a} + {b} * {rng.randint(0, 9)}\n")
        (root / f"doc{i:03d}.py").write_text("\n".join(lines))
    return root


def tiny_config(tmp_path: Path, **sections) -> dict:
    corpus = make_corpus(tmp_path / "corpus")
    raw = {
        "name": "tiny",
        "out_dir": str(tmp_path / "run"),
        "seed": 7,
        "data": {"sources": [{"name": "code", "paths": [str(corpus / "*.py")]}],
                 "min_chars": 16, "val_fraction": 0.1},
        "tokenizer": {"vocab_size": 300, "min_frequency": 1},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "seq_len": 32},
        "train": {"max_steps": 20, "micro_batch_size": 8, "lr": 3e-3, "warmup_steps": 2,
                  "log_every": 1, "eval_every": 10, "eval_batches": 2,
                  "checkpoint_every": 10, "num_threads": 1},
        "eval": {"batch_size": 8},
    }
    for key, value in sections.items():
        raw[key].update(value)
    return raw


@pytest.fixture
def tiny_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    return path


@pytest.fixture(scope="session")
def make_tiny_config():
    """The tiny_config function, for tests that adjust sections."""
    return tiny_config
