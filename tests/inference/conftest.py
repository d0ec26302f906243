"""A tiny random Transformer and a byte-level BPE tokenizer trained in-test."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from fmforge.config import ModelConfig
from fmforge.inference.engine import Engine
from fmforge.inference.loading import TrainedModel
from fmforge.model.transformer import Transformer

EOS = "<|endoftext|>"
TEXTS = ["def alpha(beta, gamma):\n    return beta + gamma * 2\n",
         "café crème brûlée, 5 € — naïve 😀 façade",
         "the quick brown fox jumps over the lazy dog"] * 4


@pytest.fixture(scope="session")
def byte_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, min_frequency=1, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TEXTS, trainer)
    return tok


def tiny_model(vocab_size: int, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    fields = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "seq_len": 96,
              "init_std": 0.1, **kw}
    return Transformer(ModelConfig(vocab_size=vocab_size, **fields)).eval()


@pytest.fixture(scope="session")
def trained(byte_tokenizer) -> TrainedModel:
    model = tiny_model(byte_tokenizer.get_vocab_size())
    return TrainedModel(model=model, tokenizer=byte_tokenizer, device=torch.device("cpu"), step=0,
                        eos_id=byte_tokenizer.token_to_id(EOS))


@pytest.fixture
def engine(trained) -> Engine:
    return Engine(trained, max_batch=8)


@pytest.fixture(scope="session")
def make_model():
    """tiny_model(vocab_size, seed=0, **model config fields)."""
    return tiny_model


class _Scripted(Engine):
    """An engine whose 'model' emits a fixed id sequence (the model still runs):
    the token boundaries are then known exactly."""

    def __init__(self, trained, script: list[int]):
        super().__init__(trained)
        self.script = script

    def _sample(self, seqs, logits):
        for seq in seqs:
            seq.accept(self.script[seq.n_generated])


@pytest.fixture(scope="session")
def scripted():
    """``scripted(trained, ids)``: an Engine that generates exactly ``ids`` (tests import
    nothing from conftest under importlib mode)."""
    return _Scripted
