"""The trained tokenizer loads in transformers; token files hold every document
followed by the end-of-document token; token byte lengths are exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from fmforge.config import load_config
from fmforge.data.shards import iter_split_texts
from fmforge.pipeline import run_pipeline
from fmforge.tokenizer.load import decode_bytes, load_tokenizer, token_byte_lengths, token_byte_table
from fmforge.tokenizer.tokens import open_tokens, token_dtype


@pytest.fixture
def tokenized_run(tmp_path, make_tiny_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_tiny_config(tmp_path)))
    run, _ = run_pipeline(load_config(path), stages=("data", "tokenizer", "tokenize"))
    return run


def test_tokenizer_loads_in_transformers(tokenized_run):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tokenized_run.tokenizer))
    ours = load_tokenizer(tokenized_run)
    text = "def alpha_3(beta, gamma):\n    return beta + gamma * 2 ünïcødé"
    assert hf.encode(text) == ours.encode(text).ids
    assert hf.decode(hf.encode(text)) == text
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == 0
    assert hf.pad_token == "<|pad|>"
    assert len(hf) == 300


def test_token_files_hold_documents_then_eos(tokenized_run):
    meta = json.loads((tokenized_run.tokens / "meta.json").read_text())
    assert meta["dtype"] == "uint16"
    tok = load_tokenizer(tokenized_run)
    train = open_tokens(tokenized_run, "train")
    texts = list(iter_split_texts(tokenized_run.data, "train"))
    assert len(train) == meta["train_tokens"]
    assert int((np.asarray(train) == meta["eos_id"]).sum()) == len(texts) == meta["train_documents"]
    first = tok.encode(texts[0]).ids
    assert list(train[: len(first) + 1]) == first + [meta["eos_id"]]
    # The exact bytes of the whole split come back from the token ids.
    table = token_byte_table(tok, meta["vocab_size"])
    assert decode_bytes(table, train) == "".join(texts).encode("utf-8")
    lengths = token_byte_lengths(tok, meta["vocab_size"])
    assert int(lengths[np.asarray(train)].sum()) == meta["train_bytes"]


def test_dtype_follows_vocab_size():
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
