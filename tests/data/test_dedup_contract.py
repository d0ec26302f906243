"""The bucket directory's contract, read back with numpy, json and os rather
than through the code that wrote it: file names, the record layout, the
manifest, what phase 2 skips, and every error a user can meet (with its text)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fmforge.data.dedup import (
    EXAMPLE_MEMBERS,
    EXAMPLES,
    RECORD,
    BucketWriter,
    DedupResult,
    content_digest,
    docref,
    edges_from_records,
    edges_in_partition,
    exact_key,
    find_duplicates,
    read_manifests,
    result_from_clusters,
    union_find,
)


def k(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.uint64)


def test_digest_key_and_docref_by_hand():
    d = content_digest(b"abc")
    assert d == hashlib.blake2b(b"abc", digest_size=16).digest()
    assert exact_key(d) == int.from_bytes(d[:8], "little")
    assert exact_key(bytes(range(16))) == 0x0706050403020100
    assert docref(0, 5) == 5 and docref(3, 7) == 3 * 2**32 + 7
    assert docref(1, 2**32 - 1) == 2**33 - 1
    assert RECORD.itemsize == 14 and RECORD.names == ("band", "key", "index")


def test_the_files_a_task_writes_read_back_with_numpy_and_json(tmp_path):
    with BucketWriter(str(tmp_path), 12, 3, flush_records=4) as w:
        w.add(0, k(3, 4))  # keys 3, 4: partitions 0 and 1
        w.add(7, k(5, 9))  # 4 records buffered: a chunk is written
        w.add(8, k(6, 7))  # the rest goes at close, as chunk 1
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["part-00000/task-000012-0000.npy", "part-00000/task-000012-0001.npy",
                     "part-00001/task-000012-0000.npy", "part-00001/task-000012-0001.npy",
                     "part-00002/task-000012-0000.npy", "tasks/task-000012.json"]
    p0 = np.load(tmp_path / "part-00000/task-000012-0000.npy")
    assert p0.dtype == RECORD
    assert p0.tolist() == [(0, 3, 0), (1, 9, 7)]  # keys 3 and 9 are 0 mod 3: (band, key, index)
    assert np.load(tmp_path / "part-00001/task-000012-0000.npy").tolist() == [(1, 4, 0)]
    assert np.load(tmp_path / "part-00002/task-000012-0000.npy").tolist() == [(0, 5, 7)]
    assert np.load(tmp_path / "part-00000/task-000012-0001.npy").tolist() == [(0, 6, 8)]
    assert np.load(tmp_path / "part-00001/task-000012-0001.npy").tolist() == [(1, 7, 8)]
    manifest = json.loads((tmp_path / "tasks/task-000012.json").read_text())
    assert manifest == {"task": 12, "partitions": 3, "chunks": 2, "documents": 3, "records": 6,
                        "keys_per_document": 2}
    assert (tmp_path / "tasks/task-000012.json").read_text() == json.dumps(manifest, sort_keys=True)
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # written under temporary names, renamed


def test_an_empty_task_writes_only_its_manifest_and_close_is_idempotent(tmp_path):
    w = BucketWriter(str(tmp_path), 0, 2)
    w.close()
    w.close()
    assert json.loads((tmp_path / "tasks/task-000000.json").read_text()) == {
        "task": 0, "partitions": 2, "chunks": 0, "documents": 0, "records": 0, "keys_per_document": None}
    assert sorted(os.listdir(tmp_path)) == ["tasks"]
    with pytest.raises(RuntimeError) as err:
        w.add(0, k(1))
    assert str(err.value) == "BucketWriter.add after close"
    assert read_manifests(str(tmp_path), 1, 2) == [0]
    r = find_duplicates(str(tmp_path), 1, 2)
    assert (r.removed, r.clusters, r.largest, r.duplicates, r.examples) == ({}, 0, 0, 0, [])


def test_writer_errors_name_the_value_and_the_rule(tmp_path):
    for task in (-1, 2**31):
        with pytest.raises(ValueError) as err:
            BucketWriter(str(tmp_path), task, 1)
        assert str(err.value) == f"task number {task} out of range [0, 2**31)"
    BucketWriter(str(tmp_path), 2**31 - 1, 1)  # the last valid task
    with pytest.raises(ValueError) as err:
        BucketWriter(str(tmp_path), 0, 0)
    assert str(err.value) == "partitions must be >= 1, got 0"
    w = BucketWriter(str(tmp_path), 3, 1)
    for index in (-1, 2**32):
        with pytest.raises(ValueError) as err:
            w.add(index, k(1))
        assert str(err.value) == f"local index {index} out of range [0, 2**32)"
    w.add(2**32 - 1, k(1, 2))
    with pytest.raises(ValueError) as err:
        w.add(0, k(1, 2, 3))
    assert str(err.value) == ("document 0 has 3 keys, earlier documents of task 3 had 2: every "
                              "document needs the same bands")


def test_an_error_inside_the_with_block_leaves_no_manifest(tmp_path):
    with pytest.raises(KeyError):
        with BucketWriter(str(tmp_path), 0, 1, flush_records=1) as w:
            w.add(0, k(1))
            raise KeyError("boom")
    assert not (tmp_path / "tasks").exists()
    assert (tmp_path / "part-00000/task-000000-0000.npy").exists()  # its chunk is there, unlisted


def test_manifest_errors(tmp_path):
    for t in range(13):
        if t in (0, 12):
            BucketWriter(str(tmp_path), t, 2).close()
    with pytest.raises(FileNotFoundError) as err:
        read_manifests(str(tmp_path), 13, 2)
    assert str(err.value) == (f"{tmp_path}: 11 of 13 tasks have no bucket manifest (tasks 1, 2, 3, 4, 5, "
                              "6, 7, 8, 9, 10 ...): they did not finish phase 1; rerun them")
    with pytest.raises(FileNotFoundError) as err:
        read_manifests(str(tmp_path), 2, 2)
    assert str(err.value) == (f"{tmp_path}: 1 of 2 tasks have no bucket manifest (tasks 1): they did "
                              "not finish phase 1; rerun them")
    with pytest.raises(ValueError) as err:
        read_manifests(str(tmp_path), 1, 3)
    assert str(err.value) == (f"{tmp_path}: task 0 wrote 2 partitions, phase 2 expects 3; rerun the "
                              "tasks with the same partition count")
    other = tmp_path / "ten"
    for t in range(11):
        if t == 0:
            BucketWriter(str(other), t, 1).close()
    with pytest.raises(FileNotFoundError, match=r"\(tasks 1, 2, 3, 4, 5, 6, 7, 8, 9, 10\)"):
        read_manifests(str(other), 11, 1)


def test_phase_2_reads_only_listed_chunks_of_listed_tasks(tmp_path):
    with BucketWriter(str(tmp_path), 0, 1) as w:
        w.add(0, k(5))
    with BucketWriter(str(tmp_path), 1, 1) as w:
        w.add(0, k(5))
    part = tmp_path / "part-00000"
    rec = np.array([(0, 5, 9)], dtype=RECORD)
    buf = io.BytesIO()
    np.save(buf, rec)
    (part / "task-000001-0001.npy").write_bytes(buf.getvalue())  # chunk 1 of task 1: not in its manifest
    (part / "task-000002-0000.npy").write_bytes(buf.getvalue())  # task 2: not asked for
    (part / ".tmp-abc").write_bytes(b"half")  # a writer still running
    (part / "notes.txt").write_text("x")
    edges = edges_in_partition(str(tmp_path), 0, [1, 1])
    assert edges.tolist() == [[docref(0, 0), docref(1, 0)]]
    assert edges_in_partition(str(tmp_path), 7, [1, 1]).shape == (0, 2)  # no such partition
    r = find_duplicates(str(tmp_path), 2, 1)
    assert {t: v.tolist() for t, v in r.removed.items()} == {1: [0]}


def test_a_chunk_vanishing_during_phase_2_is_named(tmp_path, monkeypatch):
    with BucketWriter(str(tmp_path), 0, 1) as w:
        w.add(0, k(5))
    from fmforge.data.store import Store

    def vanished(self, rel):  # listed, then gone (another attempt's cleanup) when read
        raise FileNotFoundError(rel)

    monkeypatch.setattr(Store, "read_bytes", vanished)
    with pytest.raises(FileNotFoundError) as err:
        edges_in_partition(str(tmp_path), 0, [1])
    assert str(err.value) == f"{tmp_path}: task-000000-0000.npy vanished while phase 2 read it"


def test_edges_by_hand():
    empty = edges_from_records(np.array([], np.uint16), np.array([], np.uint64), np.array([], np.int64))
    assert empty.shape == (0, 2) and empty.dtype == np.int64
    # band 0 key 7: refs 9, 4, 6 -> 4 is first; band 1 key 7: 6 alone; band 0 key 8: 4, 6 again
    band = np.array([0, 0, 0, 1, 0, 0], np.uint16)
    key = np.array([7, 7, 7, 7, 8, 8], np.uint64)
    refs = np.array([9, 4, 6, 6, 6, 4], np.int64)
    assert edges_from_records(band, key, refs).tolist() == [[4, 6], [4, 9]]
    # one document alone in each group, and one repeated in its own group: no edge
    single = edges_from_records(np.array([0, 1, 1], np.uint16), np.array([1, 1, 1], np.uint64),
                                np.array([3, 3, 3], np.int64))
    assert single.shape == (0, 2)


def test_union_find_by_hand():
    nodes, roots = union_find(np.empty((0, 2), dtype=np.int64))
    assert nodes.tolist() == [] and roots.tolist() == []
    # 50-40, 40-30, 30-20 (a chain that needs several rounds), and 7-8 apart.
    edges = np.array([[40, 50], [30, 40], [20, 30], [7, 8]])
    nodes, roots = union_find(edges)
    assert nodes.tolist() == [7, 8, 20, 30, 40, 50]
    assert roots.tolist() == [7, 7, 20, 20, 20, 20]
    nodes, roots = union_find(np.array([[5, 1], [9, 5]]))  # edges in either direction
    assert roots.tolist() == [1, 1, 1]


def test_result_examples_sizes_ids_and_card_by_hand():
    # Clusters: {1, 2, 3} (3), {10, 11} (2), {4, 5} (2), {2**32 + 0, 2**32 + 1} (2, task 1)
    t1 = 1 << 32
    nodes = np.array([1, 2, 3, 4, 5, 10, 11, t1, t1 + 1])
    roots = np.array([1, 1, 1, 4, 4, 10, 10, t1, t1])
    r = result_from_clusters(nodes, roots)
    assert {t: v.tolist() for t, v in r.removed.items()} == {0: [2, 3, 5, 11], 1: [1]}
    assert all(v.dtype == np.int64 for v in r.removed.values())
    assert (r.clusters, r.largest, r.duplicates) == (4, 3, 5)
    # Largest first, ties by first document.
    assert r.examples == [[1, 2, 3], [4, 5], [10, 11], [t1, t1 + 1]]
    assert r.example_sizes == [3, 2, 2, 2] and r.example_ids is None
    card = r.to_dict()
    assert card == {"duplicates": 5, "clusters": 4, "largest_cluster": 3, "example_clusters": [
        {"size": 3, "kept": "0:1", "documents": ["0:1", "0:2", "0:3"]},
        {"size": 2, "kept": "0:4", "documents": ["0:4", "0:5"]},
        {"size": 2, "kept": "0:10", "documents": ["0:10", "0:11"]},
        {"size": 2, "kept": "1:0", "documents": ["1:0", "1:1"]},
    ]}
    named = r.to_dict(ids=lambda d: f"doc{d}")
    assert named["example_clusters"][0] == {"size": 3, "kept": "doc1", "documents": ["doc1", "doc2", "doc3"]}
    with_ids = result_from_clusters(nodes, roots, ids=lambda d: f"id{d}")
    assert with_ids.example_ids[1] == ["id4", "id5"]
    assert with_ids.to_dict()["example_clusters"][1]["documents"] == ["id4", "id5"]
    assert r.is_removed(0, 2) and r.is_removed(1, 1)
    assert not r.is_removed(0, 1) and not r.is_removed(0, 4) and not r.is_removed(0, 12)
    assert not r.is_removed(2, 0) and not r.is_removed(1, 0)
    assert not r.is_removed(0, 0)


def test_examples_are_capped():
    # EXAMPLES + 2 clusters; the biggest has more members than EXAMPLE_MEMBERS.
    big = list(range(100, 100 + EXAMPLE_MEMBERS + 3))
    nodes, roots = list(big), [100] * len(big)
    for c in range(EXAMPLES + 1):
        nodes += [1000 + 2 * c, 1001 + 2 * c]
        roots += [1000 + 2 * c] * 2
    order = np.argsort(nodes)
    r = result_from_clusters(np.array(nodes)[order], np.array(roots)[order])
    assert len(r.examples) == EXAMPLES == 5
    assert r.examples[0] == big[:EXAMPLE_MEMBERS] and EXAMPLE_MEMBERS == 10
    assert r.example_sizes == [len(big), 2, 2, 2, 2]
    assert r.examples[1] == [1000, 1001] and r.largest == len(big)


def test_dedup_result_without_removals():
    r = DedupResult(removed={}, clusters=0, largest=0, examples=[], duplicates=0)
    assert not r.is_removed(0, 0)
    assert r.to_dict() == {"duplicates": 0, "clusters": 0, "largest_cluster": 0, "example_clusters": []}


def test_a_stale_chunk_of_an_earlier_task_does_not_hide_the_later_tasks(tmp_path):
    """A task rerun with fewer chunks leaves its old chunk files behind; they sort
    before the next task's files, and phase 2 must skip them and read on."""
    with BucketWriter(str(tmp_path), 0, 1) as w:
        w.add(0, k(5))
    with BucketWriter(str(tmp_path), 1, 1) as w:
        w.add(0, k(5))  # a copy of task 0's document
    stale = np.array([(0, 99, 3)], dtype=RECORD)
    buf = io.BytesIO()
    np.save(buf, stale)
    (tmp_path / "part-00000" / "task-000000-0007.npy").write_bytes(buf.getvalue())  # not in task 0's manifest
    assert sorted(os.listdir(tmp_path / "part-00000"))[1] == "task-000000-0007.npy"  # read before task 1's
    assert edges_in_partition(str(tmp_path), 0, [1, 1]).tolist() == [[docref(0, 0), docref(1, 0)]]
    assert {t: v.tolist() for t, v in find_duplicates(str(tmp_path), 2, 1).removed.items()} == {1: [0]}


