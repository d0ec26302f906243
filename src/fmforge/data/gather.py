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

from fmforge.data.curate import task_dir
from fmforge.data.scatter import scatter_dir
from fmforge.data.shards import SCHEMA, shard_name
from fmforge.data.store import WorkDir
from fmforge.data.tasks import TaskSpec

PHASE = "gather"
REJECTED_DIR = "rejected"


def gathered_path(split: str, k: int, chunk: int) -> str:
    return f"gathered/{split}-{k:05d}-{chunk:05d}.parquet"


def gather_task(payload: dict[str, Any]) -> dict[str, Any]:
    work = WorkDir(payload["work"])
    split, k = payload["split"], payload["k"]
    tables = [work.read_table(rel) for rel in payload["files"]]
    table = pa.concat_tables(tables)
    order = pc.sort_indices(table, sort_keys=[("key", "ascending"), ("id", "ascending"), ("copy", "ascending")])
    table = table.take(order).select(["id", "text", "source"]).cast(SCHEMA)
    # a partition is only about shard_max_docs; cut it so no shard is larger
    step = payload["shard_max_docs"]
    chunks = 0
    for start in range(0, table.num_rows, step):
        work.write_table(gathered_path(split, k, chunks), table.slice(start, step))
        chunks += 1
    info = {"split": split, "k": k, "documents": table.num_rows, "chunks": chunks}
    work.mark_done(f"{PHASE}-{split}", k, info)
    return info


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
