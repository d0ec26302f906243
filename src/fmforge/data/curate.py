"""Phase 1 of the data stage, one task: read a task's files, clean and filter
every document, and write what survives with its hashes.

Per task, into the work directory:

- ``tasks/NNNNN/docs.parquet``: the kept documents in reading order (``id``,
  ``text``, ``source``, ``digest`` = BLAKE2b-128 of the cleaned text, ``nbytes``);
  a document's local index is its row number;
- ``tasks/NNNNN/rejected.parquet`` (with ``data.keep_rejected``): dropped
  documents with their reason;
- ``dedup/``: the document's dedup keys (MinHash bands and the exact-content key)
  in bucket files partitioned by key, for phase 2;
- ``tasks/NNNNN/stats.json``: counts per step and reason (``by_source``: per
  output source, i.e. per group of a grouped source), reader counters and input
  problems;
- the completion marker, last.

Memory is bounded by a batch of documents, not by the task or the corpus.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fmforge.config import DataConfig, SourceConfig
from fmforge.data import arrow
from fmforge.data.dedup import BucketWriter, content_digest, dedup_keys
from fmforge.data.normalize import replace_lone_surrogates
from fmforge.data.problems import DataError, InputProblems
from fmforge.data.readers import open_reader
from fmforge.data.steps import build_steps, run_steps, step_reasons
from fmforge.data.store import WorkDir, is_url
from fmforge.data.tasks import MAX_DOCS_PER_TASK, TaskSpec

PHASE = "curate"
BATCH_ROWS = 1024
# ... or this much text, whichever comes first: a batch of 1,024 source files or
# books would otherwise be hundreds of MB, and writing it as parquet costs several
# times its size again.
BATCH_CHARS = 4_000_000
DOCS_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
    ("digest", pa.binary(16)), ("nbytes", pa.int64()),
])
REJECTED_SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("reason", pa.string()),
])


def task_dir(index: int) -> str:
    return f"tasks/{index:05d}"


class _KeyBatcher:
    """Dedup keys of kept documents, computed a batch at a time (MinHash is
    about half again as fast over a batch) and handed to the bucket writer."""

    BATCH = 256

    def __init__(self, buckets: BucketWriter, hasher):
        self.buckets, self.hasher = buckets, hasher
        self.pending: list[tuple[int, str, bytes]] = []

    def add(self, index: int, text: str, digest: bytes) -> None:
        self.pending.append((index, text, digest))
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        keys = dedup_keys([t for _, t, _ in self.pending], [d for _, _, d in self.pending], self.hasher)
        for (index, _, _), row in zip(self.pending, keys):
            self.buckets.add(index, row)
        self.pending.clear()


class BatchedParquet:
    """Rows into a parquet file in the work directory, a batch at a time."""

    def __init__(self, work: WorkDir, rel: str, schema: pa.Schema):
        self.work, self.rel, self.schema = work, rel, schema
        self.columns: list[list[Any]] = [[] for _ in schema]
        self.rows = 0
        self._text = schema.get_field_index("text")
        self._chars = 0
        self._ctx = None
        self._writer: pq.ParquetWriter | None = None

    def add(self, *row: Any) -> None:
        for col, v in zip(self.columns, row):
            col.append(v)
        self.rows += 1
        self._chars += len(row[self._text])
        if len(self.columns[0]) >= BATCH_ROWS or self._chars >= BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        if not self.columns[0]:
            return
        if self._writer is None:
            self._ctx = self.work.open_write(self.rel)
            self._writer = pq.ParquetWriter(self._ctx.__enter__(), self.schema, compression="zstd")
        batch = arrow.record_batch(self.columns, self.schema)
        self._writer.write_batch(batch, row_group_size=BATCH_ROWS)
        self.columns = [[] for _ in self.schema]
        self._chars = 0

    def close(self) -> None:
        """Write what is left; a file exists only if there was at least one row."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            err = RuntimeError("task failed")
            self._ctx.__exit__(RuntimeError, err, None)


def _documents_of(reader, file, problems: InputProblems):
    """The reader's documents of ``file``; a file listed at the start of the stage
    and gone when its turn comes (deleted or moved meanwhile) is a counted input
    problem, like a missing path: the stage goes on (``data.strict`` stops), and
    the data card names the file."""
    docs = reader.read_file(file)
    try:
        first = next(docs)  # readers open their file before the first document
    except StopIteration:
        return
    except FileNotFoundError as e:
        if not is_url(file.path) and os.path.exists(file.path):
            raise  # something else is missing: not this file's problem
        problems.report("vanished_file", file.path,
                        f"listed when the stage started but gone when it was read (deleted or moved "
                        f"meanwhile: {e.strerror}); its documents are not in this run: restore it "
                        "and rerun with --force, or leave it out on purpose")
        return
    yield first
    yield from docs


