"""Deduplication across all sources: exact and MinHash near-duplicates, with
the buckets on disk.

Repeated documents make a model memorise instead of generalise and leak between
train and val, so each group of duplicates is kept once: the first occurrence
in the stage's deterministic reading order wins (sources in config order, files
sorted by path), and later copies are counted as duplicates.

A document is named by its ``docref = task << 32 | local_index`` (a task is a
numbered group of input files in reading order, ``local_index`` the document's
order inside it), so docref order is reading order and "first occurrence" is
"smallest docref". The work runs in two phases so that tasks can run in
parallel (on other machines) and memory never grows with the corpus:

1. Each task hashes each kept document to a few 64-bit keys (one per MinHash
   band, ``minhash.py``, plus one of the exact content) and a ``BucketWriter``
   writes ``(band, key, local_index)`` records to files partitioned by key.
2. ``find_duplicates`` reads one partition at a time (every task's records of
   that partition, so equal keys meet), turns each group of equal ``(band,
   key)`` into edges "member -> smallest docref of the group", joins the edges
   into clusters by union-find, and removes every member but the cluster's
   smallest docref. Memory is one partition plus the edges, which are
   proportional to the number of duplicated documents, not to the corpus.

Layout of the bucket directory (a local path or an fsspec URL)::

    part-00003/task-000012-0000.npy   records of task 12 whose key falls in
                                      partition 3; chunk 0 of that task
    tasks/task-000012.json            written last by BucketWriter.close():
                                      {"chunks", "partitions", "records", ...}

A record is numpy's structured ``RECORD`` (band u2, key u8, index u4; 14
bytes) in an ``.npy`` file. Each file is written under a temporary name and
renamed, and phase 2 reads only the chunks a task's manifest lists, so a task
killed mid-way (no manifest) is reported instead of half-read.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmforge.data.minhash import MinHasher
from fmforge.data.store import Store

DOCREF_SHIFT = 32
_LOCAL_MASK = (1 << DOCREF_SHIFT) - 1
RECORD = np.dtype([("band", "<u2"), ("key", "<u8"), ("index", "<u4")])
_CHUNK_NAME = re.compile(r"task-(\d+)-(\d+)\.npy")
# Clusters shown on the data card, and documents listed per cluster.
EXAMPLES = 5
EXAMPLE_MEMBERS = 10


def content_digest(data: bytes) -> bytes:
    """128-bit BLAKE2b of the UTF-8 bytes of a normalised text."""
    return hashlib.blake2b(data, digest_size=16).digest()


def exact_key(digest: bytes) -> int:
    """The exact-content bucket key: the digest's first 8 bytes, little-endian."""
    return int.from_bytes(digest[:8], "little")


def dedup_keys(texts: list[str], digests: list[bytes], hasher: MinHasher | None) -> np.ndarray:
    """What the stage passes to ``BucketWriter.add``, one row per document: the
    band keys of its text (a batch at a time: MinHash is faster over a batch)
    then its exact key; with ``hasher=None`` (exact dedup) the exact key alone."""
    exact = np.array([[exact_key(d)] for d in digests], dtype=np.uint64).reshape(len(digests), 1)
    if hasher is None:
        return exact
    return np.concatenate([hasher.band_keys_batch(texts), exact], axis=1)


def docref(task: int, local_index: int) -> int:
    return task << DOCREF_SHIFT | local_index


# --- the bucket directory ------------------------------------------------------


def _partition_dir(partition: int) -> str:
    return f"part-{partition:05d}"


def _manifest(task: int) -> str:
    return f"tasks/task-{task:06d}.json"


