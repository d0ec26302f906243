"""The data stage: sources -> normalised, filtered, deduplicated, split, mixed
parquet shards plus a data card, written atomically to ``runs/NAME/data/``.

Order of operations, and why:

1. list every source's files first, so a bad pattern fails before any work;
2. read sources in config order and files in sorted order, and per document:
   normalise -> length filters -> exact dedup -> the source's ``max_bytes`` cap
   (so the cap counts only text that will actually be used);
3. split by a seeded hash of the text (val never sees a training text);
4. mix the train split by source weight, shuffle both splits with the seed;
5. write shards and ``data_card.json`` into a temporary directory that is
   renamed to ``data/`` only when complete.

The kept documents are held in memory between reading and writing, which is
fine for corpora of a few GB of text; larger corpora need an external shuffle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fmforge.config import DataConfig, RunConfig
from fmforge.data.card import CARD_VERSION, SourceStats, totals
from fmforge.data.dedup import ExactDedup, content_digest
from fmforge.data.errors import EmptyCorpusError
from fmforge.data.filters import describe_reason, length_filter_reason
from fmforge.data.listing import FileListing, list_source_files
from fmforge.data.mixture import mix, shuffle
from fmforge.data.shards import DATA_CARD, write_shards
from fmforge.data.sources import open_reader
from fmforge.data.split import assign_val, split_key
from fmforge.progress import log, progress_bar
from fmforge.rundir import RunDir, atomic_directory, fingerprint


@dataclass(frozen=True, slots=True)
class _Kept:
    """A document that survived filters and dedup, with what later steps need."""

    id: str
    text: str
    source: str
    digest: bytes
    nbytes: int


def list_all_sources(cfg: RunConfig) -> list[FileListing]:
    """The file listing of every source (raises on unknown placeholders or empty patterns)."""
    return [list_source_files(spec, cfg.config_dir) for spec in cfg.data.sources]


def data_inputs_fingerprint(cfg: RunConfig) -> str:
    """A cheap fingerprint of what the data stage reads: every listed file's
    relative path, size and mtime per source, plus the data config and seed.

    It stats files but reads none, so the pipeline can call it to decide whether
    the stage must rerun when source files change. Raises the same errors as
    listing (unknown placeholder, pattern matching nothing).
    """
    return _inputs_fingerprint(cfg, list_all_sources(cfg))


def _inputs_fingerprint(cfg: RunConfig, listings: list[FileListing]) -> str:
    return fingerprint(
        "data-inputs-v1",
        cfg.seed,
        cfg.data.model_dump(mode="json"),
        [
            {"source": l.source, "root": l.root, "files": [[f.rel, f.size, f.mtime_ns] for f in l.files]}
            for l in listings
        ],
    )


def _read_sources(
    cfg: RunConfig, listings: list[FileListing]
) -> tuple[list[_Kept], list[SourceStats]]:
    data = cfg.data
    dedup = ExactDedup(enabled=data.dedup == "exact")
    kept: list[_Kept] = []
    all_stats: list[SourceStats] = []
    total_files = sum(len(l.files) for l in listings)
    with progress_bar("data: reading files", total=total_files) as bar:
        for spec, listing in zip(data.sources, listings):
            bar.update(info=spec.name)
            reader = open_reader(spec)
            st = SourceStats.from_listing(listing, spec.type, spec.weight, spec.max_bytes)
            accepted = 0
            capped = False
            for i, file in enumerate(listing.files):
                if capped:
                    st.files_skipped_max_bytes = len(listing.files) - i
                    bar.advance(st.files_skipped_max_bytes)
                    break
                st.files_read += 1
                for doc in reader.read_file(file):
                    st.documents_read += 1
                    if capped:  # rest of a multi-document file after the cap
                        st.bytes_read += len(doc.text.encode("utf-8"))
                        st.dropped["max_bytes"] += 1
                        continue
                    encoded = doc.text.encode("utf-8")
                    st.bytes_read += len(encoded)
                    reason = length_filter_reason(doc.text, data.min_chars, data.max_chars)
                    if reason is not None:
                        st.dropped[reason] += 1
                        continue
                    digest = content_digest(encoded)
                    if dedup.is_duplicate(digest):
                        st.duplicates += 1
                        continue
                    if spec.max_bytes is not None and accepted + len(encoded) > spec.max_bytes:
                        capped = True
                        st.dropped["max_bytes"] += 1
                        continue
                    dedup.add(digest)
                    accepted += len(encoded)
                    kept.append(_Kept(doc.id, doc.text, doc.source, digest, len(encoded)))
                    st.kept_documents += 1
                    st.kept_bytes += len(encoded)
                bar.advance(1)
            st.reader = reader.counters()
            all_stats.append(st)
    return kept, all_stats


def _explain_empty(stats: list[SourceStats], data: DataConfig) -> str:
    lines = []
    for st in stats:
        reasons = ", ".join(
            f"{n} {describe_reason(r, data, st.max_bytes)}" for r, n in st.dropped.items() if n
        )
        lines.append(
            f"  source {st.name!r}: {st.documents_read} read, {st.kept_documents} kept"
            + (f"; dropped: {reasons}" if reasons else "")
            + (f"; {st.duplicates} duplicates" if st.duplicates else "")
        )
    return "\n".join(lines)


def run_data_stage(cfg: RunConfig, run: RunDir) -> dict[str, Any]:
    """Build ``run.data`` from ``cfg.data``; return a summary for the CLI table."""
    t0 = time.perf_counter()
    data = cfg.data
    listings = list_all_sources(cfg)
    kept, stats = _read_sources(cfg, listings)
    by_name = {s.name: s for s in stats}

    if not kept:
        raise EmptyCorpusError(
            "no documents remain after filtering and dedup:\n"
            + _explain_empty(stats, data)
            + "\nloosen data.min_chars / data.max_chars / max_bytes, or add sources"
        )
    for st in stats:
        if st.kept_documents == 0:
            log(
                f"[yellow]warning:[/] data source {st.name!r} contributes no documents "
                f"({st.documents_read} read, {st.dropped_total} dropped, {st.duplicates} duplicates)"
            )

    # split
    keys = [split_key(k.digest, cfg.seed) for k in kept]
    is_val = assign_val(keys, data.val_fraction, [k.id for k in kept])
    train = [k for k, v in zip(kept, is_val) if not v]
    val = [k for k, v in zip(kept, is_val) if v]
    for k, v in zip(kept, is_val):
        st = by_name[k.source]
        if v:
            st.val_documents += 1
            st.val_bytes += k.nbytes
        else:
            st.train_documents += 1
            st.train_bytes += k.nbytes
    if data.val_fraction > 0 and not val:
        log("[yellow]warning:[/] only one document survived; the val split is empty")

    # mixture (train only), then shuffle both splits
    weights = {s.name: s.weight for s in data.sources}
    mixed, mix_stats = mix(train, weights, cfg.seed)
    for name, ms in mix_stats.items():
        by_name[name].mixture = ms
    if not mixed:
        raise EmptyCorpusError(
            f"the mixture left no training documents ({len(train)} before mixing, weights "
            f"{weights}); raise the source weights (weight < 1 keeps only that fraction)"
        )
    train_rows = [(k.id, k.text, k.source) for k, _ in shuffle(mixed, cfg.seed)]
    val_rows = [(k.id, k.text, k.source) for k, _ in shuffle([(k, 0) for k in val], cfg.seed, "fmforge.shuffle.val")]

    with atomic_directory(run.data) as tmp:
        shards = {
            "train": write_shards(tmp, "train", train_rows, data.shard_max_docs),
            "val": write_shards(tmp, "val", val_rows, data.shard_max_docs),
        }
        tot = totals(stats)
        card = {
            "version": CARD_VERSION,
            "seed": cfg.seed,
            "config": data.model_dump(mode="json"),
            "inputs_fingerprint": _inputs_fingerprint(cfg, listings),
            "sources": {s.name: s.to_dict() for s in stats},
            "totals": tot,
            "splits": {
                "train": {
                    "documents": len(train_rows),
                    "bytes": tot["mixed_train_bytes"],
                    "unique_documents": len(train),
                    "unique_bytes": tot["train_bytes"],
                    "shards": shards["train"],
                },
                "val": {
                    "documents": len(val_rows),
                    "bytes": tot["val_bytes"],
                    "shards": shards["val"],
                },
            },
            "seconds": round(time.perf_counter() - t0, 3),
        }
        # the directory as a whole is renamed into place, so a plain write suffices
        (tmp / DATA_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")

    summary = {
        "sources": len(stats),
        "files": tot["files_read"],
        "documents_read": tot["documents_read"],
        "train_docs": len(train_rows),
        "train_bytes": tot["mixed_train_bytes"],
        "val_docs": len(val_rows),
        "val_bytes": tot["val_bytes"],
        "dropped": tot["dropped_total"],
        "duplicates": tot["duplicates"],
        "decode_error_files": tot["reader"].get("decode_error_files", 0),
        "shards": len(shards["train"]) + len(shards["val"]),
        "seconds": card["seconds"],
    }
    log(
        f"data: {summary['documents_read']:,} documents from {summary['files']:,} files -> "
        f"train {summary['train_docs']:,} docs / {summary['train_bytes']:,} B, "
        f"val {summary['val_docs']:,} docs / {summary['val_bytes']:,} B "
        f"({summary['dropped']:,} dropped, {summary['duplicates']:,} duplicates) "
        f"in {summary['seconds']:.1f}s"
    )
    return summary
