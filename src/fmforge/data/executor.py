"""Run the tasks of the data stage (and of the tokenize stage's encoding, with the
same ``data.executor`` settings): in this process, in a local process pool, or
as Ray tasks on a cluster.

A task is a top-level function of one picklable payload that writes its
results to the work directory and its completion marker last; the executor only
schedules, so every executor produces byte-identical files. The stage skips
tasks whose marker exists (a rerun after a kill resumes), and the progress bar
counts finished tasks. One pool (or one Ray connection) serves all the stage's
phases: starting workers costs seconds.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from fmforge.errors import MissingDependencyError
from fmforge.progress import progress_bar

TaskFn = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str = "local"  # local | ray
    workers: int | None = None
    ray_address: str | None = None

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class TaskRunner:
    """``with TaskRunner(spec) as runner: runner.run(fn, payloads, "what")``."""

    def __init__(self, spec: ExecutorSpec):
        self.spec = spec
        self._pool: ProcessPoolExecutor | None = None
        self._ray = None
        self._ray_started_here = False

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._ray_started_here:
            self._ray.shutdown()

    def run(self, fn: TaskFn, payloads: Sequence[dict[str, Any]], description: str, unit: str = "tasks",
            done: int = 0) -> None:
        """Run ``fn(payload)`` for every payload; the first task error is raised here.
        ``done``: tasks of the same phase already finished (a resumed run), counted
        by the progress bar."""
        if not payloads:
            return
        with progress_bar(description, total=len(payloads) + done, unit=unit) as bar:
            bar.advance(done)
            if self.spec.kind == "ray":
                self._run_ray(fn, payloads, bar)
            elif self.spec.n_workers == 1 or (len(payloads) == 1 and self._pool is None):
                for p in payloads:
                    fn(p)
                    bar.advance(1)
            else:
                self._run_pool(fn, payloads, bar)

    def _run_pool(self, fn: TaskFn, payloads: Sequence[dict[str, Any]], bar: Any) -> None:
        if self._pool is None:
            # spawn, not fork: the parent may hold threads (torch, tokenizers, rich's
            # progress refresher) that a forked child would inherit half-locked.
            self._pool = ProcessPoolExecutor(max_workers=self.spec.n_workers, mp_context=get_context("spawn"))
        pending = {self._pool.submit(fn, p) for p in payloads}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    fut.result()  # re-raises a task's error here, with its message
                    bar.advance(1)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise

    def _run_ray(self, fn: TaskFn, payloads: Sequence[dict[str, Any]], bar: Any) -> None:
        ray = self._connect_ray()
        remote = ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(p) for p in payloads]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done)
            except ray.exceptions.RayTaskError as e:
                # the task's own exception (a DataError with its message), not Ray's wrapper
                raise e.as_instanceof_cause() from None
            bar.advance(len(done))

    def _connect_ray(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise MissingDependencyError(
                "data.executor is 'ray' but Ray is not installed: pip install 'fmforge[ray]'"
            ) from None
        if not ray.is_initialized():
            if self.spec.ray_address:
                ray.init(address=self.spec.ray_address, log_to_driver=False)
            else:  # a private local instance sized to data.workers
                ray.init(num_cpus=self.spec.n_workers, include_dashboard=False, log_to_driver=False)
            self._ray_started_here = True
        self._ray = ray
        return ray
