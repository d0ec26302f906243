"""tiktoken on the run's merges gives the ids ``tokenizers`` gives (issue 30): on every
document of a demo-like corpus (the interpreter's own library and package docs, as
``configs/demo.yaml`` reads them), on a hard set (mixed scripts, emoji and ZWJ
sequences, combining marks, digit and whitespace runs, every code point, special
tokens' text, surrogates escaped in JSONL, a 5 MB line), with fmforge's (GPT-4's)
split and GPT-2's; a tokenizer it cannot reproduce falls back to ``tokenizers``,
and the tokenize stage writes the same bytes with either encoder."""

from __future__ import annotations

import json
import random
import socket
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from fmforge.config import TokenizerConfig
from fmforge.data.normalize import replace_lone_surrogates
from fmforge.data.shards import iter_split_texts
from fmforge.tokenizer import encode
from fmforge.tokenizer.evaluate import evaluate_tokenizers
from fmforge.tokenizer.fast_encode import NotConvertible, TextEncoder, build_encoding, convert
from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.train import build_tokenizer, run_tokenizer_stage


def demo_like(code_bytes: int, doc_bytes: int) -> list[tuple[str, str, str]]:
    """(id, text, source) rows from where the demo config reads: stdlib .py files and
    installed packages' METADATA/LICENSE files, up to the given sizes."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    code = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in str(p) and "/test" not in str(p))
    docs = sorted({*site.glob("*.dist-info/METADATA"), *site.glob("*.dist-info/LICENSE*")})
    rows: list[tuple[str, str, str]] = []
    for source, files, cap in (("code", code, code_bytes), ("docs", docs, doc_bytes)):
        total = 0
        for p in files:
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if total + len(text.encode()) > cap:
                break
            total += len(text.encode())
            rows.append((f"{source}-{len(rows)}", text, source))
    random.Random(0).shuffle(rows)
    return rows


WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()] + ["\u200b", "\u180e", "\ufeff", "\u2060"]
ZWJ = ["👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏿‍💻", "❤️‍🔥", "👍🏽", "🇫🇷🇩🇪", "\u200d", "\ufe0f", "a\u200db"]
SCRIPTS = ["naïve café", "東京都の天気", "данные Москвы", "Ωμέγα λόγος", "한국어 텍스트", "العربية نص",
           "हिन्दी पाठ", "ภาษาไทย", "עברית", "ﬁ ß ſ İı K Å", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ᚠᛇᚻ"]
MARKS = ["e\u0301", "a\u0300\u0323", "Z\u0324\u0308\u0301\u0302", "ก\u0e31", "q\u20dd", "\u0301\u0301x",
         "n\u0303\u0303\u0303"]
DIGITS = ["1" * 1000, "12345678901234567890", "3.14159265358979", "١٢٣٤٥٦٧", "०१२३", "²³½", "①②③", "Ⅻ", "𝟙𝟚",
          "10,000,000", "x2024y", "0x1F600"]
CONTRACTIONS = ["don't", "DON'T", "it'S", "'ſ", "we'LL", "they'Ve", "I'd", "'''s", "’s", "o'clock"]
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|endoftext|><|endoftext|>", "<|endoftext", "|>"]


def hard_set(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    atoms = [*SCRIPTS, *ZWJ, *MARKS, *DIGITS[1:], *CONTRACTIONS, *SPECIALS, *WHITESPACE,
             "\n", "\r\n", "\n\n\n", "\t", "    ", "  \n ", "x", "def f(a, b):", "{}", "!!!", "\x00", "\x7f"]
    texts = [DIGITS[0], "".join(WHITESPACE), " ".join(WHITESPACE) + "end", "trailing spaces   ",
             "   leading", "\n\n  \n\t\n", "a  \nb", "a \u00a0 b\u3000\u3000c", *SCRIPTS, *ZWJ, *MARKS, *DIGITS,
             *CONTRACTIONS, *SPECIALS, "", " ", "\n"]
    for ws in WHITESPACE:  # each whitespace alone, in runs, before letters, newlines and the end
        texts += [f"a{ws}b", f"a{ws * 3}b", f"{ws}\n{ws}x", f"x{ws * 2}", f"{ws} {ws}é"]
    texts += ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 40))) for _ in range(1500)]
    # every code point (surrogates excepted) in a run, after a space; the BMP's after a digit
    # and an apostrophe
    cps = [chr(c) for c in range(0x20, 0x31000) if not 0xD800 <= c <= 0xDFFF]
    texts += ["".join(cps), " ".join(cps)]
    texts += ["".join(f"1{c}'{c}\n" for c in cps[i:i + 4000]) for i in range(0, 0x10000, 4000)]
    return texts


def trained(split: str, texts: list[str], vocab: int = 3000) -> Tokenizer:
    """A tokenizer as the tokenizer stage trains it, on ``texts``; raw text (special
    tokens' text encoded as bytes), as the tokenize stage loads it."""
    tok, trainer = build_tokenizer(TokenizerConfig(vocab_size=vocab, split=split, min_frequency=2))
    tok.train_from_iterator(texts, trainer=trainer)
    tok = Tokenizer.from_str(tok.to_str())
    tok.encode_special_tokens = True
    return tok


def reference(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def training_texts():
    return [t for _, t, _ in demo_like(600_000, 200_000)] + hard_set(1)[:1500]


@pytest.fixture(scope="module", params=["gpt4", "gpt2"])
def tokenizer(request, training_texts):
    return trained(request.param, training_texts)


def test_the_hard_set_encodes_to_tokenizers_ids(tokenizer):
    enc = TextEncoder(tokenizer, threads=2)
    assert enc.name == "tiktoken", enc.why
    texts = hard_set(0)
    want = reference(tokenizer, texts)
    assert enc.encode_batch(texts) == want
    assert [a.tolist() for a in enc.encode_arrays(texts)] == want
    assert enc.decode_batch(want) == texts
    specials = {tokenizer.token_to_id(s) for s in ("<|endoftext|>", "<|pad|>", "<|user|>")}
    assert not specials & {i for ids in want for i in ids}  # special tokens' text stays text


def test_a_5mb_line_encodes_to_tokenizers_ids(tokenizer):
    rng = random.Random(3)
    atoms = [*SCRIPTS, *ZWJ, *MARKS, *DIGITS[1:], *CONTRACTIONS, "<|endoftext|>", " ", "  ", "\t", "x=y+1;"]
    line = " ".join(rng.choice(atoms) for _ in range(460_000))
    assert "\n" not in line and len(line.encode()) > 5_000_000
    ids = TextEncoder(tokenizer).encode_arrays([line])[0]
    assert np.array_equal(ids, np.asarray(reference(tokenizer, [line])[0], dtype=np.uint32))


def test_surrogates_escaped_in_jsonl(tokenizer):
    """A JSON ``\\ud800`` escape decodes to a lone surrogate; the data stage replaces it
    by U+FFFD before writing shards, and the result encodes as tokenizers encodes it. A
    lone surrogate that reaches an encoder is refused by both, not silently changed."""
    lines = ['{"text": "a\\ud800b \\udc00 tail"}', '{"text": "pair \\ud83d\\ude00 and \\ud83d alone\\udfff"}',
             '{"text": "\\udbff\\udfff\\ud800\\ud800"}']
    raw = [json.loads(line)["text"] for line in lines]
    texts = [replace_lone_surrogates(t)[0] for t in raw]
    assert texts[0] == "a\ufffdb \ufffd tail" and "😀" in texts[1] and texts[2] == "\U0010ffff\ufffd\ufffd"
    assert TextEncoder(tokenizer).encode_batch(texts) == reference(tokenizer, texts)
    for encoder in (TextEncoder(tokenizer), TextEncoder(tokenizer, "tokenizers")):
        with pytest.raises((UnicodeEncodeError, TypeError)):
            encoder.encode_arrays([raw[0]])


def test_building_the_encoding_downloads_nothing(tokenizer, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nonexistent")
    assert TextEncoder(tokenizer).encode_batch(["hello world"]) == reference(tokenizer, ["hello world"])


def _byte_level_bpe(merges: list[tuple[str, str]], extra_ids: dict[str, int]) -> Tokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)} | extra_ids
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def test_merges_out_of_id_order_fall_back_to_tokenizers():
    """tokenizers applies the earliest merge, tiktoken the lowest id: merges (a,b) then
    (b,c) with ids ab=257, bc=256 encode "abc" as [ab, c] in tokenizers and [a, bc] in
    a naive conversion. The encoder sees the order and keeps tokenizers."""
    import tiktoken

    tok = _byte_level_bpe([("a", "b"), ("b", "c")], {"bc": 256, "ab": 257})
    assert tok.encode("abc").tokens == ["ab", "c"]
    naive = tiktoken.Encoding("naive", pat_str=r"\w+", special_tokens={},
                              mergeable_ranks={**{bytes([b]): b for b in range(256)}, b"bc": 256, b"ab": 257})
    assert naive.encode_ordinary("abc") != tok.encode("abc").ids  # what a naive conversion gets wrong
    with pytest.raises(NotConvertible, match="out of id order"):
        convert(tok)
    enc = TextEncoder(tok)
    assert enc.name == "tokenizers" and "out of id order" in enc.why
    assert enc.encode_batch(["abc abcabc"]) == reference(tok, ["abc abcabc"])
    in_order = _byte_level_bpe([("a", "b"), ("b", "c")], {"ab": 256, "bc": 257})
    assert TextEncoder(in_order).name == "tiktoken"
    assert TextEncoder(in_order).encode_batch(["abc bcab"]) == reference(in_order, ["abc bcab"])


def test_what_tiktoken_cannot_do_falls_back(tokenizer):
    cases = {}
    t = Tokenizer.from_str(tokenizer.to_str())
    t.normalizer = normalizers.NFKC()
    cases["normalizer"] = t
    t = Tokenizer.from_str(tokenizer.to_str())
    t.add_tokens(["hello world"])  # an added token that is not special splits text apart
    cases["not special"] = t
    t = Tokenizer.from_str(tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(r"\d", behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    cases["pre-tokenizer"] = t
    t = Tokenizer.from_str(tokenizer.to_str())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    cases["add_prefix_space"] = t
    cases["BPE"] = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    texts = ["ｆｕｌｌ width ①, hello world 123 ok", "<|endoftext|> x"]
    for why, tok in cases.items():
        tok.encode_special_tokens = True
        enc = TextEncoder(tok)
        assert enc.name == "tokenizers" and why in enc.why, (why, enc.why)
        assert enc.encode_batch(texts) == reference(tok, texts)
        with pytest.raises(NotConvertible):
            build_encoding(tok)


def test_every_document_of_a_demo_like_run_and_the_stage_s_files(direct_run, monkeypatch):
    """On a demo-like run: each document's ids (held-out and train) equal tokenizers',
    the stage writes the same bytes with tiktoken (its default, recorded in meta.json)
    as with tokenizers, and the tokenizer eval's figures are the same."""
    rows = demo_like(1_000_000, 400_000)
    cut = len(rows) // 3
    cfg, run = direct_run(rows[cut:], rows[:cut], vocab_size=4096, min_frequency=2)
    run_tokenizer_stage(cfg, run)
    tok = load_tokenizer(run, raw_text=True)
    enc = TextEncoder(tok)
    assert enc.name == "tiktoken", enc.why
    held_out = list(iter_split_texts(run.data, "val"))
    assert len(held_out) == cut > 20
    for split in ("val", "train"):
        texts = list(iter_split_texts(run.data, split))
        assert enc.encode_batch(texts) == reference(tok, texts), split

    monkeypatch.setattr(encode, "PIECE_CHARS", 20_000)  # long files are cut into pieces in both
    files = {}
    for encoder in ("tiktoken", "tokenizers"):
        encode.run_tokenize_stage(cfg, run, encoder=encoder)
        files[encoder] = {p.relative_to(run.tokens).as_posix(): p.read_bytes()
                          for p in sorted(run.tokens.rglob("*")) if p.is_file()}
        meta = json.loads(files[encoder].pop("meta.json"))
        assert meta["encoder"] == encoder
        assert ("encoder_why_not_tiktoken" in meta) == (encoder == "tokenizers")
    assert files["tiktoken"] == files["tokenizers"]
    fast, slow = (evaluate_tokenizers(run, write=False, encoder=e) for e in ("tiktoken", "tokenizers"))
    assert fast["tokenizers"][0].pop("encoder") == "tiktoken" and slow["tokenizers"][0].pop("encoder") == "tokenizers"
    assert fast == slow and fast["tokenizers"][0]["round_trip_exact"]
