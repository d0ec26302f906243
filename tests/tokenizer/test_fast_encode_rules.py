"""When the tokenize stage's fast encoder may stand in for ``tokenizers``, fast:
small tokenizers built or edited one setting at a time. Each setting tiktoken
cannot reproduce is refused by name and the encoder falls back to ``tokenizers``
(ids identical to its own ``encode_batch_fast``); each it can is converted, with
ids, arrays and decoded text identical to ``tokenizers``'."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from fmforge.config import TokenizerConfig
from fmforge.tokenizer import fast_encode
from fmforge.tokenizer.fast_encode import GPT2_SPLIT, NotConvertible, TextEncoder, convert
from fmforge.tokenizer.train import GPT4_SPLIT, build_tokenizer

CORPUS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog. " * 3,
          "naïve café, 東京 and данные: 12345 6789!", "it's we'll they've I'd don't", "x = [1, 2, 3]  # list\n\n\t"]
TEXTS = ["hello world", "def f(x):\n    return x * 2\n", "  spaces   and\ttabs\n\n", "caf\u00e9 \u6771\u4eac 42",
         "<|endoftext|> stays text", "", "don't stop", "😀 emoji", "a" * 50]


def trained(split: str = "gpt4", vocab: int = 320) -> Tokenizer:
    tok, trainer = build_tokenizer(TokenizerConfig(vocab_size=vocab, split=split, min_frequency=1))
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok = Tokenizer.from_str(tok.to_str())
    tok.encode_special_tokens = True
    return tok


@pytest.fixture(scope="module")
def base() -> Tokenizer:
    return trained()


def edited(tok: Tokenizer, edit) -> Tokenizer:
    spec = json.loads(tok.to_str())
    edit(spec)
    out = Tokenizer.from_str(json.dumps(spec))
    out.encode_special_tokens = True
    return out


def reference(tok: Tokenizer, texts):
    return [e.ids for e in tok.encode_batch_fast(list(texts), add_special_tokens=False)]


@pytest.mark.parametrize("split", ["gpt4", "gpt2"])
def test_a_trained_tokenizer_converts_and_encodes_as_tokenizers_does(split):
    tok = trained(split)
    c = convert(tok)
    assert c.split == split and c.pattern == {"gpt4": GPT4_SPLIT, "gpt2": GPT2_SPLIT}[split]
    vocab = tok.get_vocab()
    specials = {a.content for a in tok.get_added_tokens_decoder().values()}
    assert c.specials == {s: vocab[s] for s in specials} and "<|endoftext|>" in c.specials
    assert len(c.ranks) == len(vocab) - len(specials)
    assert c.ranks[b" "] == vocab["\u0120"] and c.ranks[b"a"] == vocab["a"]
    enc = TextEncoder(tok)
    assert enc.name == "tiktoken" and enc.why == ""
    want = reference(tok, TEXTS)
    assert enc.encode_batch(TEXTS) == want
    arrays = enc.encode_arrays(TEXTS)
    assert all(a.dtype == np.uint32 for a in arrays) and [a.tolist() for a in arrays] == want
    assert enc.decode_batch(want) == tok.decode_batch(want, skip_special_tokens=False) == TEXTS
    eos = vocab["<|endoftext|>"]
    assert eos not in want[4]  # the special token's text in a document is text
    assert enc.decode_batch([[eos, *want[0]]]) == ["<|endoftext|>hello world"]


def test_invalid_utf8_decodes_to_the_replacement_character_as_tokenizers_does(base):
    enc = TextEncoder(base)
    cut = [reference(base, ["é"])[0][:1]]  # the first byte of a two-byte character
    assert len(cut[0]) == 1 and len("é".encode()) == 2
    assert enc.decode_batch(cut) == base.decode_batch(cut, skip_special_tokens=False) == ["\ufffd"]
    slow = TextEncoder(base, "tokenizers")
    assert slow.decode_batch(cut) == ["\ufffd"]


def test_threads_give_the_same_ids_in_the_same_order(base):
    texts = [f"{i} {TEXTS[i % len(TEXTS)]}" for i in range(97)]
    want = reference(base, texts)
    for threads in (0, 1, 2, 3, 8):
        enc = TextEncoder(base, threads=threads)
        assert enc.threads == max(1, threads)
        assert enc.encode_batch(texts) == want
        assert [a.tolist() for a in enc.encode_arrays(texts)] == want
        assert enc.encode_batch(texts[:1]) == want[:1] and enc.encode_batch([]) == []


def test_asking_for_tokenizers_or_an_unknown_engine(base):
    enc = TextEncoder(base, "tokenizers")
    assert enc.name == "tokenizers" and enc.why == "tokenizers asked for"
    assert enc.encode_batch(TEXTS) == reference(base, TEXTS)
    assert [a.tolist() for a in enc.encode_arrays(TEXTS)] == reference(base, TEXTS)
    assert all(a.dtype == np.uint32 for a in enc.encode_arrays(TEXTS))
    eos = base.token_to_id("<|endoftext|>")
    ids = reference(base, TEXTS[:2])
    assert enc.decode_batch([[eos, *ids[0]], ids[1]]) == ["<|endoftext|>hello world", TEXTS[1]]
    with pytest.raises(ValueError, match="unknown encoder 'sentencepiece'"):
        TextEncoder(base, "sentencepiece")


def _set(path, value):
    def edit(spec):
        node = spec
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


REFUSED = {
    "dropout": (_set(("model", "dropout"), 0.1), "the BPE has dropout=0.1"),
    "unk": (_set(("model", "unk_token"), "a"), "the BPE has unk_token='a'"),
    "suffix": (_set(("model", "end_of_word_suffix"), "</w>"), "the BPE has end_of_word_suffix='</w>'"),
    "byte_fallback": (_set(("model", "byte_fallback"), True), "the BPE has byte_fallback"),
    "truncation": (_set(("truncation",), {"direction": "Right", "max_length": 4, "strategy": "LongestFirst",
                                          "stride": 0}), "the tokenizer truncates or pads"),
    "padding": (_set(("padding",), {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                                    "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}), "the tokenizer truncates or pads"),
    "no pre-tokenizer": (_set(("pre_tokenizer",), None), "no pre-tokenizer"),
    "normalizer": (_set(("normalizer",), {"type": "NFKC"}), "the tokenizer has a normalizer (NFKC)"),
    "not BPE": (lambda s: s["model"].update(type="WordPiece", unk_token="a", continuing_subword_prefix="##",
                                            max_input_chars_per_word=100), "the model is WordPiece, not BPE"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_setting_tiktoken_cannot_reproduce_is_refused_by_name(base, case):
    edit, why = REFUSED[case]
    tok = edited(base, edit)
    with pytest.raises(NotConvertible) as err:
        convert(tok)
    assert str(err.value) == why
    enc = TextEncoder(tok)
    assert enc.name == "tokenizers" and enc.why == why
    if case != "dropout":  # dropout is random by design
        assert enc.encode_batch(TEXTS[:4]) == reference(tok, TEXTS[:4])


def _sequence(split=None, byte_level=None, extra=False):
    def edit(spec):
        s = {"type": "Split", "pattern": {"Regex": GPT4_SPLIT}, "behavior": "Isolated", "invert": False}
        b = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        s.update(split or {})
        b.update(byte_level or {})
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [s, b] + ([b] if extra else [])}
    return edit


SEQ = "the pre-tokenizer is not a byte-level regex split (Sequence)"
BYTE_LEVEL = "a ByteLevel pre-tokenizer with add_prefix_space or without its regex"
PRE = {
    "removed": (_sequence({"behavior": "Removed"}), SEQ),
    "inverted": (_sequence({"invert": True}), SEQ),
    "string pattern": (_sequence({"pattern": {"String": " "}}), SEQ),
    "prefix space": (_sequence(byte_level={"add_prefix_space": True}), SEQ),
    "two regexes": (_sequence(byte_level={"use_regex": True}), SEQ),
    "three": (_sequence(extra=True), SEQ),
    "whitespace": (_set(("pre_tokenizer",), {"type": "Whitespace"}),
                   "the pre-tokenizer is not a byte-level regex split (Whitespace)"),
    "another regex": (_sequence({"pattern": {"Regex": r"\s+|\S+"}}),
                      "the split pattern is neither fmforge's (GPT-4's) nor GPT-2's"),
    "byte level without regex": (_set(("pre_tokenizer",), {"type": "ByteLevel", "add_prefix_space": False,
                                                           "trim_offsets": True, "use_regex": False}),
                                 BYTE_LEVEL),
    "byte level with prefix": (_set(("pre_tokenizer",), {"type": "ByteLevel", "add_prefix_space": True,
                                                         "trim_offsets": True, "use_regex": True}),
                               BYTE_LEVEL),
}


@pytest.mark.parametrize("case", sorted(PRE))
def test_a_pre_tokenizer_other_than_the_two_splits_is_refused(base, case):
    edit, why = PRE[case]
    tok = edited(base, edit)
    with pytest.raises(NotConvertible) as err:
        convert(tok)
    assert str(err.value) == why
    enc = TextEncoder(tok)
    assert enc.name == "tokenizers" and enc.why == why and enc.encode_batch(TEXTS[:4]) == reference(tok, TEXTS[:4])


def test_the_byte_level_pre_tokenizer_alone_is_gpt2s_split(base):
    tok = edited(base, _set(("pre_tokenizer",), {"type": "ByteLevel", "add_prefix_space": False,
                                                  "trim_offsets": True, "use_regex": True}))
    assert convert(tok).split == "gpt2"
    enc = TextEncoder(tok)
    assert enc.name == "tiktoken" and enc.encode_batch(TEXTS) == reference(tok, TEXTS)


def _bpe(merges, extra, specials=()):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)} | extra
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if specials:
        tok.add_special_tokens(list(specials))
    tok.encode_special_tokens = True
    return tok


def test_a_continuing_subword_prefix_is_refused_by_name():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({ch: i for i, ch in enumerate(alphabet)}, [], continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    with pytest.raises(NotConvertible) as err:
        convert(tok)
    assert str(err.value) == "the BPE has continuing_subword_prefix='##'"
    assert TextEncoder(tok).name == "tokenizers"


def test_merges_and_tokens_that_tiktoken_would_read_otherwise_are_refused():
    ok = _bpe([("a", "b"), ("ab", "c")], {"ab": 256, "abc": 257}, ["<|endoftext|>"])
    assert TextEncoder(ok).name == "tiktoken"
    assert TextEncoder(ok).encode_batch(["abc cab abcab"]) == reference(ok, ["abc cab abcab"])
    cases = {
        # a merge whose token is below one of its parts (made by a later merge)
        "left part later": ([("x", "y"), ("ab", "c"), ("a", "b")], {"xy": 256, "abc": 257, "ab": 258},
                            "merge 1 ('ab', 'c') is out of id order"),
        "right part later": ([("x", "y"), ("c", "ab"), ("a", "b")], {"xy": 256, "cab": 257, "ab": 258},
                             "merge 1 ('c', 'ab') is out of id order"),
        "ids fall": ([("a", "b"), ("c", "d")], {"ab": 257, "cd": 256}, "merge 1 ('c', 'd') is out of id order"),
        # two merges that make the same token: tiktoken would apply either, tokenizers the earlier
        "one token twice": ([("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")], {"ab": 256, "bc": 257, "abc": 258},
                            "merge 3 ('ab', 'c') is out of id order"),
    }
    for name, (merges, extra, why) in cases.items():
        spec = json.loads(ok.to_str())
        spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if v < 256} | extra
        spec["model"]["merges"] = [list(m) for m in merges]
        spec["added_tokens"] = []
        tok = Tokenizer.from_str(json.dumps(spec))
        with pytest.raises(NotConvertible) as err:
            convert(tok)
        assert str(err.value) == why, name


def _spec_edit(tok, fn):
    spec = json.loads(tok.to_str())
    fn(spec)
    return spec


def test_a_vocabulary_tiktoken_cannot_hold_is_refused(base):
    def check(fn, why):
        spec = _spec_edit(base, fn)
        with pytest.raises(NotConvertible) as err:
            convert_spec(spec)
        assert str(err.value) == why

    check(lambda s: s["model"]["vocab"].update({"\u4e2d": len(s["model"]["vocab"]) + 10}), "token '中' is not byte-level")
    check(lambda s: s["model"]["vocab"].update({"zzq": len(s["model"]["vocab"]) + 10}),
          "the vocabulary holds tokens that no merge makes")

    def drop_byte(s):
        del s["model"]["vocab"]["\u0100"]  # byte 0x00
    check(drop_byte, "some of the 256 single bytes are not tokens")

    def plain_added(s):
        s["added_tokens"].append({"id": len(s["model"]["vocab"]), "content": "hello", "single_word": False,
                                  "lstrip": False, "rstrip": False, "normalized": True, "special": False})
        s["model"]["vocab"]["hello"] = len(s["model"]["vocab"])
    check(plain_added, "added tokens that are not special (['hello'])")

    def four_plain(s):  # the first three named
        for word in ("w1", "w2", "w3", "w4"):
            s["model"]["vocab"][word] = n = len(s["model"]["vocab"])
            s["added_tokens"].append({"id": n, "content": word, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": True, "special": False})
    check(four_plain, "added tokens that are not special (['w1', 'w2', 'w3'])")


def convert_spec(spec):
    return convert(Tokenizer.from_str(json.dumps(spec)))


def test_merges_saved_as_one_string_convert_as_pairs(base):
    spec = json.loads(base.to_str())
    spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
    old = Tokenizer.from_str(json.dumps(spec))
    old.encode_special_tokens = True
    assert convert(old).ranks == convert(base).ranks
    assert fast_encode._merge_pair("ab c") == ("ab", "c") and fast_encode._merge_pair(["a", "b c"]) == ("a", "b c")
    assert TextEncoder(old).encode_batch(TEXTS) == reference(base, TEXTS)


def test_available_cores_is_the_affinity_mask_else_the_cpu_count(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert fast_encode.available_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert fast_encode.available_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert fast_encode.available_cores() == 1


def test_a_fallback_tokenizer_with_a_template_adds_no_special_tokens_to_documents(base):
    # A brought tokenizer may put its BOS before every encoding (a TemplateProcessing
    # post-processor); the stage adds its own end-of-text between documents and nothing
    # else, whichever engine encodes.
    from tokenizers import normalizers, processors

    tok = Tokenizer.from_str(base.to_str())
    tok.normalizer = normalizers.NFKC()  # tiktoken cannot: tokenizers encodes
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                       special_tokens=[("<|endoftext|>", eos)])
    tok.encode_special_tokens = True
    assert tok.encode("hello").ids[0] == eos  # the template at work
    enc = TextEncoder(tok)
    assert enc.name == "tokenizers"
    want = [e.ids for e in tok.encode_batch(TEXTS, add_special_tokens=False)]
    assert all(eos not in ids for ids in want[:4])
    assert enc.encode_batch(TEXTS) == want
    assert [a.tolist() for a in enc.encode_arrays(TEXTS)] == want
