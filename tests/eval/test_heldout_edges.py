"""A model whose embedding has more rows than its tokenizer has ids (padded for
speed: Pythia's 50,304 rows for GPT-NeoX's 50,277-id tokenizer) is evaluated on
the run's tokens, not refused as another tokenizer's; a model with fewer rows
than the tokens need is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

import fmforge.eval.heldout as heldout
from fmforge.config import ModelConfig
from fmforge.eval.heldout import HeldoutSettings, evaluate_heldout
from fmforge.model.transformer import Transformer


class _Run:
    def __init__(self, root: Path, meta: dict):
        self.root, self.tokens, self._meta = root, root / "tokens", meta

    def tokens_meta(self):
        return self._meta


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({"<eos>": 0, "<unk>": 1, "a": 2, "b": 3, "c": 4}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens(["<eos>"])
    return tok


def test_a_padded_vocabulary_is_evaluated_and_a_short_one_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(heldout, "source_streams", lambda run, tok, eos: {"x": np.array([0, 2, 3, 0, 4, 0])})
    torch.manual_seed(0)
    padded = Transformer(ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, seq_len=4)).eval()
    out = evaluate_heldout(padded, _tokenizer(), 0, _Run(tmp_path, {"val_tokens": 6, "vocab_size": 5}),
                           HeldoutSettings(seq_len=4), torch.device("cpu"))
    # 5 targets; "a", "b", "c" are a byte each, <eos> none
    assert out["overall"]["tokens"] == 5 and out["overall"]["bytes"] == 3
    with pytest.raises(ValueError, match="vocabulary of 9 ids but the checkpoint's model has 8"):
        evaluate_heldout(padded, _tokenizer(), 0, _Run(tmp_path, {"val_tokens": 6, "vocab_size": 9}),
                         HeldoutSettings(seq_len=4), torch.device("cpu"))
