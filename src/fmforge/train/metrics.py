"""``metrics.jsonl``: one JSON object per logged step, appended and flushed as it
happens so a crash loses at most the current line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from fmforge.rundir import atomic_write_text


class MetricsLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def reset(self) -> None:
        if self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (they belong to work a resume redoes)."""
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def last(self) -> dict[str, Any] | None:
        records = read_metrics(self.path)
        return records[-1] if records else None

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return list(iter_metrics(path))


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # Only the final line can be torn (killed mid-write); skip it.
                continue