def test_a_bucket_file_holding_pickled_objects_is_refused(tmp_path):
    """Bucket directories may be shared storage: a chunk that needs unpickling (code
    run on load) is refused, never executed."""
    with BucketWriter(str(tmp_path), 0, 1) as w:
        w.add(0, k(5))
    buf = io.BytesIO()
    np.save(buf, np.array([{"band": 0}], dtype=object), allow_pickle=True)
    (tmp_path / "part-00000" / "task-000000-0000.npy").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        edges_in_partition(str(tmp_path), 0, [1])


def test_an_fsspec_url_writes_under_that_url_and_nowhere_local(tmp_path, monkeypatch):
    fsspec = pytest.importorskip("fsspec")
    monkeypatch.chdir(tmp_path)  # a URL taken for a local path would appear here
    url = f"memory://buckets-{os.getpid()}/run/"  # a trailing slash, as users write folders
    for task in (0, 1):
        with BucketWriter(url, task, 2) as w:
            w.add(0, k(5, 8))
    fs = fsspec.filesystem("memory")
    root = f"/buckets-{os.getpid()}/run"
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/tasks", detail=False)) == \
        ["task-000000.json", "task-000001.json"]
    assert json.loads(fs.cat_file(f"{root}/tasks/task-000001.json"))["records"] == 2
    assert any(fs.ls(f"{root}/part-00001", detail=False))  # key 5 % 2 = 1: its partition has a chunk
    assert os.listdir(tmp_path) == []
    assert {t: v.tolist() for t, v in find_duplicates(url, 2, 2).removed.items()} == {1: [0]}
