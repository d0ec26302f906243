"""``metrics.jsonl``: one JSON object per logged step, appended and flushed as it
happens so a crash loses at most the current line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmforge.rundir import atomic_write_text, read_metrics


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
