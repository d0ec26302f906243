"""Grouped sources: one configured source split into sub-sources by a field.

A ``jsonl`` source with ``group_by: meta.pile_set_name`` (The Pile's shape)
yields, for each value of the field, the sub-source ``NAME/VALUE``
(``pile/Github``, ``pile/PubMed Abstracts``). From the reader on, a group is a
source like any other: it has its own rows in the data card, its own mixture
weight (``group_weights``, else the source's ``weight``) or token share
(``group_shares``, else a part of the source's ``share`` in proportion to its
size), its own index in ``tokens/{split}.sources.npy`` and its own held-out
evaluation. What belongs to the files rather than to a group (files matched and
read, reader counters, input problems, including the records without a group)
stays with the configured source, under the card's ``grouped_sources``.

Sub-source names are the source's name, a slash, and the value as it is: source
names cannot hold a slash, so the configured source of an output source is the
part before the first slash.
"""

from __future__ import annotations

from fmforge.config import DataConfig, SourceConfig
from fmforge.data.problems import DataError

# More groups than this in one source is a group_by naming the wrong field (a
# title, an id); every group is a source of its own down to the evaluation.
MAX_GROUPS = 1000


def parent_name(source: str) -> str:
    """The configured source an output source comes from (itself if not a group)."""
    return source.split("/", 1)[0]


def group_value(spec: SourceConfig, source: str) -> str | None:
    """The field's value of a group's sub-source; None for an ungrouped source."""
    if spec.group_by is None or not source.startswith(spec.name + "/"):
        return None
    return source[len(spec.name) + 1:]


def source_weight(spec: SourceConfig, source: str) -> float:
    """The mixture weight of an output source of ``spec``."""
    group = group_value(spec, source)
    return spec.weight if group is None else spec.group_weight(group)


def output_sources(data: DataConfig, found: set[str]) -> list[str]:
    """Every output source in a fixed order: configured sources in config order,
    a grouped source's groups sorted by value in its place. ``found`` holds the
    groups the curate phase met; an ungrouped source is listed even when it read
    nothing, as it always was."""
    out: list[str] = []
    for spec in data.sources:
        if spec.group_by is None:
            out.append(spec.name)
            continue
        groups = sorted(s for s in found if parent_name(s) == spec.name)
        if len(groups) > MAX_GROUPS:
            raise DataError(
                f"source {spec.name!r}: group_by {spec.group_by!r} split it into {len(groups):,} groups "
                f"(more than {MAX_GROUPS}), e.g. {[group_value(spec, g) for g in groups[:3]]}; group_by "
                "should name a field with a few values, such as a subset's name (meta.pile_set_name)")
        out.extend(groups)
    return out


def output_weights(data: DataConfig, sources: list[str]) -> dict[str, float]:
    """Output source -> mixture weight."""
    specs = {s.name: s for s in data.sources}
    return {name: source_weight(specs[parent_name(name)], name) for name in sources}


def unmatched_groups(data: DataConfig, sources: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per grouped source, the groups its ``group_weights``/``group_shares`` name
    that no record had: a misspelt value or a subset missing from the files."""
    out: dict[str, dict[str, list[str]]] = {}
    seen = set(sources)
    for spec in data.sources:
        for key in ("group_weights", "group_shares"):
            missing = [g for g in getattr(spec, key) if spec.group_source(g) not in seen]
            if missing:
                out.setdefault(spec.name, {})[key] = missing
    return out


def resolve_token_budget(data: DataConfig, tokens: dict[str, int]) -> dict[str, float]:
    """Output source -> share of ``data.total_tokens``, given each output source's
    training tokens: a group named in ``group_shares`` has its share; the rest of
    the source's ``share`` goes to its other groups in proportion to their tokens
    (their natural mix). Errors when a named share cannot be met, or a source's
    share would go unused."""
    budget = data.token_budget
    assert budget is not None
    out: dict[str, float] = {}
    for spec in data.sources:
        if spec.group_by is None:
            out[spec.name] = budget[spec.name]
            continue
        groups = {g: n for g, n in tokens.items() if parent_name(g) == spec.name}
        named = {spec.group_source(g): v for g, v in spec.group_shares.items()}
        absent = [group_value(spec, g) for g in named if not groups.get(g)]
        if absent:
            raise DataError(f"source {spec.name!r}: group_shares give a share to {absent}, but no training "
                            f"document has that {spec.group_by!r} (groups found: "
                            f"{[group_value(spec, g) for g in sorted(groups)]})")
        rest = budget[spec.name] - sum(named.values())
        others = {g: n for g, n in groups.items() if g not in named and n}
        if rest > 1e-6 and not others:
            raise DataError(f"source {spec.name!r}: group_shares name every group and sum to "
                            f"{sum(named.values()):g}, less than the source's share {budget[spec.name]:g}; "
                            "make them sum to the share")
        total = sum(others.values())
        out.update(named)
        out.update({g: rest * n / total for g, n in others.items()})
    return out
