"""The data card: what went into the corpus and what was dropped, per source.

It is the record a person reads to trust a corpus (and the place a test checks
that nothing vanished): for every source, documents read equal documents kept
plus documents dropped (per step) plus duplicates. ``dropped`` counts by step
(``length``, ``language``, ``gopher_quality``, ..., ``max_bytes``);
``dropped_reasons`` splits each step by rule (``length:too_short``,
``gopher_quality:min_words``, ...). It is built from the per-task statistics of
the stage's phases, summed in task order.
"""

from __future__ import annotations

from typing import Any

from fmforge.config import DataConfig
from fmforge.data.listing import FileListing
from fmforge.data.problems import InputProblems

CARD_VERSION = 2

_SUMMED = ("files_read", "documents_read", "bytes_read", "train_documents", "train_bytes",
           "val_documents", "val_bytes")


def _add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def source_stats(data: DataConfig, listings: list[FileListing], curate: list[dict[str, Any]],
                 decisions: dict[str, Any], scatter: list[dict[str, Any]], step_names: tuple[str, ...]
                 ) -> dict[str, dict[str, Any]]:
    """Per-source card entries from the phases' per-task statistics."""
    out: dict[str, dict[str, Any]] = {}
    problems: dict[str, InputProblems] = {}
    for spec, listing in zip(data.sources, listings):
        out[spec.name] = {
            "name": spec.name, "type": spec.type, "weight": spec.weight, "max_bytes": spec.max_bytes,
            "filters": spec.filters or data.filters.preset, "languages": spec.languages,
            "root": listing.root, "patterns": listing.patterns, "excludes": listing.excludes,
            "files_matched": listing.matched, "files_excluded": listing.excluded, "tasks": 0,
            **{k: 0 for k in _SUMMED},
            "reader": {}, "steps": {}, "dropped": {s: 0 for s in (*step_names, "max_bytes")},
            "dropped_reasons": {}, "duplicates": 0, "kept_documents": 0, "kept_bytes": 0,
            "mixture": {"weight": spec.weight, "documents_before": 0, "bytes_before": 0,
                        "documents_after": 0, "bytes_after": 0, "share_of_train_bytes": 0.0},
        }
        problems[spec.name] = InputProblems(spec.name, quiet=True)
        for m in listing.missing:  # already warned about when listed
            problems[spec.name].report("no_match", m["pattern"], m["message"])
    for cur, sca in zip(curate, scatter):
        s = out[cur["source"]]
        s["tasks"] += 1
        for k in ("files_read", "documents_read", "bytes_read"):
            s[k] += cur[k]
        for k in ("train_documents", "train_bytes", "val_documents", "val_bytes"):
            s[k] += sca[k]
        _add_counts(s["reader"], cur["reader"])
        for step, counters in cur["steps"].items():
            _add_counts(s["steps"].setdefault(step, {}), counters)
        for reason, n in cur["dropped"].items():
            step = reason.split(":", 1)[0]
            s["dropped"][step] = s["dropped"].get(step, 0) + n
            s["dropped_reasons"][reason] = s["dropped_reasons"].get(reason, 0) + n
        s["mixture"]["documents_after"] += sca["mixed_documents"]
        s["mixture"]["bytes_after"] += sca["mixed_bytes"]
        problems[cur["source"]].merge(cur["problems"])
    for name, s in out.items():
        d = decisions["per_source"][name]
        s["duplicates"] = d["duplicates"]
        s["dropped"]["max_bytes"] = d["max_bytes"]
        if d["max_bytes"]:
            s["dropped_reasons"]["max_bytes"] = d["max_bytes"]
        s["kept_documents"] = d["documents"]
        s["kept_bytes"] = d["bytes"]
        s["dropped_total"] = sum(s["dropped"].values())
        s["problems"] = problems[name].to_dict()
        s["mixture"]["documents_before"] = s["train_documents"]
        s["mixture"]["bytes_before"] = s["train_bytes"]
    total = sum(s["mixture"]["bytes_after"] for s in out.values())
    for s in out.values():
        s["mixture"]["share_of_train_bytes"] = s["mixture"]["bytes_after"] / total if total else 0.0
    return out


_TOTAL_KEYS = ("files_matched", "files_excluded", *_SUMMED, "duplicates", "kept_documents",
               "kept_bytes", "dropped_total")


def totals(sources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sums over sources of every count (nested ``dropped``, ``reader`` and problems included)."""
    out: dict[str, Any] = {k: sum(s[k] for s in sources.values()) for k in _TOTAL_KEYS}
    for key in ("dropped", "dropped_reasons", "reader"):
        acc: dict[str, int] = {}
        for s in sources.values():
            _add_counts(acc, s[key])
        out[key] = acc
    problems: dict[str, int] = {}
    for s in sources.values():
        _add_counts(problems, s["problems"]["counts"])
    out["problems"] = problems
    out["mixed_train_documents"] = sum(s["mixture"]["documents_after"] for s in sources.values())
    out["mixed_train_bytes"] = sum(s["mixture"]["bytes_after"] for s in sources.values())
    return out
