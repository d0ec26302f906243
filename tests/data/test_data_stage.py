"""End-to-end tests of the data stage on tiny corpora written into tmp_path."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from fmforge.data import gather as gather_mod
from fmforge.data.problems import EmptyCorpusError, NoFilesMatchedError
from fmforge.data.shards import iter_split_records, iter_split_texts, list_shards, read_data_card
from fmforge.data.stage import data_inputs_fingerprint, run_data_stage
from fmforge.rundir import RunDir


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir(tmp_path / "runs" / "t")


def _card(run: RunDir) -> dict:
    return json.loads(run.data_card.read_text())


def _assert_counts_add_up(card: dict) -> None:
    for name, s in card["sources"].items():
        assert s["documents_read"] == s["kept_documents"] + s["dropped_total"] + s["duplicates"], name
        assert s["kept_documents"] == s["train_documents"] + s["val_documents"], name
        assert s["mixture"]["documents_before"] == s["train_documents"], name
    t = card["totals"]
    assert t["documents_read"] == t["kept_documents"] + t["dropped_total"] + t["duplicates"]
    assert card["splits"]["train"]["documents"] == t["mixed_train_documents"]
    assert card["splits"]["val"]["documents"] == t["val_documents"]


def test_shards_columns_and_card_counts(write, make_cfg, run, doc_text):
    for i in range(30):
        write(f"a/{i:02d}.txt", doc_text(i, "alpha"))
    write("a/short.txt", "hi")
    write("a/empty.txt", "  \n")
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"]}], min_chars=5, val_fraction=0.2, shard_max_docs=7)
    summary = run_data_stage(cfg, run)

    card = _card(run)
    _assert_counts_add_up(card)
    a = card["sources"]["a"]
    assert a["files_matched"] == 32 and a["documents_read"] == 32
    assert a["dropped_reasons"]["length:too_short"] == 1 and a["dropped_reasons"]["length:empty"] == 1
    assert a["dropped"]["length"] == 2
    assert a["kept_documents"] == 30

    train_shards = list_shards(run.data, "train")
    val_shards = list_shards(run.data, "val")
    assert [p.name for p in train_shards] == card["splits"]["train"]["shards"]
    assert train_shards[0].name == "train-00000.parquet" and val_shards[0].name == "val-00000.parquet"
    for p in train_shards + val_shards:
        t = pq.read_table(p)
        assert t.column_names == ["id", "text", "source"]
        assert t.num_rows <= 7
        assert all(str(ty) == "string" for ty in t.schema.types)
    rows = list(iter_split_records(run.data, "train"))
    assert len(rows) == summary["train_docs"] == card["splits"]["train"]["documents"]
    assert all(r["source"] == "a" and r["id"].startswith("a/") for r in rows)
    val_texts = list(iter_split_texts(run.data, "val"))
    assert len(val_texts) == summary["val_docs"] >= 1
    assert not set(val_texts) & {r["text"] for r in rows}
    assert summary["dropped"] == 2
    assert read_data_card(run.data)["totals"] == card["totals"]


def test_undecodable_bytes_and_crlf(write, make_cfg, run):
    write("t/good.txt", "line one\r\nline two\rline three\r\n" * 3)
    write("t/bad.txt", b"caf\xe9 au lait \xff\xfe and more text here")
    write("t/bom.txt", "\ufeffwith a byte order mark, long enough")
    cfg = make_cfg([{"name": "t", "paths": ["t/*.txt"]}], val_fraction=0.0)
    run_data_stage(cfg, run)
    card = _card(run)
    t = card["sources"]["t"]
    assert t["reader"]["decode_error_files"] == 1
    assert t["reader"]["replaced_bytes"] == 3
    assert card["totals"]["reader"]["replaced_bytes"] == 3
    texts = {r["id"]: r["text"] for r in iter_split_records(run.data, "train")}
    assert texts["t/good.txt"] == "line one\nline two\nline three\n" * 3
    assert "\r" not in texts["t/good.txt"]
    assert texts["t/bad.txt"].count("\ufffd") == 3  # kept, not dropped
    assert texts["t/bom.txt"].startswith("with")
    assert list_shards(run.data, "val") == []


def test_duplicates_across_sources(write, make_cfg, run, doc_text):
    for i in range(10):
        write(f"one/{i}.txt", doc_text(i, "shared"))
    for i in range(5):
        write(f"two/{i}.txt", doc_text(i, "shared"))  # same texts as one/0..4
    write("two/own.txt", doc_text(99, "unique"))
    write("two/crlf.txt", doc_text(7, "shared").replace(" ", "\r\n", 1))  # differs: not a dup
    write("one/again.txt", doc_text(3, "shared"))  # duplicate inside source one
    cfg = make_cfg([{"name": "one", "paths": ["one/*.txt"]}, {"name": "two", "paths": ["two/*.txt"]}])
    summary = run_data_stage(cfg, run)
    card = _card(run)
    _assert_counts_add_up(card)
    assert card["sources"]["one"]["duplicates"] == 1
    assert card["sources"]["two"]["duplicates"] == 5
    assert card["sources"]["two"]["kept_documents"] == 2
    assert summary["duplicates"] == 6


def test_dedup_none_keeps_duplicates(write, make_cfg, run):
    for i in range(4):
        write(f"one/{i}.txt", "the very same text")
    cfg = make_cfg([{"name": "one", "paths": ["one/*.txt"]}], dedup="none", val_fraction=0.0)
    run_data_stage(cfg, run)
    card = _card(run)
    assert card["sources"]["one"]["duplicates"] == 0 and card["sources"]["one"]["kept_documents"] == 4


def test_mixture_weights_on_train_only(write, make_cfg, run, doc_text):
    for i in range(60):
        write(f"a/{i}.txt", doc_text(i, "aaa"))
        write(f"b/{i}.txt", doc_text(i, "bbb"))
        write(f"c/{i}.txt", doc_text(i, "ccc"))
    cfg = make_cfg(
        [
            {"name": "a", "paths": ["a/*.txt"], "weight": 2.0},
            {"name": "b", "paths": ["b/*.txt"], "weight": 0.5},
            {"name": "c", "paths": ["c/*.txt"]},
        ],
        val_fraction=0.1,
    )
    run_data_stage(cfg, run)
    card = _card(run)
    _assert_counts_add_up(card)
    rows = list(iter_split_records(run.data, "train"))
    per = {s: sum(r["source"] == s for r in rows) for s in "abc"}
    src = card["sources"]
    assert per["a"] == 2 * src["a"]["train_documents"] == src["a"]["mixture"]["documents_after"]
    assert per["c"] == src["c"]["train_documents"]
    assert 0.25 * src["b"]["train_documents"] <= per["b"] <= 0.75 * src["b"]["train_documents"]
    assert per["b"] == src["b"]["mixture"]["documents_after"]
    shares = [s["mixture"]["share_of_train_bytes"] for s in src.values()]
    assert abs(sum(shares) - 1) < 1e-9
    # val is not mixed: each val document appears once
    val_ids = [r["id"] for r in iter_split_records(run.data, "val")]
    assert len(val_ids) == len(set(val_ids)) == card["totals"]["val_documents"]
    # the train split is shuffled, not grouped by source
    assert [r["source"] for r in rows[:20]] != sorted(r["source"] for r in rows[:20])


def test_stage_is_deterministic(write, make_cfg, tmp_path, doc_text):
    for i in range(40):
        write(f"a/{i}.txt", doc_text(i, "x"))
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"], "weight": 1.5}], val_fraction=0.2)
    r1, r2 = RunDir(tmp_path / "r1"), RunDir(tmp_path / "r2")
    run_data_stage(cfg, r1)
    run_data_stage(cfg, r2)
    for split in ("train", "val"):
        assert list(iter_split_records(r1.data, split)) == list(iter_split_records(r2.data, split))


def test_max_bytes_caps_a_source(write, make_cfg, run):
    for i in range(20):
        write(f"a/{i:02d}.txt", "x" * 99 + str(i % 10))  # 100 bytes each, distinct
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"], "max_bytes": 550}], val_fraction=0.0)
    run_data_stage(cfg, run)
    a = _card(run)["sources"]["a"]
    # accepted in reading order until the next document would pass 550 bytes
    assert a["kept_bytes"] == 500 and a["kept_documents"] == 5
    assert a["dropped"]["max_bytes"] == 5 and a["duplicates"] == 10  # only 10 distinct texts
    assert {r["id"] for r in iter_split_records(run.data, "train")} == {f"a/{i:02d}.txt" for i in range(5)}
    assert a["documents_read"] == a["kept_documents"] + a["dropped_total"] + a["duplicates"]


def test_pattern_matching_nothing_is_reported_and_strict_makes_it_an_error(write, make_cfg, run):
    write("a/1.txt", "some text")
    sources = [{"name": "a", "paths": ["a/*.txt"]}, {"name": "docs", "paths": ["dosc/**/*.md"]}]
    run_data_stage(make_cfg(sources, val_fraction=0.0), run)  # goes on without it
    docs = _card(run)["sources"]["docs"]
    assert docs["problems"]["counts"] == {"no_match": 1}
    assert "dosc" in docs["problems"]["examples"][0]["detail"]
    with pytest.raises(NoFilesMatchedError, match="'docs'.*dosc"):
        run_data_stage(make_cfg(sources, strict=True), RunDir(run.root.parent / "strict"))
    with pytest.raises(NoFilesMatchedError, match="(?s)no source matched any file.*dosc"):
        run_data_stage(make_cfg(sources[1:]), RunDir(run.root.parent / "none"))


def test_everything_filtered_explains_which_filter(write, make_cfg, run):
    write("a/1.txt", "tiny")
    write("a/2.txt", "")
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"]}], min_chars=100)
    with pytest.raises(EmptyCorpusError) as e:
        run_data_stage(cfg, run)
    msg = str(e.value)
    assert "'a'" in msg and "too_short" in msg and "min_chars=100" in msg and "empty" in msg
    assert not run.data.exists()


def test_failure_while_writing_leaves_no_data_dir(write, make_cfg, run, monkeypatch, doc_text):
    for i in range(20):
        write(f"a/{i}.txt", doc_text(i))
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"]}], shard_max_docs=3)
    real = gather_mod._copy_out
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(gather_mod, "_copy_out", flaky)
    with pytest.raises(OSError, match="disk full"):
        run_data_stage(cfg, run)
    assert calls["n"] == 3  # it did fail midway, after writing shards
    assert not run.data.exists()
    assert not [p for p in run.root.iterdir() if p.name.startswith(".data")]


def test_failed_rerun_keeps_previous_data(write, make_cfg, run, monkeypatch, doc_text):
    for i in range(5):
        write(f"a/{i}.txt", doc_text(i))
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"]}])
    run_data_stage(cfg, run)
    before = _card(run)
    monkeypatch.setattr(gather_mod, "_copy_out", lambda *a, **k: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        run_data_stage(cfg, run)
    assert _card(run) == before


def test_inputs_fingerprint_tracks_files(write, make_cfg):
    p = write("a/1.txt", "first version")
    cfg = make_cfg([{"name": "a", "paths": ["a/*.txt"]}])
    fp1 = data_inputs_fingerprint(cfg)
    assert data_inputs_fingerprint(cfg) == fp1
    p.write_text("second version, longer")
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    fp2 = data_inputs_fingerprint(cfg)
    assert fp2 != fp1
    write("a/2.txt", "a new file")
    assert data_inputs_fingerprint(cfg) != fp2


def test_list_shards_on_missing_dir_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="data stage"):
        list_shards(tmp_path / "nope", "train")
    with pytest.raises(ValueError):
        list_shards(tmp_path, "test")
