"""A tiny trained run with two sources (code and prose), checkpoints at steps 6
and 12, shared by the eval tests (about 10 s to build, once per session)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fmforge.config import config_from_dict
from fmforge.pipeline import run_pipeline
from fmforge.rundir import RunDir

PROSE = ("the river runs past the old mill and the children walk to school along the bank "
         "while the baker opens his shop and the bells ring over the quiet town").split()


def make_prose(root: Path, n_docs: int = 30, seed: int = 1) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(PROSE) for _ in range(rng.randint(6, 14))).capitalize() + "."
                     for _ in range(rng.randint(3, 7))]
        (root / f"note{i:03d}.txt").write_text(" ".join(sentences) + "\n")
    return root


def tiny_two_source_config(tmp: Path, make_tiny_config, **sections) -> dict:
    raw = make_tiny_config(tmp, **sections)
    prose = make_prose(tmp / "prose")
    raw["data"]["sources"].append({"name": "prose", "paths": [str(prose / "*.txt")]})
    raw["data"]["val_fraction"] = 0.2
    return raw


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, make_tiny_config) -> RunDir:
    tmp = tmp_path_factory.mktemp("evalrun")
    raw = tiny_two_source_config(
        tmp, make_tiny_config,
        model={"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "seq_len": 32},
        train={"max_steps": 12, "checkpoint_every": 6, "eval_every": 6, "keep_checkpoints": 3,
               "micro_batch_size": 4},
        eval={"batch_size": 4, "report_prompts": ["def ", "The "], "report_max_new_tokens": 8})
    run, _ = run_pipeline(config_from_dict(raw), stages=("data", "tokenizer", "tokenize", "train"))
    return run
