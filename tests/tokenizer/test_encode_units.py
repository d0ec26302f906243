"""The tokenize stage's pieces, fast: long documents cut after newlines, each
document's ids against ``tokenizers``' own encoding of it, the figures of
meta.json worked out from the files, the errors a user meets, and a retrained
tokenizer picked up in the same process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmforge.config import ConfigError
from fmforge.rundir import ArtifactError
from fmforge.tokenizer import encode
from fmforge.tokenizer.fast_encode import TextEncoder
from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.tokens import open_tokens
from fmforge.tokenizer.train import run_tokenizer_stage


@pytest.mark.parametrize("size", [10, 11, 25])
def test_a_long_document_is_cut_after_newlines_into_pieces_of_at_most_the_size(monkeypatch, size):
    monkeypatch.setattr(encode, "PIECE_CHARS", size)
    text = "abc\ndefgh\nij\n" + "k" * 23 + "\nlast line\n\nend"
    pieces = encode._pieces(text)
    assert "".join(pieces) == text and all(pieces)
    assert all(len(p) <= size for p in pieces)
    # every cut is after a newline, except where no newline lies within the size
    assert all(p.endswith("\n") or "\n" not in p[1:] for p in pieces[:-1])
    assert encode._pieces("x" * size) == ["x" * size]  # up to the size: whole
    assert encode._pieces("x" * (size + 1)) == ["x" * size, "x"]  # no newline: cut at the size
    assert encode._pieces("\n" * (size + 3)) == ["\n" * size, "\n\n\n"]
    assert encode._pieces("") == [""]


def test_pieces_by_hand(monkeypatch):
    monkeypatch.setattr(encode, "PIECE_CHARS", 10)
    assert encode._pieces("abc\ndefgh\nij\nklm") == ["abc\ndefgh\n", "ij\nklm"]
    assert encode._pieces("abcdefghijkl\nmn") == ["abcdefghij", "kl\nmn"]
    assert encode._pieces("\nabcdefghijkl") == ["\nabcdefghi", "jkl"]  # a newline first is no cut
    assert encode._pieces("ab\ncdefghijklmnopq\nr") == ["ab\n", "cdefghijkl", "mnopq\nr"]


def test_each_documents_ids_are_tokenizers_then_the_end_of_text(direct_run, make_docs, monkeypatch, tmp_path):
    cfg, run = direct_run(make_docs(60, 1), make_docs(10, 2), vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    tok = load_tokenizer(run, raw_text=True)
    texts = ["", "one line", "line one\nline two\nline three\n" * 40, "x", "tail\n" * 7]
    monkeypatch.setattr(encode, "PIECE_CHARS", 30)  # the long ones cut after newlines
    monkeypatch.setattr(encode, "BATCH_CHARS", 64)  # several batches, a document across two
    for prefer in ("tiktoken", "tokenizers"):
        path = tmp_path / f"{prefer}.bin"
        with open(path, "wb") as out:
            lengths = encode._encode_texts(TextEncoder(tok, prefer), texts, 7, np.dtype(np.uint16), out)
        ids = np.fromfile(path, dtype=np.uint16).tolist()
        want = [tok.encode(t, add_special_tokens=False).ids + [7] for t in texts]
        assert lengths.tolist() == [len(w) for w in want] and lengths.dtype == np.int64
        assert ids == [i for w in want for i in w]


def test_meta_json_says_what_the_files_hold(direct_run, make_docs, monkeypatch):
    train = make_docs(50, 1, "wiki") + make_docs(30, 2, "code")
    val = make_docs(10, 3, "wiki")
    cfg, run = direct_run(train, val, vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    summary = encode.run_tokenize_stage(cfg, run)
    meta = json.loads((run.tokens / "meta.json").read_text())
    tok = load_tokenizer(run, raw_text=True)
    assert meta["encoder"] == "tiktoken" and "encoder_why_not_tiktoken" not in meta
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == cfg.vocab_size
    assert meta["tokenizer_vocab_size"] == tok.get_vocab_size()
    assert meta["eos_token"] == "<|endoftext|>" and meta["eos_id"] == tok.token_to_id("<|endoftext|>")
    assert meta["sources"] == ["code", "wiki"]
    for split, rows in (("train", train), ("val", val)):
        n_tokens = len(np.asarray(open_tokens(run, split)))
        text_tokens = sum(len(tok.encode(r[1], add_special_tokens=False).ids) for r in rows)
        assert meta[f"{split}_tokens"] == n_tokens == text_tokens + len(rows)
        assert meta[f"{split}_documents"] == len(rows)
        assert meta[f"{split}_bytes"] == sum(len(r[1].encode()) for r in rows)
        assert sum(f["tokens"] for f in meta["files"][split]) == n_tokens
        for source in {r[2] for r in rows}:
            mine = [r for r in rows if r[2] == source]
            toks = sum(len(tok.encode(r[1], add_special_tokens=False).ids) for r in mine)
            per = meta["per_source"][split][source]
            assert per["documents"] == len(mine) and per["tokens"] == toks + len(mine)
            assert per["bytes"] == sum(len(r[1].encode()) for r in mine)
            assert per["bytes_per_token"] == pytest.approx(per["bytes"] / toks, abs=1e-4)
    assert "code" not in meta["per_source"]["val"]  # a source with no document in a split is not listed
    train_text_tokens = meta["train_tokens"] - meta["train_documents"]
    assert meta["bytes_per_token"] == pytest.approx(meta["train_bytes"] / train_text_tokens, rel=1e-12)
    assert summary == {"train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"],
                       "bytes_per_token": round(meta["bytes_per_token"], 3), "dtype": "uint16"}
    # asked for tokenizers: the same files, and meta.json says why not tiktoken
    files = {p.name: p.read_bytes() for p in run.tokens.rglob("*.bin")}
    engines = []
    real = encode.TextEncoder.encode_arrays

    def spy(self, texts):
        engines.append(self.name)
        return real(self, texts)

    monkeypatch.setattr(encode.TextEncoder, "encode_arrays", spy)
    encode.run_tokenize_stage(cfg, run, encoder="tokenizers")
    assert engines and set(engines) == {"tokenizers"}  # the units were encoded by the engine asked for
    slow = json.loads((run.tokens / "meta.json").read_text())
    assert slow["encoder"] == "tokenizers" and slow["encoder_why_not_tiktoken"] == "tokenizers asked for"
    assert {p.name: p.read_bytes() for p in run.tokens.rglob("*.bin")} == files


def test_a_vocabulary_past_65536_is_written_as_uint32(direct_run, make_docs, monkeypatch):
    cfg, run = direct_run(make_docs(40, 1), make_docs(8, 2), vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    big = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": 70_000})})
    assert big.vocab_size == 70_000
    encode.run_tokenize_stage(big, run)
    meta = json.loads((run.tokens / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_000
    first = run.tokens / meta["files"]["train"][0]["path"]
    assert first.stat().st_size == 4 * meta["files"]["train"][0]["tokens"]
    tok = load_tokenizer(run, raw_text=True)
    doc = np.fromfile(first, dtype=np.uint32)
    offsets = np.load(run.tokens / "train.docs.npy")
    assert doc[offsets[1] - 1] == meta["eos_id"] and doc[:offsets[1] - 1].max() < tok.get_vocab_size()


def test_a_tokenizer_without_the_end_of_text_or_larger_than_the_model_is_refused(direct_run, make_docs):
    cfg, run = direct_run(make_docs(40, 1), make_docs(8, 2), vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    tok_json = run.tokenizer / "tokenizer.json"
    small = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": 300})})
    n = load_tokenizer(run, raw_text=True).get_vocab_size()
    assert n > 300
    with pytest.raises(ConfigError, match=f"has {n} tokens but the model's vocabulary is 300: set "
                                          f"tokenizer.vocab_size: {n}"):
        encode.run_tokenize_stage(small, run)
    spec = json.loads(tok_json.read_text())
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] != "<|endoftext|>"]
    spec["model"]["vocab"].pop("<|endoftext|>")
    tok_json.write_text(json.dumps(spec))
    (run.tokenizer / "tokenizer_config.json").unlink(missing_ok=True)
    with pytest.raises(ArtifactError, match="no end-of-text token '<\\|endoftext\\|>'.*rerun `fmforge tokenizer"):
        encode.run_tokenize_stage(cfg, run)
    assert not (run.tokens / "meta.json").exists()


def test_a_retrained_tokenizer_is_used_by_the_next_encode_in_the_same_process(direct_run, make_docs):
    cfg, run = direct_run(make_docs(60, 1), make_docs(10, 2), vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    first = np.asarray(open_tokens(run, "train")).copy()
    cfg2 = cfg.model_copy(update={"tokenizer": cfg.tokenizer.model_copy(update={"vocab_size": 300})})
    run_tokenizer_stage(cfg2, run)
    encode.run_tokenize_stage(cfg2, run)
    second = np.asarray(open_tokens(run, "train"))
    tok = load_tokenizer(run, raw_text=True)
    assert tok.get_vocab_size() <= 300 and len(second) > len(first)  # fewer merges: more tokens
    want = [i for _, text, _ in make_docs(60, 1)
            for i in tok.encode(text, add_special_tokens=False).ids + [tok.token_to_id("<|endoftext|>")]]
    assert second.tolist() == want


def test_special_tokens_text_inside_a_document_is_text_and_a_one_token_source_counts(direct_run, make_docs):
    train = make_docs(40, 1, "wiki") + [("s1", "before <|endoftext|> after <|pad|>", "wiki"), ("one", "x", "one")]
    cfg, run = direct_run(train, make_docs(8, 2, "wiki"), vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    tok = load_tokenizer(run, raw_text=True)
    d = [r[0] for r in train].index("s1")
    for engine in ("tokenizers", "tiktoken"):
        encode.run_tokenize_stage(cfg, run, encoder=engine)
        meta = json.loads((run.tokens / "meta.json").read_text())
        ids = np.asarray(open_tokens(run, "train")).tolist()
        offsets = np.load(run.tokens / "train.docs.npy").tolist()
        ends = {o - 1 for o in offsets[1:]}
        assert [i for i, t in enumerate(ids) if t == meta["eos_id"]] == sorted(ends), engine  # only between documents
        assert ids[offsets[d]:offsets[d + 1] - 1] == tok.encode(train[d][1], add_special_tokens=False).ids
    # a source of one one-token document: 1 byte over 1 text token
    assert meta["per_source"]["train"]["one"] == {"tokens": 2, "documents": 1, "bytes": 1, "bytes_per_token": 1.0}
