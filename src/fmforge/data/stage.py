"""The data stage: sources -> cleaned, filtered, deduplicated, split, mixed
parquet shards plus a data card, written atomically to ``runs/NAME/data/``.

The input is cut into tasks (``tasks.py``: runs of files of one source, about
``data.task_bytes`` each, numbered in reading order) and processed in four
phases, each a set of tasks that write to the work directory and leave a
completion marker (``store.WorkDir``), so any executor (``executor.py``: in
process, a process pool, Ray) gives byte-identical shards and a rerun after a
kill resumes where it stopped:

1. curate (per task): read, clean, filter, hash (``curate.py``);
2. decide (once): duplicate clusters across all sources, ``max_bytes`` caps,
   the split guarantee (``decide.py``);
3. scatter (per task): split, mixture copies, shuffle keys into partitions
   (``scatter.py``);
4. gather (per output shard): sort a partition by key, then place the shards
   in the data directory (``gather.py``).

Memory is bounded by a task and a partition, not by the corpus. The work
directory is removed when the data directory is in place.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from fmforge.config import DataConfig, RunConfig
from fmforge.data.card import CARD_VERSION, source_stats, totals
from fmforge.data.curate import PHASE as CURATE, curate_task, task_dir
from fmforge.data.decide import PHASE as DECIDE, decide
from fmforge.data.executor import ExecutorSpec, TaskRunner
from fmforge.data.gather import PHASE as GATHER, gather_task, place_rejected, place_shards
from fmforge.data.groups import output_weights
from fmforge.data.listing import FileListing, list_source_files
from fmforge.data.problems import EmptyCorpusError, NoFilesMatchedError
from fmforge.data.scatter import PHASE as SCATTER, partition_files, scatter_dir, scatter_task
from fmforge.data.shards import DATA_CARD, SPLITS
from fmforge.data.steps import STEP_NAMES, describe_reason
from fmforge.data.store import WorkDir
from fmforge.data.tasks import TaskSpec, plan_tasks, split_docref
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_directory, fingerprint

DEDUP_PARTITION_BYTES = 256 * 2**20  # input bytes per dedup bucket partition
INLINE_BELOW_BYTES = 32 * 2**20  # with data.workers unset, smaller inputs run in this process
PARTITION_BYTES = 32 * 2**20  # text per output partition, gathered in memory


def list_all_sources(cfg: RunConfig) -> list[FileListing]:
    """The file listing of every source.

    A pattern that matches nothing is recorded in its listing (and reported by
    the stage) unless ``data.strict``; nothing listed at all is always an error.
    Unknown placeholders are always errors.
    """
    listings = [list_source_files(spec, cfg.config_dir, strict=cfg.data.strict) for spec in cfg.data.sources]
    if not any(l.files for l in listings):
        raise NoFilesMatchedError(
            "no source matched any file:\n" + "\n".join(f"  {m['message']}" for l in listings for m in l.missing)
        )
    return listings


def _report_missing(listings: list[FileListing]) -> None:
    for l in listings:
        for m in l.missing:
            log(f"[yellow]warning:[/] {m['message']}; the stage goes on without it (data.strict stops here)")


def data_inputs_fingerprint(cfg: RunConfig) -> str:
    """A cheap fingerprint of what the data stage reads: every listed file's
    relative path, size and mtime per source, plus the data config and seed.

    It stats files but reads none, so the pipeline can call it to decide whether
    the stage must rerun when source files change. Raises the same errors as
    listing (unknown placeholder, pattern matching nothing).
    """
    return _inputs_fingerprint(cfg, list_all_sources(cfg))


# Settings that change how the work is scheduled, not what it produces.
_SCHEDULING_KEYS = ("executor", "workers", "ray_address", "work_dir")
# Settings that decide only how the kept documents are mixed (the scatter and
# gather phases, and the token budget applied when encoding), not which documents
# are kept, their text or their split: the work directory is keyed without them,
# so a change of weights alone (`fmforge datamix`'s variants) reuses the curated
# work. The stage's own fingerprint keeps them.
_MIXTURE_KEYS = ("weight", "share", "group_weights", "group_shares")
MIXTURE_RECORD = "mixture.json"  # in the work directory: whose weights its scatter/gather files are


def _inputs_fingerprint(cfg: RunConfig, listings: list[FileListing], mixture: bool = True) -> str:
    """The stage's inputs; with ``mixture=False`` less the mixture settings (the
    key of the work directory, see ``_MIXTURE_KEYS``)."""
    data = cfg.data.model_dump(mode="json")
    for k in _SCHEDULING_KEYS:
        data.pop(k, None)
    if not mixture:
        data.pop("total_tokens", None)
        for source in data["sources"]:
            for k in _MIXTURE_KEYS:
                source.pop(k, None)
    return fingerprint(
        "data-inputs-v3" if mixture else "data-curation-v1",
        cfg.seed,
        data,
        [
            {"source": l.source, "root": l.root, "files": [[f.rel, f.size, f.mtime_ns] for f in l.files]}
            for l in listings
        ],
    )


def _own_mixture(work: WorkDir, inputs_fp: str) -> None:
    """The scatter and gather files in ``work`` are this mixture's: those of other
    weights (a kept work directory, or a run of other weights killed before it
    ended) are removed before this one's are written."""
    if work.isfile(MIXTURE_RECORD) and work.read_json(MIXTURE_RECORD).get("inputs") == inputs_fp:
        return
    _remove_mixture(work)
    work.write_json(MIXTURE_RECORD, {"inputs": inputs_fp})


