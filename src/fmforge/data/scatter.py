"""Phase 3 of the data stage, one task: put each surviving document on its side
of the split, repeat or subsample it by its source's mixture weight (a
group's own, for a grouped source: ``groups.py``), and
scatter the copies into output partitions by a seeded shuffle key.

Every decision is a hash of the document itself (split: its digest; copies:
its id and digest; shuffle key: id, digest and copy number), so the output does
not depend on how the input was cut into tasks or which machine ran them.
Partition ``k`` of a split holds the copies whose key is ``k`` modulo the
partition count; phase 4 sorts each partition by key, which makes the
concatenated shards one seeded shuffle of the whole split.

The mixture follows The Pile's "epochs" convention: a source with weight ``w``
contributes each of its training documents ``floor(w)`` times, plus once more
when a seeded hash draw of the document is below ``frac(w)``: weight 2.0
doubles a source, 0.5 keeps about half of it. The draw is per document, so the
expected share is exact and the result does not depend on the other documents.
Only the train split is mixed; val stays the natural held-out distribution.

Writes ``scatter/NNNNN/{train,val}-KKKKK.parquet`` (and ``-KKKKK-CCCC.parquet``
when a task holds more than ``data.task_bytes`` of copies: they are written out a
chunk at a time, so memory holds a bounded batch of the task, not the task), the
task's rejected duplicates and over-cap documents (with ``data.keep_rejected``),
and ``scatter/NNNNN/stats.json``, then the marker.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmforge.config import DataConfig
from fmforge.data import arrow
from fmforge.data.curate import REJECTED_SCHEMA, BatchedParquet, task_dir
from fmforge.data.decide import read_drops
from fmforge.data.groups import source_weight
from fmforge.data.split import hash_u64, hash_uniform, split_key, split_threshold
from fmforge.data.store import WorkDir
from fmforge.data.tasks import docref

PHASE = "scatter"
SCATTER_SCHEMA = pa.schema([
    ("key", pa.uint64()), ("id", pa.string()), ("text", pa.string()),
    ("source", pa.string()), ("copy", pa.int32()),
])


EMPTY_COUNTS = {"train_documents": 0, "train_bytes": 0, "val_documents": 0, "val_bytes": 0,
                "mixed_documents": 0, "mixed_bytes": 0}
SHUFFLE_PURPOSE = {"train": "fmforge.shuffle", "val": "fmforge.shuffle.val"}


def copies(weight: float, draw: float) -> int:
    """How many times a document with this uniform ``draw`` enters the mix."""
    whole = math.floor(weight)
    return whole + (1 if draw < weight - whole else 0)


def document_copies(weight: float, seed: int, doc_id: str, digest: bytes) -> int:
    """How many times this training document enters the mix at ``weight``."""
    return copies(weight, hash_uniform(seed, "fmforge.mix", doc_id, digest))


def shuffle_key(seed: int, split: str, doc_id: str, digest: bytes, copy: int) -> int:
    """The 64-bit key that orders copy ``copy`` of a document within ``split``."""
    return hash_u64(seed, SHUFFLE_PURPOSE[split], doc_id, digest, str(copy))


def scatter_dir(task: int) -> str:
    return f"scatter/{task:05d}"


def partition_path(task: int, split: str, k: int, chunk: int = 0) -> str:
    """Chunk ``chunk`` of the task's rows in partition ``k`` of ``split``."""
    base = f"{scatter_dir(task)}/{split}-{k:05d}"
    return f"{base}.parquet" if chunk == 0 else f"{base}-{chunk:04d}.parquet"


def partition_files(stats: dict[str, Any], split: str, k: int) -> list[str]:
    """The files a task's scatter wrote for partition ``k`` of ``split`` (none if it
    has no rows there), from its ``stats.json``."""
    if k not in stats["partitions"][split]:
        return []
    chunks = stats.get("chunks", {}).get(split, {}).get(str(k), 1)
    return [partition_path(stats["task"], split, k, c) for c in range(chunks)]


