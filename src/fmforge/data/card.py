"""The data card: what went into the corpus and what was dropped, per source.

It is the record a person reads to trust a corpus (and the place a test checks
that nothing vanished): for every source, documents read equal documents kept
plus documents dropped (per step) plus duplicates. ``dropped`` counts by step
(``length``, ``language``, ``gopher_quality``, ..., ``max_bytes``);
``dropped_reasons`` splits each step by rule (``length:too_short``,
``gopher_quality:min_words``, ...). It is built from the per-task statistics of
the stage's phases, summed in task order.

A grouped source (``group_by``) has a row per group, named ``SOURCE/GROUP``,
with the document counts of that group; what belongs to its files (files
matched and read, reader counters, input problems, the records without a group)
is under ``grouped_sources``.
"""

from __future__ import annotations

from typing import Any

from fmforge.config import DataConfig
from fmforge.data.groups import group_value, output_sources, output_weights, parent_name, unmatched_groups
from fmforge.data.listing import FileListing
from fmforge.data.problems import InputProblems

CARD_VERSION = 3  # 3: grouped sources (group_by): a row per group, the files under grouped_sources

_FILE_KEYS = ("files_matched", "files_excluded", "files_read")
_DOC_KEYS = ("documents_read", "bytes_read")
_SPLIT_KEYS = ("train_documents", "train_bytes", "val_documents", "val_bytes")


