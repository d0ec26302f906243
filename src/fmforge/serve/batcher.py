"""Step-level batching: one thread owns the generation engine and advances every
sequence in flight by one token per step; requests join and leave between steps.

The HTTP handlers run on the event loop and never touch the engine. A handler
submits a request and receives its events (text pieces, then the end) on an
``asyncio.Queue``; a client that disconnects cancels its sequences, which frees
their slots at the next step. So one slow client never blocks the others, and 16
concurrent streams share each decode step instead of queueing one behind another.

Admission is bounded: at most ``max_batch`` sequences decode and ``max_queue``
more wait for a slot; past that ``submit`` answers 429 with ``Retry-After``.

The worker is supervised. Every request gets an answer, whatever fails:

- the engine refuses one request (``add`` raises ValueError, e.g. a prompt past
  the context): that request gets a 400; any other exception admitting it: a 500;
- anything else raises in the worker (a step, freeing a slot, the loop itself):
  the traceback is logged, every request in flight or waiting gets a 500
  (``server_error``), their sequences are dropped from the engine and the worker
  restarts;
- it gives up when the engine cannot be emptied or after ``max_failures``
  failures with no successful step in between (a device lost, memory that never
  comes back): ``failed`` holds the reason, ``/health`` answers 503, every
  request gets a 503, and ``on_fatal(reason)`` is called once so the server can
  exit non-zero for its supervisor (systemd, Kubernetes, ``docker --restart``)
  to start a fresh process.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

from fmforge.serve.protocol import APIError, server_error

log = logging.getLogger("fmforge.serve")

DEFAULT_MAX_QUEUE = 64  # sequences waiting for a slot, beyond the max_batch decoding
MAX_FAILURES = 3  # worker failures in a row (no successful step between) before it gives up
RETRY_AFTER_S = 1  # what a 429 asks the client to wait


@dataclass
class Event:
    """What a sequence produced in one step, or the error that ended it."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: APIError | None = None


def _failed(error: APIError) -> Event:
    return Event(text="", finished=True, finish_reason="error", error=error)


@dataclass(eq=False)  # identity: a job is one submission
class _Job:
    request: Any
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    seq_id: Any = None
    cancelled: bool = False


