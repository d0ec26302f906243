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

Writes ``scatter/NNNNN/{train,val}-KKKKK.parquet``, the task's rejected
duplicates and over-cap documents (with ``data.keep_rejected``), and
``scatter/NNNNN/stats.json``, then the marker.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from fmforge.config import DataConfig
from fmforge.data import arrow
from fmforge.data.curate import REJECTED_SCHEMA, task_dir
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


def partition_path(task: int, split: str, k: int) -> str:
    return f"{scatter_dir(task)}/{split}-{k:05d}.parquet"


def scatter_task(payload: dict[str, Any]) -> dict[str, Any]:
    data = DataConfig.model_validate(payload["data"])
    seed: int = payload["seed"]
    t: int = payload["task"]
    spec = data.sources[payload["source_index"]]
    work = WorkDir(payload["work"])
    parts = {"train": payload["partitions_train"], "val": payload["partitions_val"]}
    to_val, to_train = set(payload["to_val"]), set(payload["to_train"])
    threshold = split_threshold(data.val_fraction)

    stats: dict[str, Any] = {"task": t, "by_source": {}, "partitions": {"train": [], "val": []}}
    rows: dict[tuple[str, int], list[tuple]] = {}
    rejected: list[tuple] = []
    if payload["has_docs"]:
        dup, cap = read_drops(work, t)
        table = work.read_table(f"{task_dir(t)}/docs.parquet")
        n = table.num_rows
        reason = np.full(n, None, dtype=object)
        reason[dup] = "duplicate"
        reason[cap] = "max_bytes"
        ids = table.column("id").to_pylist()
        texts = table.column("text").to_pylist()
        digests = table.column("digest").to_pylist()
        nbytes = table.column("nbytes").to_pylist()
        sources = table.column("source").to_pylist()
        for i in range(n):
            source = sources[i]  # the source, or the document's group of a grouped source
            if reason[i] is not None:
                if data.keep_rejected:
                    rejected.append((ids[i], texts[i], source, reason[i]))
                continue
            st = stats["by_source"].get(source) or stats["by_source"].setdefault(source, dict(EMPTY_COUNTS))
            ref = docref(t, i)
            is_val = split_key(digests[i], seed) < threshold
            if ref in to_val:
                is_val = True
            elif ref in to_train:
                is_val = False
            if is_val:
                st["val_documents"] += 1
                st["val_bytes"] += nbytes[i]
                key = shuffle_key(seed, "val", ids[i], digests[i], 0)
                rows.setdefault(("val", key % parts["val"]), []).append((key, ids[i], texts[i], source, 0))
                continue
            st["train_documents"] += 1
            st["train_bytes"] += nbytes[i]
            n_copies = document_copies(source_weight(spec, source), seed, ids[i], digests[i])
            st["mixed_documents"] += n_copies
            st["mixed_bytes"] += n_copies * nbytes[i]
            for c in range(n_copies):
                key = shuffle_key(seed, "train", ids[i], digests[i], c)
                rows.setdefault(("train", key % parts["train"]), []).append((key, ids[i], texts[i], source, c))

    for (split, k), part in sorted(rows.items()):
        cols = list(zip(*part))
        table = arrow.table(cols, SCATTER_SCHEMA)
        work.write_table(partition_path(t, split, k), table)
        stats["partitions"][split].append(k)
    if rejected:
        cols = list(zip(*rejected))
        work.write_table(f"{scatter_dir(t)}/rejected.parquet",
                         arrow.table(cols, REJECTED_SCHEMA))
    stats["has_rejected"] = bool(rejected)
    work.write_json(f"{scatter_dir(t)}/stats.json", stats)
    work.mark_done(PHASE, t)
    return stats
