"""Cutting the input into tasks: the unit of work of the data stage.

A task is a run of consecutive files of one source (in the listing's sorted
order) holding about ``data.task_bytes`` of input; a file is never split, and a
task never mixes sources. Tasks are numbered in reading order (sources in config
order, files sorted), so a document's reference ``task << 32 | index`` orders
documents the way a single reader would meet them: "the first occurrence wins"
means the same thing on one core and on a cluster.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fmforge.data.dedup import DOCREF_SHIFT, docref
from fmforge.data.listing import FileListing, SourceFile

MAX_DOCS_PER_TASK = 2**DOCREF_SHIFT  # the local index is the low bits of a docref


@dataclass(frozen=True)
class TaskSpec:
    index: int
    source_index: int
    files: tuple[SourceFile, ...]

    @property
    def input_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict:
        return {"index": self.index, "source_index": self.source_index,
                "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_dict(cls, d: dict) -> TaskSpec:
        return cls(d["index"], d["source_index"], tuple(SourceFile(**f) for f in d["files"]))


def plan_tasks(listings: list[FileListing], task_bytes: int) -> list[TaskSpec]:
    tasks: list[TaskSpec] = []
    for source_index, listing in enumerate(listings):
        group: list[SourceFile] = []
        size = 0
        for f in listing.files:
            if group and size + f.size > task_bytes:
                tasks.append(TaskSpec(len(tasks), source_index, tuple(group)))
                group, size = [], 0
            group.append(f)
            size += f.size
        if group:
            tasks.append(TaskSpec(len(tasks), source_index, tuple(group)))
    return tasks


__all__ = ["TaskSpec", "plan_tasks", "docref", "split_docref"]


def split_docref(ref: int) -> tuple[int, int]:
    """``(task, local index)`` of a ``docref``."""
    return ref >> DOCREF_SHIFT, ref & ((1 << DOCREF_SHIFT) - 1)