class Batcher:
    def __init__(self, engine, max_batch: int = 16, max_queue: int = DEFAULT_MAX_QUEUE,
                 max_failures: int = MAX_FAILURES, on_fatal: Callable[[str], None] | None = None):
        if max_batch < 1 or max_queue < 0 or max_failures < 1:
            raise ValueError(f"max_batch must be >= 1, max_queue >= 0 and max_failures >= 1; got "
                             f"{max_batch}, {max_queue}, {max_failures}")
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        self.max_failures, self.on_fatal = max_failures, on_fatal
        self.failed: str | None = None  # why the worker gave up
        self.restarts = 0
        self._failures = 0  # in a row
        self._inbox: queue.Queue = queue.Queue()
        self._open: set[_Job] = set()  # event-loop side: submitted, not finished or cancelled
        self._active: dict[Any, _Job] = {}  # worker side: decoding
        self._waiting: list[_Job] = []  # worker side: waiting for a slot
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fmforge-batcher", daemon=True)
        self._thread.start()

    # --------------------------------------------------------- event-loop side
    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue

    def check_capacity(self, n: int) -> None:
        """Raise the APIError a request for ``n`` sequences gets now, if any."""
        if self.failed is not None:
            raise self._stopped()
        if n > self.capacity:
            raise APIError(400, f"n: {n} choices are more sequences than this server runs at once "
                           f"({self.capacity}: --max-batch {self.max_batch} decoding plus --max-queue "
                           f"{self.max_queue} waiting)", param="n")
        if len(self._open) + n > self.capacity:
            raise APIError(429, f"the server is at capacity: {len(self._open)} sequences in flight, "
                           f"{self.max_batch} decoding at once (--max-batch) and up to "
                           f"{self.max_queue} waiting (--max-queue); retry after {RETRY_AFTER_S} s",
                           type_="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_S)})

    def _stopped(self) -> APIError:
        return APIError(503, f"the generation worker has stopped ({self.failed}); the server is "
                        "shutting down so that its supervisor starts it afresh",
                        type_="server_error", code="worker_stopped")

    def submit(self, requests: list) -> list[_Job]:
        """Queue the requests (one per choice) together, or raise a 429/503 APIError."""
        self.check_capacity(len(requests))
        loop = asyncio.get_running_loop()
        jobs = [_Job(request=r, loop=loop, events=asyncio.Queue()) for r in requests]
        for job in jobs:
            self._open.add(job)
            self._inbox.put(("add", job))
        return jobs

    def cancel(self, job: _Job) -> None:
        """Free the job's slot (a no-op once it has finished)."""
        if job in self._open:
            self._open.discard(job)
            job.cancelled = True
            self._inbox.put(("cancel", job))

    def close(self) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=10)

    @property
    def in_flight(self) -> int:
        """Sequences accepted and not yet finished or cancelled (decoding or waiting)."""
        return len(self._open)

    @property
    def decoding(self) -> int:
        return len(self._active)

    # ----------------------------------------------------------- engine thread
    def _emit(self, job: _Job, event: Event) -> None:
        def deliver():
            if event.finished:
                self._open.discard(job)
            job.events.put_nowait(event)

        try:
            job.loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: the server has stopped, nobody is waiting
            pass

    def _take(self, block: bool) -> None:
        try:
            kind, job = self._inbox.get(block=block)
        except queue.Empty:
            return
        while True:
            if kind == "add":
                self._waiting.append(job)
            elif kind == "cancel":
                if job in self._waiting:
                    self._waiting.remove(job)
                elif job.seq_id is not None and self._active.get(job.seq_id) is job:
                    self.engine.cancel(job.seq_id)
                    del self._active[job.seq_id]
            try:
                kind, job = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.max_batch:
            job = self._waiting.pop(0)
            if job.cancelled:
                continue
            try:
                job.seq_id = self.engine.add(job.request)
            except ValueError as exc:  # the engine refuses this request (e.g. a prompt past the context)
                self._emit(job, _failed(APIError(400, str(exc))))
                continue
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                log.error("admitting a request failed", exc_info=True)
                self._emit(job, _failed(server_error("admitting the request failed", exc)))
                continue
            self._active[job.seq_id] = job

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._take(block=not self._active and not self._waiting)
            self._admit()
            if not self._active:
                continue
            results = self.engine.step()
            self._failures = 0
            for r in results:
                job = self._active.get(r.seq_id)
                if job is None:
                    continue
                result = r.result
                self._emit(job, Event(text=r.text, finished=r.finished, finish_reason=r.finish_reason,
                                      prompt_tokens=result.prompt_tokens if result else 0,
                                      completion_tokens=result.completion_tokens if result else 0))
                if r.finished:
                    del self._active[r.seq_id]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except BaseException as exc:  # noqa: BLE001 - supervised: every client must hear of it
                if not self._recover(exc):
                    self._refuse_until_closed()
                    return

    def _recover(self, exc: BaseException) -> bool:
        """After the worker failed: answer every request in flight or waiting with a
        500, drop their sequences from the engine; False when the worker must give up."""
        self._failures += 1
        jobs = list(self._active.values()) + self._waiting
        while True:
            try:
                kind, job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                jobs.append(job)
        self._active.clear()
        self._waiting.clear()
        log.error("the generation worker failed (%d in a row); answering the %d requests in flight "
                  "or waiting with a 500", self._failures, len(jobs), exc_info=exc)
        error = server_error("generation failed", exc)
        for job in jobs:
            self._emit(job, _failed(error))
        if not isinstance(exc, Exception):  # SystemExit and the like: not ours to survive
            return self._give_up(f"{type(exc).__name__}: {exc}")
        try:
            for job in jobs:
                if job.seq_id is not None:
                    self.engine.cancel(job.seq_id)
            if self.engine.has_work():
                raise RuntimeError("the engine still holds sequences after every one was cancelled")
        except Exception as reset:  # noqa: BLE001 - an engine that cannot be emptied is unusable
            log.error("the engine could not drop the failed sequences", exc_info=True)
            return self._give_up(f"after {type(exc).__name__}: {exc}, the engine could not be reset "
                                 f"({type(reset).__name__}: {reset})")
        if self._failures >= self.max_failures:
            return self._give_up(f"{self._failures} failures in a row with no successful step, the "
                                 f"last {type(exc).__name__}: {exc}")
        self.restarts += 1
        log.warning("the generation worker restarted (restart %d)", self.restarts)
        return True

    def _give_up(self, reason: str) -> bool:
        self.failed = reason
        log.critical("the generation worker gave up: %s. /health answers 503 and every request a "
                     "503; the server stops so that a supervisor can start it afresh", reason)
        if self.on_fatal is not None:
            try:
                self.on_fatal(reason)
            except Exception:  # noqa: BLE001 - still refuse requests below
                log.exception("on_fatal failed")
        return False

    def _refuse_until_closed(self) -> None:
        """After giving up: answer whatever still arrives with a 503 until closed."""
        while not self._stop.is_set():
            kind, job = self._inbox.get()
            if kind == "add":
                self._emit(job, _failed(self._stopped()))
