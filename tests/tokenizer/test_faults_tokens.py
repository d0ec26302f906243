"""Fault injection on the token side: a token file (one of a split's files) cut
mid-record or shorter than ``meta.json`` says, and a damaged data shard under the tokenizer stages. Each
stops with a message that names the file and the command that rebuilds it
(a ``ValueError``: the CLI prints it without a traceback)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fmforge.data.shards import list_shards
from fmforge.tokenizer import encode
from fmforge.tokenizer.tokens import open_tokens
from fmforge.tokenizer.train import run_tokenizer_stage

pytestmark = pytest.mark.faults


@pytest.fixture
def tokenized(direct_run, make_docs):
    cfg, run = direct_run(make_docs(80, 1, "wiki"), make_docs(20, 2, "wiki"))
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    return cfg, run


def _says_rebuild_tokens(message: str, path) -> None:
    assert str(path) in message
    assert "fmforge tokenize" in message and "--force" in message


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_token_file_cut_mid_record_is_named(tokenized, split):
    _, run = tokenized
    path = run.tokens / split / "00000.bin"
    meta = json.loads((run.tokens / "meta.json").read_text())
    assert meta["dtype"] == "uint16"
    os.truncate(path, path.stat().st_size - 1)  # half a token at the end
    with pytest.raises(ValueError) as e:
        open_tokens(run, split)
    _says_rebuild_tokens(str(e.value), path)
    assert "truncated" in str(e.value)


def test_a_token_file_shorter_than_meta_is_named(tokenized):
    _, run = tokenized
    path = run.tokens / "train" / "00000.bin"
    meta = json.loads((run.tokens / "meta.json").read_text())
    os.truncate(path, 2 * (meta["train_tokens"] - 100))  # whole tokens, but 100 fewer
    with pytest.raises(ValueError) as e:
        open_tokens(run, "train")
    _says_rebuild_tokens(str(e.value), path)
    assert str(meta["train_tokens"]) in str(e.value) and str(meta["train_tokens"] - 100) in str(e.value)


def test_a_missing_token_file_is_named(tokenized):
    _, run = tokenized
    path = run.tokens / "val" / "00000.bin"
    path.unlink()
    with pytest.raises(ValueError) as e:
        open_tokens(run, "val")
    _says_rebuild_tokens(str(e.value), path)


def test_an_intact_token_file_opens_with_meta_s_count(tokenized):
    _, run = tokenized
    meta = json.loads((run.tokens / "meta.json").read_text())
    for split in ("train", "val"):
        tokens = open_tokens(run, split)
        assert len(tokens) == meta[f"{split}_tokens"] > 0
        assert tokens.dtype == np.uint16


@pytest.mark.parametrize("stage", ["tokenizer", "tokenize"])
def test_a_damaged_data_shard_stops_the_tokenizer_stages_naming_it(direct_run, make_docs, stage):
    cfg, run = direct_run(make_docs(80, 1, "wiki"), make_docs(20, 2, "wiki"))
    if stage == "tokenize":
        run_tokenizer_stage(cfg, run)
    [shard] = list_shards(run.data, "train")
    blob = shard.read_bytes()
    shard.write_bytes(blob[: len(blob) // 2])  # the footer is gone
    with pytest.raises(ValueError) as e:
        if stage == "tokenizer":
            run_tokenizer_stage(cfg, run)
        else:
            encode.run_tokenize_stage(cfg, run)
    assert str(shard) in str(e.value)
    assert "fmforge data CONFIG --force" in str(e.value)
    assert not run.tokens.exists()  # nothing half-made is left for training