class BucketWriter:
    """Phase 1, in one task: collects each document's keys and writes them to
    partition files. Memory is bounded by ``flush_records``: when that many
    records are buffered they go to disk as one more chunk per partition."""

    def __init__(self, directory: str, task: int, partitions: int, flush_records: int = 1 << 20):
        if not 0 <= task < 1 << 31:
            raise ValueError(f"task number {task} out of range [0, 2**31)")
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.store = Store(directory)
        self.task, self.partitions, self.flush_records = task, partitions, flush_records
        self._indices: list[int] = []
        self._keys: list[np.ndarray] = []
        self._width: int | None = None
        self._chunks = 0
        self._records = 0
        self._documents = 0
        self._closed = False

    def __enter__(self) -> BucketWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:  # no manifest after an error: phase 2 reports the task
            self.close()

    def add(self, local_index: int, keys: np.ndarray) -> None:
        """One document's keys (uint64, one per band; the same count for every
        document of the task). ``local_index`` < 2**32, in reading order."""
        if self._closed:
            raise RuntimeError("BucketWriter.add after close")
        if not 0 <= local_index <= _LOCAL_MASK:
            raise ValueError(f"local index {local_index} out of range [0, 2**32)")
        keys = np.asarray(keys, dtype=np.uint64).ravel()
        if self._width is None:
            self._width = len(keys)
        elif len(keys) != self._width:
            raise ValueError(
                f"document {local_index} has {len(keys)} keys, earlier documents of task "
                f"{self.task} had {self._width}: every document needs the same bands"
            )
        self._indices.append(local_index)
        self._keys.append(keys)
        if len(self._indices) * self._width >= self.flush_records:
            self._flush()

    def _flush(self) -> None:
        if not self._indices:
            return
        width = self._width or 0
        keys = np.stack(self._keys)  # (docs, width)
        rec = np.empty(keys.size, dtype=RECORD)
        rec["band"] = np.tile(np.arange(width, dtype=np.uint16), len(self._indices))
        rec["key"] = keys.ravel()
        rec["index"] = np.repeat(np.array(self._indices, dtype=np.uint32), width)
        # Keys are uniform hashes, so their residues spread records evenly.
        part = (rec["key"] % np.uint64(self.partitions)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        rec, part = rec[order], part[order]
        bounds = np.searchsorted(part, np.arange(self.partitions + 1))
        for p in range(self.partitions):
            lo, hi = bounds[p], bounds[p + 1]
            if lo == hi:
                continue  # an absent file is an empty one
            buf = io.BytesIO()
            np.save(buf, rec[lo:hi], allow_pickle=False)
            self.store.write_bytes(f"{_partition_dir(p)}/task-{self.task:06d}-{self._chunks:04d}.npy",
                                   buf.getvalue())
        self._chunks += 1
        self._records += len(rec)
        self._documents += len(self._indices)
        self._indices, self._keys = [], []

    def close(self) -> None:
        """Flush the rest and write the manifest that marks the task complete."""
        if self._closed:
            return
        self._flush()
        manifest = {
            "task": self.task,
            "partitions": self.partitions,
            "chunks": self._chunks,
            "documents": self._documents,
            "records": self._records,
            "keys_per_document": self._width,
        }
        self.store.write_bytes(_manifest(self.task), json.dumps(manifest, sort_keys=True).encode("utf-8"))
        self._closed = True


def read_manifests(directory: str, tasks: int, partitions: int) -> list[int]:
    """Chunks written by each task; an error naming the tasks that did not finish."""
    store = Store(directory)
    chunks, missing = [], []
    for t in range(tasks):
        try:
            m = store.read_json(_manifest(t))
        except FileNotFoundError:
            missing.append(t)
            chunks.append(0)
            continue
        if m["partitions"] != partitions:
            raise ValueError(
                f"{directory}: task {t} wrote {m['partitions']} partitions, phase 2 expects "
                f"{partitions}; rerun the tasks with the same partition count"
            )
        chunks.append(m["chunks"])
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{directory}: {len(missing)} of {tasks} tasks have no bucket manifest "
            f"(tasks {shown}): they did not finish phase 1; rerun them"
        )
    return chunks


# --- phase 2 ----------------------------------------------------------------------