class _Chains:
    """The step chain and counts of each output source a task meets: the source
    itself, or each group of a grouped source (made when its first document comes)."""

    def __init__(self, data: DataConfig, spec: SourceConfig):
        self.data, self.spec = data, spec
        self.by_source: dict[str, tuple[list, dict[str, int], dict[str, int]]] = {}

    def of(self, source: str) -> tuple[list, dict[str, int], dict[str, int]]:
        if source not in self.by_source:
            steps = build_steps(self.data, self.spec)
            counts = {"documents_read": 0, "bytes_read": 0, "kept_documents": 0, "kept_bytes": 0}
            # Every rule of the chain, from zero: the card shows which rules ran, not
            # only those that dropped something.
            self.by_source[source] = (steps, counts, dict.fromkeys(step_reasons(steps), 0))
        return self.by_source[source]

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: {**counts, "dropped": dropped, "steps": {s.name: s.counters() for s in steps}}
                for name, (steps, counts, dropped) in sorted(self.by_source.items())}


def curate_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run phase 1 for one task (a top-level function: it travels to workers)."""
    data = DataConfig.model_validate(payload["data"])
    task = TaskSpec.from_dict(payload["task"])
    work = WorkDir(payload["work"])
    spec = data.sources[task.source_index]
    t0 = time.perf_counter()

    problems = InputProblems(spec.name, strict=data.strict, quiet=payload.get("quiet", False))
    reader = open_reader(spec, problems)
    hasher = None
    if data.dedup == "minhash":
        from fmforge.data.minhash import MinHasher

        hasher = MinHasher(data.minhash)
    buckets = (
        BucketWriter(f"{work.url}/dedup", task.index, payload["partitions"]) if data.dedup != "none" else None
    )
    keys = _KeyBatcher(buckets, hasher) if buckets is not None else None

    docs = BatchedParquet(work, f"{task_dir(task.index)}/docs.parquet", DOCS_SCHEMA)
    rejected = (
        BatchedParquet(work, f"{task_dir(task.index)}/rejected.parquet", REJECTED_SCHEMA)
        if data.keep_rejected else None
    )
    # Per output source (the source, or each group of a grouped one): its own
    # chain of steps, so the card counts each group's drops and rewrites.
    chains = _Chains(data, spec)
    if spec.group_by is None:
        chains.of(spec.name)
    files_read = 0
    try:
        for file in task.files:
            files_read += 1
            for doc in _documents_of(reader, file, problems):
                steps, counts, dropped = chains.of(doc.source)
                counts["documents_read"] += 1
                doc.text, surrogates = replace_lone_surrogates(doc.text)
                if surrogates:
                    problems.report("lone_surrogates", doc.id,
                                    f"{surrogates} lone UTF-16 surrogate(s) (e.g. a JSON \\ud800 escape) "
                                    "replaced by U+FFFD; the document is kept")
                counts["bytes_read"] += len(doc.text.encode("utf-8"))
                reason = run_steps(steps, doc)
                if reason is not None:
                    dropped[reason] = dropped.get(reason, 0) + 1
                    if rejected is not None:
                        rejected.add(doc.id, doc.text, doc.source, reason)
                    continue
                encoded = doc.text.encode("utf-8")
                digest = content_digest(encoded)
                if docs.rows >= MAX_DOCS_PER_TASK:
                    raise DataError(f"task {task.index} has over 2**32 documents; lower data.task_bytes")
                if keys is not None:
                    keys.add(docs.rows, doc.text, digest)
                docs.add(doc.id, doc.text, doc.source, digest, len(encoded))
                counts["kept_documents"] += 1
                counts["kept_bytes"] += len(encoded)
        docs.close()
        if rejected is not None:
            rejected.close()
        if keys is not None:
            keys.flush()
            buckets.close()
    except BaseException:
        docs.abort()
        if rejected is not None:
            rejected.abort()
        raise

    stats = {
        "task": task.index,
        "source": spec.name,
        "source_index": task.source_index,
        "files_read": files_read,
        # documents by output source: counts, drops per reason, what each step changed
        "by_source": chains.stats(),
        "reader": reader.counters(),
        "problems": problems.to_dict(),
        "has_docs": docs.rows > 0,
        "has_rejected": rejected is not None and rejected.rows > 0,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    work.write_json(f"{task_dir(task.index)}/stats.json", stats)
    work.mark_done(PHASE, task.index)
    return stats
