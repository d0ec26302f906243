"""The GPT-4 split against the published cl100k regex, and the trained tokenizer as
transformers sees it: chat template text, role markers as single tokens with the
recorded ids, exact round trips on non-ASCII text."""

from __future__ import annotations

import json

import pytest
from tokenizers import Regex, pre_tokenizers

from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.train import GPT4_SPLIT, run_tokenizer_stage

# tiktoken's cl100k_base pattern, as published (possessive quantifiers; `regex` supports them).
CL100K = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
          r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

SAMPLES = [
    "I'm here, they'll go; we've 1234567 and 12.5%!!  \n\n  x",
    "DON'T You're 3.14159 héllo 世界  \t\n",
    "a\r\n\r\nb   c\n",
    "def f(x):\n    return x**2  # 100000000 ünïcödé\n\n\n",
    "Price: $1,000,000.00 -- 'quoted' \"double\" ...?!",
]


def split_pieces(text: str) -> list[str]:
    return [p for p, _ in pre_tokenizers.Split(Regex(GPT4_SPLIT), behavior="isolated").pre_tokenize_str(text)]


@pytest.mark.parametrize("text", SAMPLES)
def test_gpt4_split_matches_cl100k(text):
    regex = pytest.importorskip("regex")
    assert split_pieces(text) == regex.findall(CL100K, text)


def test_gpt4_split_groups_digits_by_three_and_keeps_contractions():
    assert split_pieces("1234567") == ["123", "456", "7"]
    assert split_pieces("we'll don't I'M") == ["we", "'ll", " don", "'t", " I", "'M"]
    # GPT-2's split keeps a digit run whole
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert [p for p, _ in gpt2.pre_tokenize_str("1234567")] == ["1234567"]


@pytest.fixture
def trained(direct_run, make_docs):
    cfg, run = direct_run(make_docs(300, 1), make_docs(20, 2), vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    return run


def test_transformers_loads_it_and_applies_the_chat_template(trained):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(trained.tokenizer))
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Ça va?"}]
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|system|>\nYou are terse.\n<|user|>\nHello\n<|assistant|>\nHi.<|endoftext|>\n"
                    "<|user|>\nÇa va?\n<|assistant|>\n")
    expected = {"<|endoftext|>": 0, "<|pad|>": 1, "<|startoftext|>": 2, "<|system|>": 3, "<|user|>": 4,
                "<|assistant|>": 5}
    for token, i in expected.items():
        assert hf.convert_tokens_to_ids(token) == i
        assert hf.encode(token, add_special_tokens=False) == [i]  # one token, not its characters
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (0, 1, 2)
    conf = json.loads((trained.tokenizer / "tokenizer_config.json").read_text())
    assert conf["fmforge_special_token_ids"] == expected
    ids = hf.encode(text, add_special_tokens=False)
    assert ids[0] == 3 and (ids.count(3), ids.count(4), ids.count(5), ids.count(0)) == (1, 2, 2, 1)
    assert ids[-2:] == [5, hf.encode("\n", add_special_tokens=False)[0]]
    with pytest.raises(Exception, match="unknown role"):
        hf.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize("text", [
    "naïve café — Ünïcödé, 東京タワー, данные, emoji 🚀🧪, combining é, RTL עברית",
    "tabs\tand\r\nCRLF  and   spaces \u00a0nbsp \u200bzwsp",
    "literal <|endoftext|> and <|user|> in a document",
])
def test_round_trip_is_exact(trained, text):
    from transformers import AutoTokenizer

    tok = load_tokenizer(trained, raw_text=True)
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
    if "<|" not in text:  # transformers encodes special-token text as the special token
        hf = AutoTokenizer.from_pretrained(str(trained.tokenizer))
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == text
