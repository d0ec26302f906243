"""The token files against the data shards they came from: each document's tokens
decode to its text, its source is right, the counts add up; the process pool and
Ray write the same bytes as the inline path, and the same tokens as encoding every
document on its own and concatenating; a killed encode resumes without redoing
units; empty, huge and NUL-laden documents round-trip."""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import numpy as np
import pytest

import fmforge.data.shards as shards
from fmforge.data import executor
from fmforge.data.shards import iter_split_records
from fmforge.tokenizer import encode
from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.tokens import open_tokens
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
        ids = np.asarray(open_tokens(run, split))
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


def _token_files(run) -> dict[str, bytes]:
    return {p.relative_to(run.tokens).as_posix(): p.read_bytes() for p in sorted(run.tokens.rglob("*")) if p.is_file()}


def _one_document_at_a_time(run) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The oracle: each document encoded alone, then its end-of-text token, concatenated
    in shard order (what the one-file layout held); per split (tokens, offsets, sources)."""
    meta = json.loads((run.tokens / "meta.json").read_text())
    tok = load_tokenizer(run, raw_text=True)
    out = {}
    for split in ("train", "val"):
        records = list(iter_split_records(run.data, split, columns=("text", "source")))
        docs = [tok.encode(r["text"], add_special_tokens=False).ids + [meta["eos_id"]] for r in records]
        out[split] = (np.array([t for d in docs for t in d], dtype=meta["dtype"]),
                      np.cumsum([0] + [len(d) for d in docs]),
                      np.array([meta["sources"].index(r["source"]) for r in records], dtype=np.uint16))
    return out


def _same_as_oracle(run, oracle) -> None:
    for split, (ids, offsets, sources) in oracle.items():
        assert np.array_equal(np.asarray(open_tokens(run, split)), ids), split
        assert np.array_equal(np.load(run.tokens / f"{split}.docs.npy"), offsets), split
        assert np.array_equal(np.load(run.tokens / f"{split}.sources.npy"), sources), split


@pytest.fixture
def encoded_inline(direct_run, make_docs, small_groups):
    """A run tokenized in this process (a small corpus), its token files and the oracle."""
    train, val = two_sources(make_docs)
    cfg, run = direct_run(train, val, shard_max_docs=64, vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    oracle = _one_document_at_a_time(run)
    _same_as_oracle(run, oracle)
    files = _token_files(run)
    meta = json.loads(files["meta.json"])
    assert len(meta["files"]["train"]) == 12 and len(meta["files"]["val"]) == 4  # one file per unit
    return cfg, run, files, oracle


def test_the_process_pool_writes_the_same_bytes_as_inline(encoded_inline, monkeypatch):
    cfg, run, inline, oracle = encoded_inline
    used_pool = []
    real = executor.ProcessPoolExecutor
    monkeypatch.setattr(executor, "ProcessPoolExecutor", lambda *a, **k: used_pool.append(k) or real(*a, **k))
    cfg.data.workers = 2  # data.executor: local, the default
    encode.run_tokenize_stage(cfg, run)
    assert [k["max_workers"] for k in used_pool] == [1]  # one process beside the driver's own slot
    assert _token_files(run) == inline
    _same_as_oracle(run, oracle)


def test_units_become_the_split_s_files_linked_or_else_copied(encoded_inline, monkeypatch):
    """Each unit's file is hard-linked into tokens/ (no copy of the corpus); on a file
    system without hard links it is copied, to the same bytes."""
    cfg, run, inline, _ = encoded_inline
    links = []
    real_link = encode.os.link
    monkeypatch.setattr(encode.os, "link", lambda src, dst: links.append(dst) or real_link(src, dst))
    encode.run_tokenize_stage(cfg, run)
    assert len(links) == 16 and _token_files(run) == inline

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(encode.os, "link", no_links)
    encode.run_tokenize_stage(cfg, run)
    assert _token_files(run) == inline


@pytest.mark.slow
def test_ray_writes_the_same_bytes_as_inline(encoded_inline, monkeypatch):
    pytest.importorskip("ray")
    cfg, run, inline, oracle = encoded_inline
    on_ray = []
    real = executor.TaskRunner._run_ray
    monkeypatch.setattr(executor.TaskRunner, "_run_ray",
                        lambda self, fn, payloads, bar: on_ray.append(len(payloads)) or real(self, fn, payloads, bar))
    cfg.data.executor, cfg.data.workers = "ray", 2
    encode.run_tokenize_stage(cfg, run)
    assert on_ray == [16]
    assert _token_files(run) == inline
    _same_as_oracle(run, oracle)


def test_a_worker_encodes_with_one_rust_thread(encoded_inline, monkeypatch):
    """RAYON_NUM_THREADS=1 is set in the task itself, before the tokenizer is first
    used, so it reaches Ray workers (which do not inherit this process's environment);
    a task run in this process (a small corpus) keeps all threads."""
    import fmforge.tokenizer.load as load

    cfg, run, _, _ = encoded_inline
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    seen = []

    def spy(*a, **k):
        seen.append(os.environ.get("RAYON_NUM_THREADS"))
        raise RuntimeError("enough")

    class Scheduled(Exception):
        pass

    payloads = []

    def schedule_only(self, fn, todo, *a, **k):
        payloads.extend(todo)
        raise Scheduled

    monkeypatch.setattr(executor.TaskRunner, "run", schedule_only)
    with pytest.raises(Scheduled):
        encode.run_tokenize_stage(cfg, run)
    payload = payloads[0]
    monkeypatch.setattr(load, "load_tokenizer", spy)
    monkeypatch.setattr(encode, "_ENCODERS", {})  # this process's encoder, built by the fixture's encode
    with pytest.raises(RuntimeError, match="enough"):
        encode.encode_unit(payload)
    with pytest.raises(RuntimeError, match="enough"):
        encode.encode_unit({**payload, "driver": "elsewhere:1"})
    assert seen == [None, "1"]


class _Counting:
    """A progress bar that tallies its advances into ``tally[2]``."""

    def __init__(self, cm, tally):
        self.cm, self.tally = cm, tally

    def __enter__(self):
        self.bar = self.cm.__enter__()
        return self

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)

    def advance(self, n=1):
        self.tally[2] += n
        self.bar.advance(n)


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
    bars = []
    real_bar = executor.progress_bar

    def counted(description, total, unit=""):
        bar = real_bar(description, total, unit)
        bars.append([total, unit, 0])
        return _Counting(bar, bars[-1])

    monkeypatch.setattr(executor, "progress_bar", counted)
    encode.run_tokenize_stage(cfg, run)
    assert sorted(calls) == [i for i in range(n_units) if i not in done]
    assert bars == [[n_units, "units", n_units]]  # the bar counts units, the resumed ones included
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
    whole = _token_files(run)
    monkeypatch.setattr(encode, "BATCH_CHARS", 50)
    encode.run_tokenize_stage(cfg, run)
    assert _token_files(run) == whole
    check_against_shards(run)
