"""The data card: what went into the corpus and what was dropped, per source.

It is the record a person reads to trust a corpus (and the place a test checks
that nothing vanished): for every source, documents read equal documents kept
plus documents dropped (per reason) plus duplicates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fmforge.data.filters import DROP_REASONS
from fmforge.data.listing import FileListing
from fmforge.data.mixture import MixStats

CARD_VERSION = 1


@dataclass
class SourceStats:
    name: str
    type: str
    weight: float
    max_bytes: int | None
    root: str
    patterns: list[str]
    excludes: list[str]
    files_matched: int = 0
    files_excluded: int = 0
    files_read: int = 0
    files_skipped_max_bytes: int = 0
    documents_read: int = 0
    bytes_read: int = 0  # UTF-8 bytes of the normalised text
    reader: dict[str, int] = field(default_factory=dict)  # e.g. raw_bytes, decode_error_files, replaced_bytes
    dropped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in DROP_REASONS})
    duplicates: int = 0
    kept_documents: int = 0
    kept_bytes: int = 0
    train_documents: int = 0
    train_bytes: int = 0
    val_documents: int = 0
    val_bytes: int = 0
    mixture: MixStats = field(default_factory=MixStats)

    @classmethod
    def from_listing(cls, listing: FileListing, type_: str, weight: float, max_bytes: int | None) -> SourceStats:
        return cls(
            name=listing.source,
            type=type_,
            weight=weight,
            max_bytes=max_bytes,
            root=listing.root,
            patterns=listing.patterns,
            excludes=listing.excludes,
            files_matched=listing.matched,
            files_excluded=listing.excluded,
        )

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dropped_total"] = self.dropped_total
        d["mixture"] = {"weight": self.weight, **asdict(self.mixture)}
        return d


_TOTAL_KEYS = (
    "files_matched", "files_excluded", "files_read", "files_skipped_max_bytes",
    "documents_read", "bytes_read", "duplicates", "kept_documents", "kept_bytes",
    "train_documents", "train_bytes", "val_documents", "val_bytes",
)  # fmt: skip


def totals(stats: list[SourceStats]) -> dict[str, Any]:
    """Sums over sources of every count (nested ``dropped`` and ``reader`` included)."""
    out: dict[str, Any] = {k: sum(getattr(s, k) for s in stats) for k in _TOTAL_KEYS}
    out["dropped"] = {r: sum(s.dropped.get(r, 0) for s in stats) for r in DROP_REASONS}
    out["dropped_total"] = sum(out["dropped"].values())
    reader: dict[str, int] = {}
    for s in stats:
        for k, v in s.reader.items():
            reader[k] = reader.get(k, 0) + v
    out["reader"] = reader
    out["mixed_train_documents"] = sum(s.mixture.documents_after for s in stats)
    out["mixed_train_bytes"] = sum(s.mixture.bytes_after for s in stats)
    return out