def edges_from_records(band: np.ndarray, key: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(m, 2) int64 edges ``(first, member)``: within every group of records with
    equal ``(band, key)``, each member is joined to the group's smallest docref.
    Duplicate edges (the same pair found by several bands) are removed."""
    if len(refs) == 0:
        return np.empty((0, 2), dtype=np.int64)
    order = np.lexsort((refs, key, band))
    b, k, d = band[order], key[order], refs[order]
    starts = np.ones(len(d), dtype=bool)
    starts[1:] = (b[1:] != b[:-1]) | (k[1:] != k[:-1])
    first = d[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    keep = d != first  # group heads, and a document repeated in its own group
    if not keep.any():
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.stack([first[keep], d[keep]], axis=1), axis=0)


def edges_in_partition(directory: str, partition: int, chunks: Sequence[int]) -> np.ndarray:
    """Phase 2 for one partition (independent of the others, so it can run in
    parallel): every task's records of ``partition`` -> candidate edges.
    ``chunks[t]`` is the chunk count from task ``t``'s manifest."""
    store = Store(directory)
    parts: list[np.ndarray] = []
    refs: list[np.ndarray] = []
    for name in sorted(store.list(_partition_dir(partition))):
        m = _CHUNK_NAME.fullmatch(name)
        if m is None:
            continue  # temporary files of a writer still running or killed
        task, chunk = int(m.group(1)), int(m.group(2))
        if task >= len(chunks) or chunk >= chunks[task]:
            continue  # left over from an older attempt of the task
        try:
            raw = store.read_bytes(f"{_partition_dir(partition)}/{name}")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{directory}: {name} vanished while phase 2 read it") from e
        rec = np.load(io.BytesIO(raw), allow_pickle=False)
        parts.append(rec)
        refs.append((np.int64(task) << np.int64(DOCREF_SHIFT)) | rec["index"].astype(np.int64))
    if not parts:
        return np.empty((0, 2), dtype=np.int64)
    rec = np.concatenate(parts)
    return edges_from_records(rec["band"], rec["key"], np.concatenate(refs))


def union_find(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of an edge list, vectorised.

    Returns ``(nodes, roots)``: the sorted distinct docrefs of ``edges`` and, for
    each, the smallest docref of its component. Roots are hooked to the smaller
    root of every edge that still joins two components, then paths are
    compressed by pointer jumping, until no edge does; every hook points to a
    smaller index, so there are no cycles, and the root is the minimum.
    """
    if len(edges) == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    nodes, inverse = np.unique(edges, return_inverse=True)
    inverse = inverse.reshape(-1, 2)
    u, v = inverse[:, 0], inverse[:, 1]
    parent = np.arange(len(nodes))
    while True:
        pu, pv = parent[u], parent[v]
        cross = pu != pv
        if not cross.any():
            break
        pu, pv = pu[cross], pv[cross]
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return nodes, nodes[parent]


@dataclass
class DedupResult:
    removed: dict[int, np.ndarray]  # task -> sorted local indices to drop (tasks with removals)
    clusters: int  # clusters of more than one document
    largest: int  # documents in the biggest cluster
    examples: list[list[int]]  # the largest clusters, sorted docrefs (first EXAMPLE_MEMBERS of each)
    duplicates: int  # documents removed
    example_sizes: list[int] = field(default_factory=list)  # full size of each example cluster
    example_ids: list[list[str]] | None = None  # examples as document ids, when find_duplicates had ``ids``

    def is_removed(self, task: int, local_index: int) -> bool:
        drop = self.removed.get(task)
        if drop is None:
            return False
        i = np.searchsorted(drop, local_index)
        return bool(i < len(drop) and drop[i] == local_index)

    def to_dict(self, ids: Callable[[int], str] | None = None) -> dict[str, Any]:
        """For the data card; documents are named by ``ids(docref)``, else by the
        ids given to ``find_duplicates``, else as ``"task:index"``."""
        if ids is not None:
            names = [[ids(d) for d in ex] for ex in self.examples]
        elif self.example_ids is not None:
            names = self.example_ids
        else:
            names = [[f"{d >> DOCREF_SHIFT}:{d & _LOCAL_MASK}" for d in ex] for ex in self.examples]
        return {
            "duplicates": self.duplicates,
            "clusters": self.clusters,
            "largest_cluster": self.largest,
            "example_clusters": [
                {"size": size, "kept": docs[0], "documents": docs}
                for size, docs in zip(self.example_sizes, names)
            ],
        }


def result_from_clusters(
    nodes: np.ndarray, roots: np.ndarray, ids: Callable[[int], str] | None = None
) -> DedupResult:
    """Survivor = root (smallest docref); every other member is removed."""
    gone = nodes[nodes != roots]  # sorted, as nodes are
    removed: dict[int, np.ndarray] = {}
    if len(gone):
        task_of = gone >> DOCREF_SHIFT
        for t in np.unique(task_of):
            removed[int(t)] = (gone[task_of == t] & _LOCAL_MASK).astype(np.int64)
    cluster_roots, sizes = np.unique(roots, return_counts=True)
    # Largest first; ties by first document, so the choice is deterministic.
    top = np.lexsort((cluster_roots, -sizes))[:EXAMPLES]
    examples = [nodes[roots == cluster_roots[i]][:EXAMPLE_MEMBERS].tolist() for i in top]
    return DedupResult(
        removed=removed,
        clusters=len(cluster_roots),
        largest=int(sizes.max()) if len(sizes) else 0,
        examples=examples,
        duplicates=len(gone),
        example_sizes=[int(sizes[i]) for i in top],
        example_ids=[[ids(d) for d in ex] for ex in examples] if ids is not None else None,
    )


def find_duplicates(
    directory: str, tasks: int, partitions: int, ids: Callable[[int], str] | None = None
) -> DedupResult:
    """Phase 2: read the buckets written by tasks ``0..tasks-1`` one partition at
    a time and decide which documents to drop. ``ids(docref)`` names the
    example clusters' documents for the data card."""
    chunks = read_manifests(directory, tasks, partitions)
    edges = [edges_in_partition(directory, p, chunks) for p in range(partitions)]
    nonempty = [e for e in edges if len(e)]
    all_edges = np.unique(np.concatenate(nonempty), axis=0) if nonempty else np.empty((0, 2), np.int64)
    nodes, roots = union_find(all_edges)
    return result_from_clusters(nodes, roots, ids)
