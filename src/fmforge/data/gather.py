"""Phase 4 of the data stage, one output shard: gather partition ``k`` of a
split from every task and sort it by shuffle key.

Sorting by (key, id, copy) makes the order independent of the tasks and of the
executor, so a shard is byte-identical however it was computed. Memory holds
one partition, which phase 3 sized to about ``data.shard_max_docs`` documents;
it is written as shards of at most that many.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fmforge.data.scatter import partition_path
from fmforge.data.shards import SCHEMA
from fmforge.data.store import WorkDir

PHASE = "gather"


def gathered_path(split: str, k: int, chunk: int) -> str:
    return f"gathered/{split}-{k:05d}-{chunk:05d}.parquet"


def gather_task(payload: dict[str, Any]) -> dict[str, Any]:
    work = WorkDir(payload["work"])
    split, k = payload["split"], payload["k"]
    tables = [work.read_table(partition_path(t, split, k)) for t in payload["tasks"]]
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
