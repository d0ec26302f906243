"""Phase 2 of the data stage, once over all tasks: decide which kept documents
are dropped after all, and which split the edge cases go to.

Three corpus-wide decisions need every task's output:

1. duplicates (exact, or MinHash near-duplicates): clusters across all sources,
   the first document in reading order survives (``dedup.find_duplicates``);
2. a source's ``max_bytes``: documents are accepted in reading order until the
   cap; the one that would pass it and every later one are dropped;
3. the split guarantee (both splits non-empty, see ``split.py``).

It reads only the small columns of each task's ``docs.parquet`` (digest,
nbytes, id), one task at a time, and writes ``decisions/drops-NNNNN.npz`` per
task (local indices dropped as duplicates and by the cap) and
``decisions/decisions.json``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from fmforge.config import DataConfig
from fmforge.data import arrow
from fmforge.data.split import SplitGuard, split_key
from fmforge.data.store import WorkDir
from fmforge.data.tasks import docref, split_docref

PHASE = "decide"


def drops_path(task: int) -> str:
    return f"decisions/drops-{task:05d}.npz"


def decide(data: DataConfig, seed: int, work: WorkDir, task_stats: list[dict[str, Any]],
           partitions: int) -> dict[str, Any]:
    """Run phase 2; returns (and stores) the decisions summary."""
    from fmforge.data.curate import task_dir

    n_tasks = len(task_stats)
    dedup_summary: dict[str, Any] = {"duplicates": 0, "clusters": 0, "largest_cluster": 0, "example_clusters": []}
    removed: dict[int, np.ndarray] = {}
    if data.dedup != "none":
        from fmforge.data.dedup import find_duplicates

        result = find_duplicates(f"{work.url}/dedup", n_tasks, partitions)
        removed = result.removed
        dedup_summary = result.to_dict(ids=_IdLookup(work))

    guard = SplitGuard(data.val_fraction)
    caps = {i: s.max_bytes for i, s in enumerate(data.sources)}
    accepted_bytes: dict[int, int] = {}
    capped_sources: set[int] = set()
    # by output source: a source, or a group of a grouped source (the docs' own
    # `source` column); max_bytes caps a configured source as a whole
    per_source: dict[str, dict[str, int]] = {}
    for st in task_stats:
        t, si = st["task"], st["source_index"]
        dup = removed.get(t, np.zeros(0, dtype=np.int64))
        cap = np.zeros(0, dtype=np.int64)
        for name in st["by_source"]:
            per_source.setdefault(name, {"duplicates": 0, "max_bytes": 0, "documents": 0, "bytes": 0})
        if st["has_docs"]:
            table = work.read_table(f"{task_dir(t)}/docs.parquet", columns=["id", "digest", "nbytes", "source"])
            nbytes = arrow.to_numpy(table.column("nbytes"))
            alive = np.ones(len(nbytes), dtype=bool)
            alive[dup] = False
            if caps[si] is not None:
                cap = _apply_cap(nbytes, alive, caps[si], accepted_bytes, si, capped_sources)
                alive[cap] = False
            ids = table.column("id").to_pylist()
            digests = table.column("digest").to_pylist()
            sources = table.column("source").to_pylist()
            for i in np.flatnonzero(alive):
                guard.add(split_key(digests[i], seed), ids[i], docref(t, int(i)))
                per_source[sources[i]]["documents"] += 1
                per_source[sources[i]]["bytes"] += int(nbytes[i])
            for key, drops in (("duplicates", dup), ("max_bytes", cap)):
                for i in drops.tolist():
                    per_source[sources[i]][key] += 1
        buf = io.BytesIO()
        np.savez(buf, duplicates=np.asarray(dup, dtype=np.int64), max_bytes=cap)
        work.write_bytes(drops_path(t), buf.getvalue())

    to_val, to_train = guard.moves()
    decisions = {
        "dedup": dedup_summary,
        "per_source": per_source,
        "split_moves": {"to_val": sorted(to_val), "to_train": sorted(to_train)},
        "documents": guard.n,
        "natural_val_documents": guard.n_val,
    }
    work.write_json("decisions/decisions.json", decisions)
    work.mark_done(PHASE, 0)
    return decisions


def _apply_cap(nbytes: np.ndarray, alive: np.ndarray, cap: int, accepted: dict[int, int],
               source: int, capped: set[int]) -> np.ndarray:
    """Local indices this task drops by its source's ``max_bytes``, in reading
    order: once a document would pass the cap, it and every later one go."""
    idx = np.flatnonzero(alive)
    if source in capped:
        return idx
    before = accepted.get(source, 0)
    total = before + np.cumsum(nbytes[idx])
    over = np.flatnonzero(total > cap)
    if len(over) == 0:
        accepted[source] = int(total[-1]) if len(total) else before
        return np.zeros(0, dtype=np.int64)
    capped.add(source)
    first = over[0]
    accepted[source] = int(total[first - 1]) if first > 0 else before
    return idx[first:]


def read_drops(work: WorkDir, task: int) -> tuple[np.ndarray, np.ndarray]:
    with work.open_read(drops_path(task)) as f:
        z = np.load(io.BytesIO(f.read()))
        return z["duplicates"], z["max_bytes"]


class _IdLookup:
    """docref -> document id, for the few example clusters the card names."""

    def __init__(self, work: WorkDir):
        self.work = work
        self.cache: dict[int, Any] = {}

    def __call__(self, ref: int) -> str:
        from fmforge.data.curate import task_dir

        t, i = split_docref(ref)
        if t not in self.cache:
            self.cache[t] = self.work.read_table(f"{task_dir(t)}/docs.parquet", columns=["id"]).column("id")
        return self.cache[t][i].as_py()
