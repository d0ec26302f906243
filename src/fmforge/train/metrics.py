"""What training reports: ``metrics.jsonl`` (one JSON object per logged step,
appended and flushed as it happens so a crash loses at most the current line;
read back by ``fmforge.rundir.read_metrics``) and the same scalars for
TensorBoard under ``RUN/tb``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmforge.rundir import atomic_write_text, read_metrics

# The scalars shown in TensorBoard, under these names.
BOARD_SCALARS = {
    "loss": "train/loss", "val_loss": "val/loss", "val_bits_per_byte": "val/bits_per_byte",
    "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu", "skipped_steps": "train/skipped_steps",
}


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # only rank 0 writes under torchrun

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (they belong to work a resume redoes)."""
        if not self.enabled:
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def last(self) -> dict[str, Any] | None:
        records = [r for r in read_metrics(self.path) if not r.get("skipped")]
        return records[-1] if records else None

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


class ScalarBoard:
    """TensorBoard scalars. ``purge_step``: the step a resumed run continues from
    (0: a fresh run). TensorBoard hides what earlier sessions logged at or after
    the step a new writer names; the resumed run logs the steps after
    ``purge_step`` again, so the writer names the first of those, and
    ``purge_step``'s own scalars (often a validation's) stay."""

    def __init__(self, log_dir: Path, purge_step: int = 0, enabled: bool = True):
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(log_dir), purge_step=purge_step + 1 if purge_step else None)

    def add(self, step: int, record: dict[str, Any]) -> None:
        if self._writer is None:
            return
        for key, tag in BOARD_SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
