"""Step-level batching: one thread owns the generation engine and advances every
sequence in flight by one token per step; requests join and leave between steps.

The HTTP handlers run on the event loop and never touch the engine. A handler
submits a request and receives its events (text pieces, then the end) on an
``asyncio.Queue``; a client that disconnects cancels its sequences, which frees
their slots at the next step. So one slow client never blocks the others, and 16
concurrent streams share each decode step instead of queueing one behind another.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    """What a sequence produced in one step."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class _Job:
    request: Any
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    seq_id: Any = None
    cancelled: bool = False
    extra: dict = field(default_factory=dict)


class Batcher:
    def __init__(self, engine, max_batch: int = 32):
        self.engine, self.max_batch = engine, max_batch
        self._inbox: queue.Queue = queue.Queue()
        self._active: dict[Any, _Job] = {}
        self._waiting: list[_Job] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fmforge-batcher", daemon=True)
        self._thread.start()

    # --------------------------------------------------------- event-loop side
    def submit(self, request) -> _Job:
        loop = asyncio.get_running_loop()
        job = _Job(request=request, loop=loop, events=asyncio.Queue())
        self._inbox.put(("add", job))
        return job

    def cancel(self, job: _Job) -> None:
        job.cancelled = True
        self._inbox.put(("cancel", job))

    def close(self) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=10)

    @property
    def in_flight(self) -> int:
        return len(self._active) + len(self._waiting)

    # ----------------------------------------------------------- engine thread
    def _emit(self, job: _Job, event: Event) -> None:
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)

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
                elif job.seq_id is not None and job.seq_id in self._active:
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
            except ValueError as exc:  # e.g. a prompt past the context
                self._emit(job, Event(text="", finished=True, finish_reason="error", error=str(exc)))
                continue
            self._active[job.seq_id] = job

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take(block=not self._active and not self._waiting)
            self._admit()
            if not self._active:
                continue
            try:
                results = self.engine.step()
            except Exception as exc:  # noqa: BLE001 - every waiting client must hear of it
                for job in self._active.values():
                    self._emit(job, Event(text="", finished=True, finish_reason="error",
                                          error=f"generation failed: {exc}"))
                    self.engine.cancel(job.seq_id)
                self._active.clear()
                continue
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