def _add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def source_stats(data: DataConfig, listings: list[FileListing], curate: list[dict[str, Any]],
                 decisions: dict[str, Any], scatter: list[dict[str, Any]], step_names: tuple[str, ...]
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Card entries from the phases' per-task statistics: one per output source
    (a source, or each group of a grouped source), and, per grouped source, what
    belongs to its files (listing, reader counters, input problems)."""
    found = {n for c in curate for n in c["by_source"]} | set(decisions["per_source"])
    names = output_sources(data, found)
    weights = output_weights(data, names)
    specs = {spec.name: spec for spec in data.sources}
    files: dict[str, dict[str, Any]] = {}
    problems: dict[str, InputProblems] = {}
    for spec, listing in zip(data.sources, listings):
        files[spec.name] = {
            "root": listing.root, "patterns": listing.patterns, "excludes": listing.excludes,
            "files_matched": listing.matched, "files_excluded": listing.excluded, "tasks": 0, "files_read": 0,
            "reader": {},
        }
        problems[spec.name] = InputProblems(spec.name, quiet=True)
        for m in listing.missing:  # already warned about when listed
            problems[spec.name].report("no_match", m["pattern"], m["message"])
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        spec = specs[parent_name(name)]
        group = group_value(spec, name)
        out[name] = {
            "name": name, "type": spec.type, "weight": weights[name], "max_bytes": spec.max_bytes,
            "filters": spec.filters or data.filters.preset, "languages": spec.languages,
            **({"group_of": spec.name, "group_by": spec.group_by, "group": group} if group is not None else {}),
            **{k: 0 for k in (*_DOC_KEYS, *_SPLIT_KEYS)},
            "steps": {}, "dropped": {s: 0 for s in (*step_names, "max_bytes")},
            "dropped_reasons": {}, "duplicates": 0, "kept_documents": 0, "kept_bytes": 0,
            "mixture": {"weight": weights[name], "documents_before": 0, "bytes_before": 0,
                        "documents_after": 0, "bytes_after": 0, "share_of_train_bytes": 0.0},
        }
    for cur, sca in zip(curate, scatter):
        f = files[cur["source"]]
        f["tasks"] += 1
        f["files_read"] += cur["files_read"]
        _add_counts(f["reader"], cur["reader"])
        problems[cur["source"]].merge(cur["problems"])
        for name, c in cur["by_source"].items():
            s = out[name]
            for k in _DOC_KEYS:
                s[k] += c[k]
            for step, counters in c["steps"].items():
                _add_counts(s["steps"].setdefault(step, {}), counters)
            for reason, n in c["dropped"].items():
                step = reason.split(":", 1)[0]
                s["dropped"][step] = s["dropped"].get(step, 0) + n
                s["dropped_reasons"][reason] = s["dropped_reasons"].get(reason, 0) + n
        for name, c in sca["by_source"].items():
            s = out[name]
            for k in _SPLIT_KEYS:
                s[k] += c[k]
            s["mixture"]["documents_after"] += c["mixed_documents"]
            s["mixture"]["bytes_after"] += c["mixed_bytes"]
    for name, s in out.items():
        d = decisions["per_source"].get(name, {"duplicates": 0, "max_bytes": 0, "documents": 0, "bytes": 0})
        s["duplicates"] = d["duplicates"]
        s["dropped"]["max_bytes"] = d["max_bytes"]
        if d["max_bytes"]:
            s["dropped_reasons"]["max_bytes"] = d["max_bytes"]
        s["kept_documents"] = d["documents"]
        s["kept_bytes"] = d["bytes"]
        s["dropped_total"] = sum(s["dropped"].values())
        s["mixture"]["documents_before"] = s["train_documents"]
        s["mixture"]["bytes_before"] = s["train_bytes"]
    total = sum(s["mixture"]["bytes_after"] for s in out.values())
    for s in out.values():
        s["mixture"]["share_of_train_bytes"] = s["mixture"]["bytes_after"] / total if total else 0.0
    unmatched = unmatched_groups(data, names)
    grouped: dict[str, dict[str, Any]] = {}
    for spec in data.sources:
        f = {**files[spec.name], "problems": problems[spec.name].to_dict()}
        if spec.group_by is None:
            out[spec.name].update(f)
            continue
        groups = [n for n in names if parent_name(n) == spec.name]
        without = sum(f["problems"]["counts"].get(k, 0) for k in ("missing_group", "group_not_string"))
        grouped[spec.name] = {
            "name": spec.name, "type": spec.type, "group_by": spec.group_by, "groups": groups,
            "weight": spec.weight, "share": spec.share, "group_weights": spec.group_weights,
            "group_shares": spec.group_shares,
            # named in group_weights/group_shares, met in no record: a warning, not an error
            "unmatched_groups": unmatched.get(spec.name, {}),
            # records dropped for want of a group: counted under problems too, with examples
            "records_without_group": without,
            **f,
            **{k: sum(out[g][k] for g in groups) for k in (*_DOC_KEYS, "kept_documents", "kept_bytes")},
        }
    return out, grouped


_TOTAL_KEYS = (*_DOC_KEYS, *_SPLIT_KEYS, "duplicates", "kept_documents", "kept_bytes", "dropped_total")


def totals(sources: dict[str, dict[str, Any]], grouped: dict[str, dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    """Sums over sources of every count (nested ``dropped``, ``reader`` and problems
    included); files, reader counters and problems of a grouped source come from
    its ``grouped`` entry."""
    owners = [s for s in sources.values() if "group_of" not in s] + list((grouped or {}).values())
    out: dict[str, Any] = {k: sum(s[k] for s in owners) for k in _FILE_KEYS}
    out.update({k: sum(s[k] for s in sources.values()) for k in _TOTAL_KEYS})
    for key in ("dropped", "dropped_reasons"):
        acc: dict[str, int] = {}
        for s in sources.values():
            _add_counts(acc, s[key])
        out[key] = acc
    reader: dict[str, int] = {}
    problems: dict[str, int] = {}
    for s in owners:
        _add_counts(reader, s["reader"])
        _add_counts(problems, s["problems"]["counts"])
    out["reader"] = reader
    out["problems"] = problems
    out["mixed_train_documents"] = sum(s["mixture"]["documents_after"] for s in sources.values())
    out["mixed_train_bytes"] = sum(s["mixture"]["bytes_after"] for s in sources.values())
    return out
