"""The data stage as parallel tasks: the same shards however the work is cut or
scheduled, resumption after a kill, rejected documents kept with their reason,
and bad input counted while the stage goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmforge.data import stage as stage_mod
from fmforge.data.shards import iter_split_records
from fmforge.data.stage import run_data_stage
from fmforge.rundir import RunDir


def _shard_bytes(run: RunDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.data.glob("*.parquet"))}


def _corpus(write, doc_text, n: int = 60) -> list[dict]:
    for i in range(n):
        write(f"a/{i:03d}.txt", doc_text(i, "alpha") + f" unique {i}")
    for i in range(n // 2):
        write(f"b/{i:03d}.txt", doc_text(i, "beta") + f" unique {i}")
    write("b/copy.txt", doc_text(3, "alpha") + " unique 3")  # an exact duplicate of a/003
    return [{"name": "a", "paths": ["a/*.txt"]}, {"name": "b", "paths": ["b/*.txt"], "weight": 1.5}]


def test_same_shards_however_the_input_is_cut_into_tasks(write, make_cfg, tmp_path, doc_text):
    sources = _corpus(write, doc_text)
    one = RunDir(tmp_path / "one")
    many = RunDir(tmp_path / "many")
    s1 = run_data_stage(make_cfg(sources, val_fraction=0.1, shard_max_docs=20, workers=1), one)
    s2 = run_data_stage(make_cfg(sources, val_fraction=0.1, shard_max_docs=20, workers=1, task_bytes=500), many)
    card = json.loads(many.data_card.read_text())
    assert card["tasks"] > 20  # really cut into many tasks
    assert json.loads(one.data_card.read_text())["tasks"] == 2  # one per source
    assert s1["duplicates"] == s2["duplicates"] == 1
    assert _shard_bytes(one) == _shard_bytes(many)
    # the survivor of the duplicate pair is the first in reading order
    ids = {r["id"] for split in ("train", "val") for r in iter_split_records(many.data, split)}
    assert "a/003.txt" in ids and "b/copy.txt" not in ids
    assert not (many.root / "data.work").exists()  # the work directory is gone once data/ is in place


def test_process_pool_gives_the_same_shards(write, make_cfg, tmp_path, doc_text):
    sources = _corpus(write, doc_text, n=30)
    inline, pool = RunDir(tmp_path / "inline"), RunDir(tmp_path / "pool")
    run_data_stage(make_cfg(sources, workers=1, task_bytes=2000), inline)
    run_data_stage(make_cfg(sources, workers=2, task_bytes=2000), pool)
    assert _shard_bytes(inline) == _shard_bytes(pool)


def test_a_killed_stage_resumes_from_its_markers(write, make_cfg, tmp_path, doc_text, monkeypatch):
    sources = _corpus(write, doc_text, n=40)
    cfg = make_cfg(sources, workers=1, task_bytes=3000, val_fraction=0.1)
    run = RunDir(tmp_path / "killed")
    real_scatter, real_curate = stage_mod.scatter_task, stage_mod.curate_task
    calls = {"scatter": 0, "curate": 0}

    def dies_midway(payload):
        calls["scatter"] += 1
        if calls["scatter"] == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside
        return real_scatter(payload)

    monkeypatch.setattr(stage_mod, "scatter_task", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_data_stage(cfg, run)
    assert not run.data.exists()

    def counting_curate(payload):
        calls["curate"] += 1
        return real_curate(payload)

    calls["scatter"] = 100  # no more failures
    monkeypatch.setattr(stage_mod, "curate_task", counting_curate)
    monkeypatch.setattr(stage_mod, "scatter_task", real_scatter)
    run_data_stage(cfg, run)
    assert calls["curate"] == 0  # every task's reading was done before the kill
    fresh = RunDir(tmp_path / "fresh")
    run_data_stage(cfg, fresh)
    assert _shard_bytes(run) == _shard_bytes(fresh)


def test_rejected_documents_are_kept_with_their_reason(write, make_cfg, tmp_path, doc_text):
    for i in range(10):
        write(f"a/{i:02d}.txt", doc_text(i, "kept") + f" {i}")
    write("a/short.txt", "tiny")
    write("a/zz-dup.txt", doc_text(0, "kept") + " 0")
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"], "max_bytes": 450}], min_chars=10,
                   keep_rejected=True, val_fraction=0.0)
    run = RunDir(tmp_path / "r")
    run_data_stage(cfg, run)
    card = json.loads(run.data_card.read_text())
    rows = pa.concat_tables([pq.read_table(run.data / p) for p in card["rejected_shards"]]).to_pylist()
    reasons = {r["id"]: r["reason"] for r in rows}
    a = card["sources"]["a"]
    assert reasons["a/short.txt"] == "length:too_short"
    assert reasons["a/zz-dup.txt"] in ("duplicate", "max_bytes")
    assert sum(v == "max_bytes" for v in reasons.values()) == a["dropped"]["max_bytes"] > 0
    # nothing lost: every document read is kept or rejected
    kept = [r["id"] for r in iter_split_records(run.data, "train")]
    assert len(kept) + len(rows) == a["documents_read"] == 12
    assert not set(kept) & set(reasons)


def test_work_dir_can_be_an_fsspec_url(write, make_cfg, tmp_path, doc_text):
    sources = _corpus(write, doc_text, n=10)
    local, url = RunDir(tmp_path / "local"), RunDir(tmp_path / "url")
    run_data_stage(make_cfg(sources, workers=1), local)
    run_data_stage(make_cfg(sources, workers=1, work_dir=f"file://{tmp_path}/shared-work"), url)
    assert _shard_bytes(local) == _shard_bytes(url)
    assert Path(tmp_path / "shared-work").is_dir()


@pytest.mark.slow
def test_ray_executor_gives_byte_identical_shards(write, make_cfg, tmp_path, doc_text):
    pytest.importorskip("ray")
    sources = _corpus(write, doc_text, n=30)
    local, on_ray = RunDir(tmp_path / "local"), RunDir(tmp_path / "ray")
    run_data_stage(make_cfg(sources, workers=1, task_bytes=2000), local)
    run_data_stage(make_cfg(sources, executor="ray", workers=2, task_bytes=2000), on_ray)
    assert _shard_bytes(local) == _shard_bytes(on_ray)
    card = json.loads(on_ray.data_card.read_text())
    assert card["executor"]["kind"] == "ray"


def _record_task_peaks(monkeypatch, task: str) -> list[int]:
    """Wrap the stage's ``task`` function: the peak of Python memory (tracemalloc,
    started by the caller) during each call, appended to the list returned."""
    import tracemalloc

    peaks: list[int] = []
    real = getattr(stage_mod, task)

    def measured(payload):
        tracemalloc.reset_peak()
        out = real(payload)
        peaks.append(tracemalloc.get_traced_memory()[1])
        return out

    monkeypatch.setattr(stage_mod, task, measured)
    return peaks


def test_scatter_holds_a_bounded_batch_of_a_large_file(write, make_cfg, tmp_path, monkeypatch):
    """A task never splits a file, so one large JSONL file is one task however small
    data.task_bytes is; phase 3 must still hold about task_bytes of its text at a time,
    not the whole file, and give the same shards."""
    import random
    import tracemalloc

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    lines = [json.dumps({"text": f"doc {i}: " + " ".join(rng.choices(vocab, k=90))}) for i in range(16_000)]
    write("big.jsonl", "\n".join(lines) + "\n")
    text_bytes = (tmp_path / "big.jsonl").stat().st_size
    sources = [{"name": "web", "type": "jsonl", "paths": ["big.jsonl"], "weight": 1.5}]
    real_scatter = stage_mod.scatter_task
    peaks = _record_task_peaks(monkeypatch, "scatter_task")
    small, whole = RunDir(tmp_path / "small"), RunDir(tmp_path / "whole")
    tracemalloc.start()
    try:
        run_data_stage(make_cfg(sources, workers=1, val_fraction=0.05, task_bytes=1_000_000), small)
    finally:
        tracemalloc.stop()
    assert json.loads(small.data_card.read_text())["tasks"] == 1
    # held at once: about task_bytes of copies and a row group, not the 8.7 MB file (5.3x it before)
    assert text_bytes > 8_000_000 and peaks[0] < 0.75 * text_bytes, (peaks, text_bytes)
    monkeypatch.setattr(stage_mod, "scatter_task", real_scatter)
    run_data_stage(make_cfg(sources, workers=1, val_fraction=0.05, task_bytes=100_000_000), whole)
    assert _shard_bytes(small) == _shard_bytes(whole)


def test_curate_writes_a_batch_of_large_documents_before_it_grows_past_its_text_bound(
        write, make_cfg, tmp_path, monkeypatch):
    """Phase 1 writes its kept documents 1,024 at a time, or sooner once the batch holds
    curate.BATCH_CHARS of text: 1,024 source files or books would be hundreds of MB."""
    import random
    import tracemalloc

    from fmforge.data import curate

    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(5000)]
    for i in range(150):
        write(f"books/{i:03d}.txt", f"book {i}\n" + " ".join(rng.choices(vocab, k=7000)))
    text_bytes = sum(p.stat().st_size for p in (tmp_path / "books").iterdir())
    monkeypatch.setattr(curate, "BATCH_CHARS", 500_000, raising=False)
    peaks = _record_task_peaks(monkeypatch, "curate_task")
    run = RunDir(tmp_path / "run")
    tracemalloc.start()
    try:
        run_data_stage(make_cfg([{"name": "books", "paths": ["books/*.txt"]}], workers=1, dedup="none"), run)
    finally:
        tracemalloc.stop()
    assert len(peaks) == 1 and text_bytes > 5_000_000
    # a batch of about 0.5 MB of text (and its encoded copy) at a time, not all 150 books (3x them before)
    assert peaks[0] < 0.6 * text_bytes, (peaks, text_bytes)
    docs = [r for split in ("train", "val") for r in iter_split_records(run.data, split)]
    assert len(docs) == 150