def _remove_mixture(work: WorkDir) -> None:
    work.remove(MIXTURE_RECORD)
    for rel in work.glob(f"markers/{SCATTER}-*") + work.glob(f"markers/{GATHER}-*"):
        work.remove(rel)
    work.remove("scatter")
    work.remove("gathered")


def work_dir_url(cfg: RunConfig, run: RunDir, inputs_fp: str) -> str:
    base = cfg.data.work_dir or str(Path(run.root) / "data.work")
    return f"{base.rstrip('/')}/{inputs_fp}"


def _explain_empty(sources: dict[str, dict[str, Any]], data: DataConfig) -> str:
    lines = []
    for s in sources.values():
        reasons = ", ".join(
            f"{n} {r.split(':', 1)[0]}:{describe_reason(r.split(':', 1)[-1], data, s['max_bytes'])}"
            if r.startswith("length:") else f"{n} {describe_reason(r, data, s['max_bytes'])}"
            for r, n in s["dropped_reasons"].items() if n
        )
        problems = ", ".join(f"{n} {kind}" for kind, n in s.get("problems", {}).get("counts", {}).items())
        lines.append(
            f"  source {s['name']!r}: {s['documents_read']} read, {s['kept_documents']} kept"
            + (f"; dropped: {reasons}" if reasons else "")
            + (f"; {s['duplicates']} duplicates" if s["duplicates"] else "")
            + (f"; input problems: {problems} (listed in the data card)" if problems else "")
        )
    return "\n".join(lines)


def _partitions(n: int, max_per_partition: int) -> int:
    return max(1, math.ceil(n / max_per_partition))


