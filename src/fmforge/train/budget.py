"""A wall-clock budget instead of a step count (``train.max_minutes``).

The trainer times its first steps, then fixes ``max_steps`` so that training,
with its periodic validation, ends within the budget. The decision is recorded in
``RUN/train_budget.json`` (and in every checkpoint), so a resumed run keeps it.
The learning rate of the timed steps does not depend on the step count (they
run in warmup, which the config requires), so the whole run follows exactly the
schedule of a run given that step count from the start.
"""

from __future__ import annotations

import math
import os
import statistics
import time

import torch

from fmforge.config import BUDGET_PROBE_STEPS, TrainConfig
from fmforge.hardware import other_cpu_load
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_write_json

# The decided count leaves this share of the budget unused: the estimate of
# validation time is rough, and a budget is a promise.
SAFETY = 0.03
_WARMUP_STEPS_UNTIMED = 2  # allocator and kernel warm-up make the first steps slow
MAX_PROBE_STEPS = 50


class StepBudget:
    def __init__(self, run: RunDir, cfg: TrainConfig, lineage: str, par, fresh: bool = False):
        self.cfg, self.lineage, self.par = cfg, lineage, par
        self.path = run.root / "train_budget.json"
        self.max_steps: int | None = cfg.max_steps if cfg.max_minutes is None else None
        self._durations: list[float] = []
        if cfg.max_minutes is not None and self.path.is_file() and not fresh:
            import json

            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: decide again
                record = {}
            if not isinstance(record, dict) or not isinstance(record.get("max_steps"), int):
                record = {}  # JSON of another shape: as damaged
            if record.get("lineage") == lineage:
                self.max_steps = record["max_steps"]
                log(f"budget: {cfg.max_minutes:g} min → {self.max_steps} steps, as decided "
                    f"when this run started ({self.path.name})")

    def known_steps(self) -> int | None:
        return self.max_steps

    def adopt(self, max_steps: int) -> None:
        """The step count a checkpoint was trained towards."""
        self.max_steps = max_steps

    @property
    def placeholder_steps(self) -> int:
        """The step count the schedule is asked with before the decision; only
        warmup steps run then, whose rate does not depend on it."""
        return self.cfg.max_steps or 10**9

    def probing(self, done: int) -> bool:
        return self.max_steps is None

    def record_step(self, done: int, now: float) -> None:
        """Called at the end of each step with the clock: a step's time runs from
        the end of the one before, so logging and metrics writes count too."""
        previous, self._last_end = getattr(self, "_last_end", None), now
        self._seen = getattr(self, "_seen", 0) + 1
        if previous is not None and self._seen > _WARMUP_STEPS_UNTIMED:
            self._durations.append(now - previous)

    @property
    def probe_steps(self) -> int:
        """Steps timed before deciding: all of warmup (up to MAX_PROBE_STEPS), whose
        learning rate does not depend on the step count, so that a moment of load
        on a shared machine does not decide the whole run; at least
        BUDGET_PROBE_STEPS."""
        return max(BUDGET_PROBE_STEPS, min(self.cfg.warmup_steps, MAX_PROBE_STEPS))

    def ready(self, done: int) -> bool:
        return len(self._durations) >= self.probe_steps - _WARMUP_STEPS_UNTIMED

    def decide(self, done: int, elapsed_s: float, accum: int) -> int:
        """Fix the step count from the median step time measured so far."""
        cfg = self.cfg
        # Every process must reach the same number: agree on the measurements.
        step_s = self.par.mean(statistics.median(self._durations))
        elapsed_s = self.par.mean(elapsed_s)
        # A validation scores eval_batches micro-batches forward only (~1/3 of a
        # training micro-batch's forward and backward) every eval_every steps.
        val_per_step = cfg.eval_batches * step_s / accum / 3 / cfg.eval_every
        per_step = step_s + val_per_step
        remaining = cfg.max_minutes * 60 * (1 - SAFETY) - elapsed_s
        steps = done + max(0, math.floor(remaining / per_step))
        steps = max(steps, done, cfg.warmup_steps + 1)
        capped = cfg.max_steps is not None and steps > cfg.max_steps
        if capped:
            steps = cfg.max_steps
        self.max_steps = steps
        if self.par.is_main:
            atomic_write_json(self.path, {
                "lineage": self.lineage, "max_steps": steps, "max_minutes": cfg.max_minutes,
                "measured_step_s": round(step_s, 4), "estimated_validation_s_per_step": round(val_per_step, 4),
                "decided_after_steps": done, "elapsed_s_at_decision": round(elapsed_s, 2),
                "decided_at": time.time(), "capped_by_max_steps": capped})
        log(f"budget: {step_s:.3f} s per step measured over {len(self._durations)} steps; "
            f"{cfg.max_minutes:g} min → {steps} steps"
            + (f" (capped by train.max_steps={cfg.max_steps})" if capped else ""))
        if self.par.device.type == "cpu" and self.par.is_main:
            # Training's own threads: each process's, times the processes on this node.
            warn_if_cpu_shared(torch.get_num_threads() * int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return steps


def warn_if_cpu_shared(training_threads: int) -> None:
    """Say so when other programs were using the CPU while the steps were timed:
    the decision is final (the schedule depends on it), so on a busy machine the
    budget trains fewer steps than the same minutes would on an idle one. The
    1-minute load average counts training's own threads; more than that by
    ``hardware.BUSY_MARGIN`` is someone else's work."""
    load = other_cpu_load(training_threads)
    if load is not None:
        log(f"[yellow]warning:[/] the load average was {load:.1f} while the budget timed its steps, "
            f"with {training_threads} threads of training: other programs were using the CPU, so the run trains "
            "fewer steps than an idle machine would in the same minutes. For the demo's figures, "
            "run it on an idle machine.")
