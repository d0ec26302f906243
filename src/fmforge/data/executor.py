"""Run the tasks of the data stage (and of the tokenize stage's encoding, with the
same ``data.executor`` settings): in this process, in a local process pool, or
as Ray tasks on a cluster.

A task is a top-level function of one picklable payload that writes its
results to the work directory and its completion marker last; the executor only
schedules, so every executor produces byte-identical files. The stage skips
tasks whose marker exists (a rerun after a kill resumes), and the progress bar
counts finished tasks. One pool (or one Ray connection) serves all the stage's
phases: starting workers costs seconds.

The local pool is ``workers - 1`` processes plus the driver itself: a thread of
the driver takes tasks from the same queue as the processes. The driver would
otherwise sit idle while holding its own interpreter, pyarrow and the stage's
state; one process fewer saves that much resident memory (about 100 MB) with the
same number of tasks running at once. A task can ask ``in_driver_slot()`` whether
it runs there (sharing the cores with the pool's processes).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Callable, Sequence

from fmforge.errors import MissingDependencyError
from fmforge.progress import progress_bar

TaskFn = Callable[[dict[str, Any]], Any]

_slot = threading.local()


def in_driver_slot() -> bool:
    """True in the driver's thread that runs tasks beside the local pool's processes."""
    return getattr(_slot, "active", False)


def run_task(fn: TaskFn, payload: dict[str, Any]) -> Any:
    """``fn(payload)``, then the memory pyarrow's allocator freed during the task goes
    back to the system: mimalloc keeps it otherwise (about 60 MB after a curate task of
    16 MB), and every process of the stage would hold its largest task's worth between
    tasks and phases. Top-level, so it travels to pool processes."""
    try:
        return fn(payload)
    finally:
        pa = sys.modules.get("pyarrow")
        if pa is not None:
            pa.default_memory_pool().release_unused()
        _trim_c_heap()


def _trim_c_heap() -> None:
    """glibc's malloc keeps freed memory at the top of its heaps (Python's large
    objects, numpy arrays): give it back, ~25 MB per process between the data
    stage's tasks. Elsewhere (musl, macOS) nothing to do."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018  (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


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
                    run_task(fn, p)
                    bar.advance(1)
            else:
                self._run_pool(fn, payloads, bar)

    def _run_pool(self, fn: TaskFn, payloads: Sequence[dict[str, Any]], bar: Any) -> None:
        """``workers - 1`` processes, each given its next task when it finishes one,
        and the driver's slot (a thread here) taking tasks from the same queue."""
        if self._pool is None:
            # spawn, not fork: the parent may hold threads (torch, tokenizers, rich's
            # progress refresher) that a forked child would inherit half-locked.
            self._pool = ProcessPoolExecutor(max_workers=self.spec.n_workers - 1, mp_context=get_context("spawn"))
        todo = deque(payloads)
        lock = threading.Lock()
        finished: deque[BaseException | None] = deque()  # the driver slot's results
        stop = threading.Event()

        def take() -> dict[str, Any] | None:
            with lock:
                return todo.popleft() if todo and not stop.is_set() else None

        def driver_slot() -> None:
            _slot.active = True
            try:
                while (p := take()) is not None:
                    run_task(fn, p)
                    finished.append(None)
            except BaseException as e:  # handed to the main thread, which raises it
                finished.append(e)

        slot = threading.Thread(target=driver_slot, name="fmforge-driver-slot", daemon=True)
        pending: set[Future] = set()
        try:
            for _ in range(self.spec.n_workers - 1):
                if (p := take()) is not None:
                    pending.add(self._pool.submit(run_task, fn, p))
            slot.start()
            while pending or slot.is_alive() or finished:
                if pending:
                    done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
                else:  # only the slot's last task is left
                    done = set()
                    slot.join(timeout=0.05)
                for fut in done:
                    fut.result()  # re-raises a task's error here, with its message
                    bar.advance(1)
                    if (p := take()) is not None:
                        pending.add(self._pool.submit(run_task, fn, p))
                while finished:
                    err = finished.popleft()
                    if err is not None:
                        raise err
                    bar.advance(1)
        except BaseException as e:
            stop.set()  # the slot starts no new task
            for fut in pending:
                fut.cancel()
            if not isinstance(e, KeyboardInterrupt) and slot.is_alive():
                slot.join()  # its task ends before the error is reported
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