def run_data_stage(cfg: RunConfig, run: RunDir, keep_curated: bool = False) -> dict[str, Any]:
    """Build ``run.data`` from ``cfg.data``; return a summary for the CLI table.
    ``keep_curated``: leave the curated work (phases 1 and 2) in the work directory
    for a later run of other weights (``fmforge datamix``); else it is removed."""
    t0 = time.perf_counter()
    data = cfg.data
    listings = list_all_sources(cfg)
    _report_missing(listings)
    tasks = plan_tasks(listings, data.task_bytes)
    inputs_fp = _inputs_fingerprint(cfg, listings)
    work = WorkDir(work_dir_url(cfg, run, _inputs_fingerprint(cfg, listings, mixture=False)))
    input_bytes = sum(t.input_bytes for t in tasks)
    # workers left to fmforge: a small corpus is done before a process pool has started
    workers = data.workers or (1 if input_bytes < INLINE_BELOW_BYTES else None)
    executor = ExecutorSpec(data.executor, workers, data.ray_address)
    resumed = sum(work.is_done(CURATE, t.index) for t in tasks)
    if resumed:
        log(f"data: resuming, {resumed} of {len(tasks)} tasks already curated in {work.url}")

    phases = _Phases(cfg, listings, tasks, work, _partitions(input_bytes, DEDUP_PARTITION_BYTES))
    with TaskRunner(executor) as runner:
        curated = phases.curate(runner)
        decisions = phases.decide(curated)
        _own_mixture(work, inputs_fp)
        scattered, parts = phases.scatter(runner, curated, decisions)
        phases.gather(runner, scattered, parts)
    if work.redone:  # each named in a warning as it was found
        log(f"data: {len(work.redone)} task{'s' if len(work.redone) > 1 else ''} redone: "
            "a completion marker stood beside a damaged file")

    sources, grouped = source_stats(data, listings, curated, decisions, scattered, STEP_NAMES)
    tot = totals(sources, grouped)
    _check_mixture(data, sources, tot)
    _report_groups(grouped)
    with atomic_directory(run.data) as tmp:
        shard_names = {split: place_shards(work, tmp, split, parts[split], scattered) for split in SPLITS}
        rejected = place_rejected(work, tmp, tasks, curated, scattered) if data.keep_rejected else []
        card = {
            "version": CARD_VERSION,
            "seed": cfg.seed,
            "config": data.model_dump(mode="json"),
            "inputs_fingerprint": inputs_fp,
            "tasks": len(tasks),
            "executor": {"kind": data.executor, "workers": executor.n_workers},
            "sources": sources,
            "grouped_sources": grouped,
            "totals": tot,
            "dedup": {"method": data.dedup, **decisions["dedup"]},
            "splits": {
                "train": {
                    "documents": tot["mixed_train_documents"],
                    "bytes": tot["mixed_train_bytes"],
                    "unique_documents": tot["train_documents"],
                    "unique_bytes": tot["train_bytes"],
                    "shards": shard_names["train"],
                },
                "val": {"documents": tot["val_documents"], "bytes": tot["val_bytes"],
                        "shards": shard_names["val"]},
            },
            "rejected_shards": rejected,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / DATA_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    if keep_curated:
        _remove_mixture(work)
        return _summarise(card, len(tasks))
    work.remove()
    if cfg.data.work_dir is None:  # the run's own data.work/, now empty (a user's work_dir stays)
        with contextlib.suppress(OSError):
            (Path(run.root) / "data.work").rmdir()
    return _summarise(card, len(tasks))


class _Phases:
    """The four phases of the stage over one work directory; each skips the
    tasks whose completion marker exists."""

    def __init__(self, cfg: RunConfig, listings: list[FileListing], tasks: list[TaskSpec], work: WorkDir,
                 dedup_partitions: int):
        self.cfg, self.data, self.listings, self.tasks, self.work = cfg, cfg.data, listings, tasks, work
        self.data_json = cfg.data.model_dump(mode="json")
        self.dedup_partitions = dedup_partitions

    def curate(self, runner: TaskRunner) -> list[dict[str, Any]]:
        runner.run(curate_task, [
            {"data": self.data_json, "task": t.to_dict(), "work": self.work.url, "partitions": self.dedup_partitions}
            for t in self.tasks if not self.work.is_done(CURATE, t.index)
        ], f"data: reading {len(self.tasks)} tasks")
        return [self.work.read_json(f"{task_dir(t.index)}/stats.json") for t in self.tasks]

    def decide(self, curated: list[dict[str, Any]]) -> dict[str, Any]:
        if self.work.is_done(DECIDE, 0):
            decisions = self.work.read_json("decisions/decisions.json")
        else:
            decisions = decide(self.data, self.cfg.seed, self.work, curated, self.dedup_partitions)
        if decisions["documents"] == 0:
            empty, grouped = source_stats(self.data, self.listings, curated, decisions,
                                          [_no_scatter(t) for t in self.tasks], STEP_NAMES)
            raise EmptyCorpusError(
                "no documents remain after filtering and dedup:\n"
                + _explain_empty({**empty, **{f"{n} (files)": _files_row(g) for n, g in grouped.items()}},
                                 self.data)
                + "\nloosen data.min_chars / data.max_chars / the filters / max_bytes, or add sources"
            )
        return decisions

    def scatter(self, runner: TaskRunner, curated: list[dict[str, Any]], decisions: dict[str, Any]
                ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        data = self.data
        # a partition is gathered in memory: about shard_max_docs documents and
        # at most about PARTITION_BYTES of text, whichever gives more partitions
        per = decisions["per_source"]
        train_share = {n: (1 - data.val_fraction) * w for n, w in output_weights(data, list(per)).items()}
        expected = {
            "train": (sum(per[n]["documents"] * w for n, w in train_share.items()),
                      sum(per[n]["bytes"] * w for n, w in train_share.items())),
            "val": (decisions["documents"] * data.val_fraction,
                    sum(per[n]["bytes"] for n in per) * data.val_fraction),
        }
        parts = {split: max(_partitions(int(docs) + 1, data.shard_max_docs), _partitions(int(nbytes) + 1, PARTITION_BYTES))
                 for split, (docs, nbytes) in expected.items()}
        moves = {k: _by_task(decisions["split_moves"][k]) for k in ("to_val", "to_train")}
        runner.run(scatter_task, [
            {"data": self.data_json, "seed": self.cfg.seed, "task": t.index, "source_index": t.source_index,
             "work": self.work.url, "partitions_train": parts["train"], "partitions_val": parts["val"],
             "has_docs": c["has_docs"], "to_val": moves["to_val"].get(t.index, []),
             "to_train": moves["to_train"].get(t.index, [])}
            for t, c in zip(self.tasks, curated) if not self.work.is_done(SCATTER, t.index)
        ], "data: splitting and mixing")
        return [self.work.read_json(f"{scatter_dir(t.index)}/stats.json") for t in self.tasks], parts

    def gather(self, runner: TaskRunner, scattered: list[dict[str, Any]], parts: dict[str, int]) -> None:
        gathers = []
        for split in SPLITS:
            for k in range(parts[split]):
                files = [rel for s in scattered for rel in partition_files(s, split, k)]
                if files and not self.work.is_done(f"{GATHER}-{split}", k):
                    gathers.append({"work": self.work.url, "split": split, "k": k, "files": files,
                                    "shard_max_docs": self.data.shard_max_docs})
        runner.run(gather_task, gathers, "data: shuffling into shards")


def _check_mixture(data: DataConfig, sources: dict[str, dict[str, Any]], tot: dict[str, Any]) -> None:
    if tot["mixed_train_documents"] == 0:
        weights = {name: s["weight"] for name, s in sources.items()}
        raise EmptyCorpusError(
            f"the mixture left no training documents ({tot['train_documents']} before mixing, weights "
            f"{weights}); raise the source weights (weight < 1 keeps only that fraction)"
        )
    for s in sources.values():
        if s["kept_documents"] == 0:
            log(
                f"[yellow]warning:[/] data source {s['name']!r} contributes no documents "
                f"({s['documents_read']} read, {s['dropped_total']} dropped, {s['duplicates']} duplicates)"
            )
    if data.val_fraction > 0 and tot["val_documents"] == 0:
        log("[yellow]warning:[/] only one document survived; the val split is empty")


def _report_groups(grouped: dict[str, dict[str, Any]]) -> None:
    """One line per grouped source (its groups), and a warning for a group named
    in its group_weights or group_shares that no record has (a misspelt value, or
    a subset missing from the files): the run goes on, the card lists them."""
    for name, g in grouped.items():
        log(f"data: source {name!r} grouped by {g['group_by']!r} into {len(g['groups'])} sources: "
            + ", ".join(g["groups"])
            + (f"; {g['records_without_group']:,} records without a group not kept (data card: problems)"
               if g["records_without_group"] else ""))
        for key, groups in g["unmatched_groups"].items():
            log(f"[yellow]warning:[/] source {name!r}: {key} names {groups}, but no record has that "
                f"{g['group_by']!r}; found: {[s.split('/', 1)[1] for s in g['groups']]}")


def _files_row(g: dict[str, Any]) -> dict[str, Any]:
    """A grouped source's files as a row of the empty-corpus explanation."""
    return {"name": g["name"], "documents_read": g["documents_read"], "kept_documents": g["kept_documents"],
            "dropped_reasons": {}, "duplicates": 0, "max_bytes": None, "problems": g["problems"]}


def _summarise(card: dict[str, Any], n_tasks: int) -> dict[str, Any]:
    tot = card["totals"]
    summary = {
        "sources": len(card["sources"]),
        "files": tot["files_read"],
        "documents_read": tot["documents_read"],
        "train_docs": tot["mixed_train_documents"],
        "train_bytes": tot["mixed_train_bytes"],
        "val_docs": tot["val_documents"],
        "val_bytes": tot["val_bytes"],
        "dropped": tot["dropped_total"],
        "duplicates": tot["duplicates"],
        "problems": sum(tot["problems"].values()),
        "shards": len(card["splits"]["train"]["shards"]) + len(card["splits"]["val"]["shards"]),
        "seconds": card["seconds"],
    }
    log(
        f"data: {summary['documents_read']:,} documents from {summary['files']:,} files "
        f"({n_tasks} tasks) -> train {summary['train_docs']:,} docs / {summary['train_bytes']:,} B, "
        f"val {summary['val_docs']:,} docs / {summary['val_bytes']:,} B "
        f"({summary['dropped']:,} dropped, {summary['duplicates']:,} duplicates"
        + (f", {summary['problems']:,} input problems in the data card" if summary["problems"] else "")
        + f") in {summary['seconds']:.1f}s"
    )
    _log_mixture(card["sources"])
    return summary


def _log_mixture(sources: dict[str, dict[str, Any]]) -> None:
    parts = [
        f"{name} {s['mixture']['share_of_train_bytes']:.1%} (weight {s['weight']:g})"
        for name, s in sources.items()
    ]
    log("data: training mixture by bytes: " + ", ".join(parts))


def _no_scatter(task: TaskSpec) -> dict[str, Any]:
    return {"task": task.index, "by_source": {}, "partitions": {"train": [], "val": []}}


def _by_task(refs: list[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for ref in refs:
        out.setdefault(split_docref(ref)[0], []).append(ref)
    return out