class _Partitions:
    """A task's copies by output partition, held until they come to ``limit`` bytes
    of text, then written as one more chunk file of each partition they touch: memory
    holds about ``limit`` of text whatever the size of the task (a task never splits a
    file, so one large file is one large task). A task smaller than ``limit`` writes
    one file per partition."""

    def __init__(self, work: WorkDir, task: int, limit: int):
        self.work, self.task, self.limit = work, task, limit
        self.rows: dict[tuple[str, int], list[tuple]] = {}
        self.size = 0
        self.chunks: dict[str, dict[int, int]] = {"train": {}, "val": {}}

    def add(self, split: str, k: int, row: tuple, nbytes: int) -> None:
        self.rows.setdefault((split, k), []).append(row)
        self.size += nbytes
        if self.size >= self.limit:
            self.flush()

    def flush(self) -> None:
        for (split, k), part in sorted(self.rows.items()):
            chunk = self.chunks[split].get(k, 0)
            table = arrow.table(list(zip(*part)), SCATTER_SCHEMA)
            self.work.write_table(partition_path(self.task, split, k, chunk), table)
            self.chunks[split][k] = chunk + 1
        self.rows.clear()
        self.size = 0

    def stats(self) -> tuple[dict[str, list[int]], dict[str, dict[str, int]]]:
        """The partitions written to, and the chunk count of those with more than one."""
        return ({s: sorted(c) for s, c in self.chunks.items()},
                {s: {str(k): n for k, n in sorted(c.items()) if n > 1} for s, c in self.chunks.items()})


def scatter_task(payload: dict[str, Any]) -> dict[str, Any]:
    data = DataConfig.model_validate(payload["data"])
    t: int = payload["task"]
    work = WorkDir(payload["work"])
    stats: dict[str, Any] = {"task": t, "by_source": {}}
    out = _Partitions(work, t, data.task_bytes)
    rejected = BatchedParquet(work, f"{scatter_dir(t)}/rejected.parquet", REJECTED_SCHEMA)
    try:
        if payload["has_docs"]:
            _Scatter(data, payload, stats, out, rejected).run(work)
        out.flush()
        rejected.close()
    except BaseException:
        rejected.abort()
        raise
    stats["partitions"], stats["chunks"] = out.stats()
    stats["has_rejected"] = rejected.rows > 0
    work.write_json(f"{scatter_dir(t)}/stats.json", stats)
    work.mark_done(PHASE, t)
    return stats


class _Scatter:
    """One task's kept documents onto their side of the split, repeated by their
    mixture weight, into their partitions; read a row group at a time."""

    def __init__(self, data: DataConfig, payload: dict[str, Any], stats: dict[str, Any], out: _Partitions,
                 rejected: BatchedParquet):
        self.data, self.stats, self.out, self.rejected = data, stats, out, rejected
        self.seed: int = payload["seed"]
        self.task: int = payload["task"]
        self.spec = data.sources[payload["source_index"]]
        self.parts = {"train": payload["partitions_train"], "val": payload["partitions_val"]}
        self.to_val, self.to_train = set(payload["to_val"]), set(payload["to_train"])
        self.threshold = split_threshold(data.val_fraction)

    def run(self, work: WorkDir) -> None:
        dup, cap = read_drops(work, self.task)
        with work.open_read(f"{task_dir(self.task)}/docs.parquet") as f:
            pf = pq.ParquetFile(f)
            reason = np.full(pf.metadata.num_rows, None, dtype=object)
            reason[dup] = "duplicate"
            reason[cap] = "max_bytes"
            start = 0
            for g in range(pf.num_row_groups):
                group = pf.read_row_group(g)
                columns = [group.column(c).to_pylist() for c in ("id", "text", "digest", "nbytes", "source")]
                del group
                for j, row in enumerate(zip(*columns)):
                    self.one(start + j, *row, reason[start + j])
                start += len(columns[0])

    def one(self, i: int, doc_id: str, text: str, digest: bytes, nbytes: int, source: str,
            reason: str | None) -> None:
        # source: the source, or the document's group of a grouped source
        if reason is not None:
            if self.data.keep_rejected:
                self.rejected.add(doc_id, text, source, reason)
            return
        seed, parts = self.seed, self.parts
        st = self.stats["by_source"].get(source) or self.stats["by_source"].setdefault(source, dict(EMPTY_COUNTS))
        ref = docref(self.task, i)
        is_val = split_key(digest, seed) < self.threshold
        if ref in self.to_val:
            is_val = True
        elif ref in self.to_train:
            is_val = False
        if is_val:
            st["val_documents"] += 1
            st["val_bytes"] += nbytes
            key = shuffle_key(seed, "val", doc_id, digest, 0)
            self.out.add("val", key % parts["val"], (key, doc_id, text, source, 0), nbytes)
            return
        st["train_documents"] += 1
        st["train_bytes"] += nbytes
        n_copies = document_copies(source_weight(self.spec, source), seed, doc_id, digest)
        st["mixed_documents"] += n_copies
        st["mixed_bytes"] += n_copies * nbytes
        for c in range(n_copies):
            key = shuffle_key(seed, "train", doc_id, digest, c)
            self.out.add("train", key % parts["train"], (key, doc_id, text, source, c), nbytes)
