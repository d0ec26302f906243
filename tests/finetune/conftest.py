"""A tiny Llama base with a word-level tokenizer, and a synthetic instruction task it
cannot do: answer with the words of the question in reverse order. Nothing is
downloaded: the base is a ``LlamaForCausalLM`` made from a config and saved."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "rock", "star"]
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]


def make_tokenizer(path: Path, words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + ["<unk>", "reverse", "repeat", "please"] + list(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   unk_token="<unk>", additional_special_tokens=SPECIALS[2:])
    fast.save_pretrained(str(path))
    return fast


def make_base(path: Path, seed: int = 0, d: int = 64, layers: int = 2, tie: bool = False,
              init: float = 0.25) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(path)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=tie, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None, initializer_range=init)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


def reverse_example(rng: random.Random, chat: bool = True) -> dict:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 4))]
    question, answer = " ".join(words), " ".join(reversed(words))
    if chat:
        return {"messages": [{"role": "user", "content": "reverse " + question},
                             {"role": "assistant", "content": answer}]}
    return {"prompt": "reverse " + question + " please", "completion": " " + answer}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="session")
def reverse_data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("reverse")
    rng = random.Random(0)
    train = write_jsonl(d / "train.jsonl", [reverse_example(rng) for _ in range(600)])
    val = write_jsonl(d / "val.jsonl", [reverse_example(rng) for _ in range(40)])
    return train, val


def finetune_config(out: Path, base: Path, data: list[Path], val: list[Path] | None = None, **ft):
    """A RunConfig with only a finetune section (no data section: JSONL examples)."""
    from fmforge.config import config_from_dict

    section = {"base": str(base), "data": [str(p) for p in data], "seq_len": 64, "micro_batch_size": 8,
               "device": "cpu", "dtype": "float32", "tensorboard": False, "log_every": 1,
               "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    if val:
        section["val_data"] = [str(p) for p in val]
    for key, value in ft.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return config_from_dict({"name": out.name, "out_dir": str(out), "finetune": section})


def copy_example(rng: random.Random) -> dict:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 4))]
    return {"messages": [{"role": "user", "content": "repeat " + " ".join(words)},
                         {"role": "assistant", "content": " ".join(words)}]}


@pytest.fixture(scope="session")
def ft():
    """This module's helpers (tests import nothing from conftest under importlib mode)."""
    import sys

    return sys.modules[__name__]
