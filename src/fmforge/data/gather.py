"""Phase 4 of the data stage: gather partition ``k`` of a split from every task
and sort it by shuffle key (one task per output partition); then place the
gathered shards, and the rejected documents, into the run's data directory.

Sorting by (key, id, copy) makes the order independent of the tasks and of the
executor, so a shard is byte-identical however it was computed. Memory holds
one partition, which phase 3 sized to about ``data.shard_max_docs`` documents;
it is written as shards of at most that many.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmforge.data.curate import task_dir
from fmforge.data.scatter import scatter_dir
from fmforge.data.shards import ROW_GROUP_ROWS, SCHEMA, shard_name
from fmforge.data.store import WorkDir
from fmforge.data.tasks import TaskSpec

PHASE = "gather"
REJECTED_DIR = "rejected"


def gathered_path(split: str, k: int, chunk: int) -> str:
    return f"gathered/{split}-{k:05d}-{chunk:05d}.parquet"


def gather_task(payload: dict[str, Any]) -> dict[str, Any]:
    work = WorkDir(payload["work"])
    split, k = payload["split"], payload["k"]
    pool = pa.default_memory_pool()
    tables = []
    for rel in payload["files"]:
        tables.append(work.read_table(rel))
        pool.release_unused()  # a file's decompression buffers, before the next file's
    # one contiguous copy: taking rows from many chunks costs a copy of the chunks per take
    table = pa.concat_tables(tables).combine_chunks()
    del tables
    pool.release_unused()
    order = pc.sort_indices(table, sort_keys=[("key", "ascending"), ("id", "ascending"), ("copy", "ascending")])
    table = table.select(["id", "text", "source"])
    # a partition is only about shard_max_docs; cut it so no shard is larger
    step = payload["shard_max_docs"]
    chunks = 0
    for start in range(0, table.num_rows, step):
        _write_sorted(work, gathered_path(split, k, chunks), table, order[start:start + step])
        chunks += 1
    info = {"split": split, "k": k, "documents": table.num_rows, "chunks": chunks}
    work.mark_done(f"{PHASE}-{split}", k, info)
    return info


def _write_sorted(work: WorkDir, rel: str, table: pa.Table, order: pa.Array) -> None:
    """The rows ``order`` of ``table`` as one shard, taken and written a row group at a
    time: the same bytes as writing ``table.take(order)`` whole (``WorkDir.write_table``),
    without a second copy of the partition's text in memory."""
    with work.open_write(rel) as f, pq.ParquetWriter(f, SCHEMA, compression="zstd") as writer:
        for start in range(0, len(order), ROW_GROUP_ROWS):
            rows = table.take(order[start:start + ROW_GROUP_ROWS]).cast(SCHEMA)
            writer.write_table(rows, row_group_size=ROW_GROUP_ROWS)


def place_shards(work: WorkDir, dest: Path, split: str, partitions: int, scattered: list[dict]) -> list[str]:
    """Copy the gathered partitions of ``split`` into ``dest`` under consecutive names."""
    names: list[str] = []
    for k in range(partitions):
        if not any(k in s["partitions"][split] for s in scattered):
            continue
        chunks = work.read_json(work.marker(f"{PHASE}-{split}", k))["chunks"]
        for c in range(chunks):
            name = shard_name(split, len(names))
            _copy_out(work, gathered_path(split, k, c), dest / name)
            names.append(name)
    return names


def place_rejected(work: WorkDir, dest: Path, tasks: list[TaskSpec], curated: list[dict],
                   scattered: list[dict]) -> list[str]:
    """Copy the documents curate and scatter rejected (``data.keep_rejected``)
    into ``dest/rejected/``."""
    (dest / REJECTED_DIR).mkdir()
    names: list[str] = []
    for t, c, s in zip(tasks, curated, scattered):
        for rel, present in ((f"{task_dir(t.index)}/rejected.parquet", c["has_rejected"]),
                             (f"{scatter_dir(t.index)}/rejected.parquet", s["has_rejected"])):
            if present:
                name = f"{REJECTED_DIR}/rejected-{len(names):05d}.parquet"
                _copy_out(work, rel, dest / name)
                names.append(name)
    return names


def _copy_out(work: WorkDir, rel: str, dest: Path) -> None:
    with work.open_read(rel) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, length=4 * 2**20)
