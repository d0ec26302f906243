"""The token files against the data shards they came from: each document's tokens
decode to its text, its source is right, the counts add up; the process pool writes
the same bytes as the inline path; a killed encode resumes without redoing units;
empty, huge and NUL-laden documents round-trip."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

import fmforge.data.shards as shards
from fmforge.data.shards import iter_split_records
from fmforge.tokenizer import encode
from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.train import run_tokenizer_stage


def two_sources(make_docs, n_train=120, n_val=30):
    rows = make_docs(n_train, 1, "wiki") + make_docs(n_train // 2, 2, "code")
    random.Random(0).shuffle(rows)
    return rows, make_docs(n_val, 3, "wiki") + make_docs(n_val, 4, "code")


@pytest.fixture
def small_groups(monkeypatch):
    """Row groups of 16 documents and units of one row group: many units from a small corpus."""
    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", 16)
    monkeypatch.setattr(encode, "ROW_GROUPS_PER_UNIT", 1)


def check_against_shards(run):
    meta = json.loads((run.tokens / "meta.json").read_text())
    tok = load_tokenizer(run, raw_text=True)
    for split in ("train", "val"):
        ids = np.fromfile(run.tokens / f"{split}.bin", dtype=meta["dtype"])
        offsets = np.load(run.tokens / f"{split}.docs.npy")
        sources = np.load(run.tokens / f"{split}.sources.npy")
        records = list(iter_split_records(run.data, split, columns=("text", "source")))
        assert len(offsets) == len(records) + 1 and len(sources) == len(records)
        assert offsets[0] == 0 and offsets[-1] == len(ids) == meta[f"{split}_tokens"]
        for d, rec in enumerate(records):
            doc = ids[offsets[d]:offsets[d + 1]].tolist()
            assert doc[-1] == meta["eos_id"] and meta["eos_id"] not in doc[:-1]
            assert tok.decode(doc[:-1], skip_special_tokens=False) == rec["text"]
            assert meta["sources"][sources[d]] == rec["source"]
        per = meta["per_source"][split]
        assert sum(s["tokens"] for s in per.values()) == meta[f"{split}_tokens"]
        assert sum(s["documents"] for s in per.values()) == meta[f"{split}_documents"] == len(records)
        assert sum(s["bytes"] for s in per.values()) == meta[f"{split}_bytes"]
        by_source = Counter(r["source"] for r in records)
        assert {k: v["documents"] for k, v in per.items()} == dict(by_source)
        lengths = np.diff(offsets)
        for name, s in per.items():
            mine = sources == meta["sources"].index(name)
            assert s["tokens"] == int(lengths[mine].sum())
    assert meta["tokenizer_sha256"] == encode.tokenizer_hash(run)
    return meta


def test_token_files_agree_with_the_shards(direct_run, make_docs, small_groups):
    train, val = two_sources(make_docs)
    cfg, run = direct_run(train, val, shard_max_docs=64, vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    meta = check_against_shards(run)
    assert meta["train_documents"] == 180 and set(meta["sources"]) == {"wiki", "code"}
    assert not (run.root / "tokens.work").exists()


@pytest.mark.slow
def test_pool_writes_the_same_bytes_as_inline(direct_run, make_docs, small_groups, monkeypatch, tmp_path):
    train, val = two_sources(make_docs)
    cfg, run = direct_run(train, val, shard_max_docs=64, vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    inline = {p.name: p.read_bytes() for p in run.tokens.iterdir()}
    monkeypatch.setattr(encode, "INLINE_BELOW_BYTES", 0)
    monkeypatch.setattr(encode.os, "cpu_count", lambda: 2)
    used_pool = []
    real = encode.ProcessPoolExecutor
    monkeypatch.setattr(encode, "ProcessPoolExecutor", lambda *a, **k: used_pool.append(1) or real(*a, **k))
    encode.run_tokenize_stage(cfg, run)
    assert used_pool
    pooled = {p.name: p.read_bytes() for p in run.tokens.iterdir()}
    assert pooled.keys() == inline.keys() and len(pooled) == 7
    for name in inline:
        assert pooled[name] == inline[name], name


def test_killed_encode_resumes_without_redoing_units(direct_run, make_docs, small_groups, monkeypatch):
    train, val = two_sources(make_docs)
    cfg, run = direct_run(train, val, shard_max_docs=64, vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    real = encode.encode_unit
    calls: list[int] = []

    def dies_on_third(payload):
        calls.append(payload["index"])
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(payload)

    monkeypatch.setattr(encode, "encode_unit", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        encode.run_tokenize_stage(cfg, run)
    assert not (run.tokens / "meta.json").exists()
    done = calls[:2]
    n_units = len(encode._units(run.data))
    assert n_units >= 8
    calls.clear()
    monkeypatch.setattr(encode, "encode_unit", lambda p: calls.append(p["index"]) or real(p))
    encode.run_tokenize_stage(cfg, run)
    assert sorted(calls) == [i for i in range(n_units) if i not in done]
    check_against_shards(run)


@pytest.mark.slow
def test_empty_huge_and_nul_documents_round_trip(direct_run, make_docs):
    rng = random.Random(5)
    words = ["alpha", "naïve", "東京", "x1234", "—", "\t"]
    huge = " ".join(rng.choice(words) for _ in range(2_000_000))  # one line, ~10.7 MB
    assert "\n" not in huge and len(huge.encode()) > 10 * 10**6
    odd = [("empty", "", "odd"), ("nul", "a\x00b\x00\x00 c\x00", "odd"), ("huge", huge, "odd"),
           ("special", "<|endoftext|> is text here", "odd")]
    train = make_docs(100, 1) + odd
    cfg, run = direct_run(train, make_docs(5, 2) + [("e2", "", "odd")], vocab_size=400, min_frequency=1,
                          max_train_bytes=200_000)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    meta = check_against_shards(run)
    offsets = np.load(run.tokens / "train.docs.npy")
    assert offsets[101] - offsets[100] == 1  # the empty document: its end-of-text token only
    assert meta["per_source"]["train"]["odd"]["documents"] == 4


def test_small_batches_write_the_same_bytes(direct_run, make_docs, monkeypatch):
    """Encoding a few characters at a time (bounded memory) changes nothing on disk."""
    train, val = two_sources(make_docs)
    train.append(("long", "line one\n" * 3000 + "tail", "wiki"))
    monkeypatch.setattr(encode, "PIECE_CHARS", 1000)  # the long document is cut into pieces
    cfg, run = direct_run(train, val, vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    whole = {p.name: p.read_bytes() for p in run.tokens.iterdir()}
    monkeypatch.setattr(encode, "BATCH_CHARS", 50)
    encode.run_tokenize_stage(cfg, run)
    assert {p.name: p.read_bytes() for p in run.tokens.iterdir()} == whole
    check_against_shards(run)
