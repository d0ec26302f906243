"""The batcher against a scripted engine (no model): each request is a list of text
pieces, one per step, so what every job must receive is known in advance. Checks
what a client of the batcher sees: the events of a job in order with the token
counts of the last one, at most ``max_batch`` sequences decoding, the exact 400,
429 and 503 errors of admission, cancellation freeing a slot, and the supervised
worker: a failing step is a 500 for every job, ``max_failures`` failures in a row
(and only in a row) make it give up, once, calling ``on_fatal``."""

from __future__ import annotations

import asyncio
import os
import logging
import threading
import time

import pytest

from fmforge.inference.engine import GenerationResult, StepOutput
from fmforge.serve.batcher import Batcher

WAIT = 5.0


class ScriptedEngine:
    """``add({"pieces": [...]})``: the sequence yields one piece per step and finishes
    with "length" on its last one (prompt_tokens 3, completion_tokens = len(pieces)).
    ``{"refuse": msg}`` makes ``add`` raise ValueError(msg), ``{"boom": True}`` KeyError.
    ``fail_steps``: that many next steps raise RuntimeError("step broke");
    ``step_exc``: the exception the next step raises instead; ``stuck``: has_work stays
    True; while ``paused`` a step produces nothing."""

    def __init__(self):
        self.running: dict[int, list[str]] = {}
        self.added: list[dict] = []
        self.cancelled: list[int] = []
        self.peak = 0
        self.next_id = 100
        self.fail_steps = 0
        self.step_exc: BaseException | None = None
        self.stuck = False
        self.paused = threading.Event()
        self.gate: threading.Event | None = None
        self.in_step = threading.Event()  # set: the next step waits for it, then fails
        self.ghosts = 0  # that many next steps first report a piece of a sequence never added

    def add(self, request):
        if "refuse" in request:
            raise ValueError(request["refuse"])
        if "boom" in request:
            raise KeyError("boom")
        self.added.append(request)
        sid, self.next_id = self.next_id, self.next_id + 1
        self.running[sid] = list(request["pieces"])
        self.peak = max(self.peak, len(self.running))
        return sid

    def step(self):
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.in_step.set()
            gate.wait(WAIT)
            raise RuntimeError("step broke")
        if self.step_exc is not None:
            exc, self.step_exc = self.step_exc, None
            raise exc
        if self.fail_steps:
            self.fail_steps -= 1
            raise RuntimeError("step broke")
        if self.paused.is_set():
            time.sleep(0.002)
            return []
        out = []
        if self.ghosts:
            self.ghosts -= 1
            out.append(StepOutput(1, "ghost", False, None, None))
        for sid, pieces in list(self.running.items()):
            text = pieces.pop(0)
            done = not pieces
            result = None
            if done:
                del self.running[sid]
                n = len(self.added[sid - 100]["pieces"])
                result = GenerationResult(text="", token_ids=[], finish_reason="length",
                                          prompt_tokens=3, completion_tokens=n)
            out.append(StepOutput(sid, text, done, "length" if done else None, result))
        return out

    def cancel(self, sid):
        self.cancelled.append(sid)
        self.running.pop(sid, None)
        return True

    def has_work(self):
        return self.stuck or bool(self.running)


@pytest.fixture
def make():
    made = []

    def build(**kw):
        engine = ScriptedEngine()
        b = Batcher(engine, **kw)
        made.append(b)
        return b, engine

    yield build
    for b in made:
        b.close()


async def drain(job) -> list:
    events = []
    while True:
        event = await asyncio.wait_for(job.events.get(), WAIT)
        events.append(event)
        if event.finished:
            return events


async def until(cond, what: str) -> None:
    deadline = time.time() + WAIT
    while not cond():
        assert time.time() < deadline, what
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("kw", [dict(max_batch=0), dict(max_queue=-1), dict(max_failures=0)])
def test_impossible_limits_are_refused(kw):
    with pytest.raises(ValueError, match="max_batch must be >= 1, max_queue >= 0 and max_failures >= 1"):
        Batcher(ScriptedEngine(), **kw)


def test_the_smallest_limits_are_allowed(make):
    b, _ = make(max_batch=1, max_queue=0, max_failures=1)
    assert b.capacity == 1 and b.failed is None and b.restarts == 0


def test_a_job_gets_its_pieces_in_order_and_the_counts_on_the_last_event(make):
    b, engine = make(max_batch=2)

    async def go():
        [job] = b.submit([{"pieces": ["he", "ll", "o"]}])
        assert b.in_flight == 1
        events = await drain(job)
        # the worker lets go of a finished sequence just after sending its last event
        await until(lambda: b.decoding == 0, "the finished job still decoding")
        return events

    events = asyncio.run(go())
    assert [e.text for e in events] == ["he", "ll", "o"]
    assert [e.finished for e in events] == [False, False, True]
    assert [e.finish_reason for e in events] == [None, None, "length"]
    assert [(e.prompt_tokens, e.completion_tokens) for e in events] == [(0, 0), (0, 0), (3, 3)]
    assert all(e.error is None for e in events)
    assert b.in_flight == 0 and b.decoding == 0
    assert engine.cancelled == []


def test_at_most_max_batch_decode_and_every_job_finishes(make):
    b, engine = make(max_batch=2, max_queue=5)

    async def go():
        jobs = b.submit([{"pieces": [f"{i}a", f"{i}b"]} for i in range(5)])
        assert b.in_flight == 5
        return [await drain(j) for j in jobs]

    results = asyncio.run(go())
    assert ["".join(e.text for e in events) for events in results] == [f"{i}a{i}b" for i in range(5)]
    assert engine.peak == 2, "max_batch is 2: never more decoding at once, and 2 when 5 wait"
    assert b.in_flight == 0


def test_admission_errors_are_exact(make):
    b, engine = make(max_batch=1, max_queue=1)
    engine.paused.set()

    async def go():
        with pytest.raises(Exception) as too_many:
            b.check_capacity(3)
        err = too_many.value
        assert (err.status, err.param, err.code, err.type) == (400, "n", None, "invalid_request_error")
        assert err.message == ("n: 3 choices are more sequences than this server runs at once "
                               "(2: --max-batch 1 decoding plus --max-queue 1 waiting)")
        b.check_capacity(2)  # exactly the capacity: allowed
        [first] = b.submit([{"pieces": ["a"]}])
        b.check_capacity(1)  # one open + one = capacity: allowed
        [second] = b.submit([{"pieces": ["b"]}])
        await until(lambda: b.decoding == 1, "the first job was not admitted")
        assert b.in_flight == 2
        with pytest.raises(Exception) as full:
            b.submit([{"pieces": ["c"]}])
        err = full.value
        assert (err.status, err.param, err.code, err.type) == (429, None, "queue_full", "rate_limit_error")
        assert err.headers == {"Retry-After": "1"}
        assert err.message == ("the server is at capacity: 2 sequences in flight, 1 decoding at once "
                               "(--max-batch) and up to 1 waiting (--max-queue); retry after 1 s")
        assert len(engine.added) == 1, "the refused request reached the engine"
        engine.paused.clear()
        assert [e.text for e in await drain(first)] == ["a"]
        assert [e.text for e in await drain(second)] == ["b"]
        b.check_capacity(2)  # both slots free again

    asyncio.run(go())


def test_cancelling_frees_the_slot_and_a_waiting_job_is_never_started(make):
    b, engine = make(max_batch=1, max_queue=4)
    engine.paused.set()

    async def go():
        running, waiting, after = b.submit([{"pieces": ["r1", "r2"]}, {"pieces": ["w"]},
                                            {"pieces": ["x", "y"]}])
        await until(lambda: b.decoding == 1, "nothing admitted")
        b.cancel(waiting)
        b.cancel(running)
        assert b.in_flight == 1 and running.cancelled and waiting.cancelled
        engine.paused.clear()
        events = await drain(after)
        assert "".join(e.text for e in events) == "xy"
        b.cancel(after)  # finished: a no-op
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert [r["pieces"] for r in engine.added] == [["r1", "r2"], ["x", "y"]]
    assert engine.cancelled == [100], "the running sequence is cancelled in the engine, nothing else"
    assert b.in_flight == 0 and b.decoding == 0


def test_a_refused_request_is_a_400_and_a_failing_add_a_500_the_others_go_on(make):
    b, engine = make(max_batch=4)

    async def go():
        refused, boom, fine = b.submit([{"refuse": "the prompt is 99 tokens, past 64"}, {"boom": True},
                                        {"pieces": ["ok"]}])
        return await drain(refused), await drain(boom), await drain(fine)

    refused, boom, fine = asyncio.run(go())
    [r] = refused
    assert (r.finished, r.finish_reason, r.text) == (True, "error", "")
    assert (r.error.status, r.error.message, r.error.type) == (400, "the prompt is 99 tokens, past 64",
                                                               "invalid_request_error")
    [e] = boom
    assert (e.finished, e.finish_reason, e.error.status, e.error.type) == (True, "error", 500, "server_error")
    assert e.error.message.startswith("admitting the request failed: KeyError: 'boom'")
    assert [x.text for x in fine] == ["ok"] and fine[-1].error is None
    assert b.in_flight == 0 and b.restarts == 0


def test_a_failing_step_fails_every_job_and_the_worker_restarts(make):
    b, engine = make(max_batch=1, max_queue=3)

    async def go():
        engine.paused.set()
        jobs = b.submit([{"pieces": ["a", "b"]}, {"pieces": ["c"]}])
        await until(lambda: b.decoding == 1, "nothing admitted")
        engine.fail_steps = 1
        engine.paused.clear()
        failed = [await drain(j) for j in jobs]
        await until(lambda: b.restarts == 1, "no restart after answering")
        [after] = b.submit([{"pieces": ["z"]}])
        return failed, await drain(after)

    failed, after = asyncio.run(go())
    for events in failed:  # decoding and waiting alike
        last = events[-1]
        assert (last.finished, last.finish_reason, last.error.status) == (True, "error", 500)
        assert last.error.message.startswith("generation failed: RuntimeError: step broke")
    assert engine.cancelled == [100], "the failed sequence is dropped from the engine"
    assert [e.text for e in after] == ["z"]
    assert b.restarts == 1 and b.failed is None and b.in_flight == 0


def test_a_request_submitted_during_a_failing_step_is_answered_too(make):
    b, engine = make(max_batch=2)
    gate = engine.gate = threading.Event()

    async def go():
        [running] = b.submit([{"pieces": ["a", "b"]}])
        await until(engine.in_step.is_set, "the step did not start")
        [late] = b.submit([{"pieces": ["c"]}])  # still in the inbox when the step fails
        gate.set()
        answers = (await drain(running))[-1], (await drain(late))[-1]
        await until(lambda: b.restarts == 1, "no restart after answering")  # counted after the answers
        return answers

    first, late = asyncio.run(go())
    assert first.error.status == 500
    assert late.error.status == 500 and late.error.message.startswith("generation failed: RuntimeError")
    assert b.in_flight == 0 and b.restarts == 1


def test_max_failures_in_a_row_give_up_once_and_refuse_with_503(make, caplog):
    caplog.set_level(logging.WARNING, logger="fmforge.serve")
    reasons = []
    b, engine = make(max_batch=2, max_failures=2, on_fatal=reasons.append)

    async def go():
        engine.fail_steps = 1
        [a] = b.submit([{"pieces": ["a"]}])
        assert (await drain(a))[-1].error.status == 500
        await until(lambda: b.restarts == 1, "no restart after the first failure")
        assert b.failed is None
        engine.fail_steps = 1
        [c] = b.submit([{"pieces": ["c"]}])
        assert (await drain(c))[-1].error.status == 500
        await until(lambda: b.failed is not None, "the worker did not give up")
        with pytest.raises(Exception) as stopped:
            b.submit([{"pieces": ["d"]}])
        await until(lambda: reasons, "on_fatal was not called")  # called after `failed` is set
        return stopped.value

    err = asyncio.run(go())
    assert b.restarts == 1
    assert b.failed == "2 failures in a row with no successful step, the last RuntimeError: step broke"
    assert reasons == [b.failed]
    logged = [r.getMessage() for r in caplog.records]  # the log reads whole (its arguments given)
    assert "the generation worker restarted (restart 1)" in logged
    assert any(b.failed in m and m.startswith("the generation worker gave up: ") for m in logged)
    assert (err.status, err.code, err.type) == (503, "worker_stopped", "server_error")
    assert err.message == (f"the generation worker has stopped ({b.failed}); the server is shutting "
                           "down so that its supervisor starts it afresh")


def test_a_successful_step_resets_the_failure_count(make):
    b, engine = make(max_batch=2, max_failures=2)

    async def go():
        for _ in range(3):
            engine.fail_steps = 1
            [j] = b.submit([{"pieces": ["x"]}])
            assert (await drain(j))[-1].error.status == 500
            [ok] = b.submit([{"pieces": ["y"]}])
            assert [e.text for e in await drain(ok)] == ["y"]

    asyncio.run(go())
    assert b.failed is None and b.restarts == 3


def test_an_engine_that_cannot_be_emptied_gives_up(make, caplog):
    caplog.set_level(logging.WARNING, logger="fmforge.serve")
    reasons = []
    b, engine = make(max_batch=2, max_failures=5, on_fatal=reasons.append)
    engine.stuck = True

    async def go():
        engine.fail_steps = 1
        [j] = b.submit([{"pieces": ["x"]}])
        assert (await drain(j))[-1].error.status == 500
        await until(lambda: reasons, "the worker did not give up")

    asyncio.run(go())
    assert b.failed == ("after RuntimeError: step broke, the engine could not be reset (RuntimeError: the "
                        "engine still holds sequences after every one was cancelled)")
    assert reasons == [b.failed] and b.restarts == 0
    # the operator's log has why, with the traceback of the failed reset
    [record] = [r for r in caplog.records if r.getMessage() == "the engine could not drop the failed sequences"]
    assert record.exc_info and record.exc_info[0] is RuntimeError


def test_a_base_exception_gives_up_at_once_and_a_failing_on_fatal_still_refuses(make, caplog):
    def on_fatal(reason):
        raise OSError("cannot signal")

    b, engine = make(max_batch=2, max_failures=5, on_fatal=on_fatal)
    engine.step_exc = SystemExit("bye")

    async def go():
        [j] = b.submit([{"pieces": ["x"]}])
        last = (await drain(j))[-1]
        assert last.error.status == 500
        await until(lambda: b.failed is not None, "the worker did not give up")
        with pytest.raises(Exception) as stopped:
            b.check_capacity(1)
        # the worker sets `failed` before it calls on_fatal and logs that failure
        await until(lambda: any(r.exc_info and r.exc_info[0] is OSError for r in caplog.records),
                    "on_fatal's failure was not logged")
        return stopped.value

    err = asyncio.run(go())
    assert b.failed == "SystemExit: bye"
    [record] = [r for r in caplog.records if r.exc_info and r.exc_info[0] is OSError]
    assert record.getMessage() == "on_fatal failed"
    assert err.status == 503 and b.restarts == 0


def test_an_idle_batcher_sleeps_instead_of_spinning(make):
    b, _ = make(max_batch=2)
    time.sleep(0.1)
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(0.6)
    used = (time.process_time() - cpu) / (time.perf_counter() - wall)
    assert used < 0.1, f"an idle batcher used {used:.0%} of a core"


def test_cancelling_a_job_that_finished_before_its_events_arrived_is_harmless(make):
    b, engine = make(max_batch=2)

    async def go():
        [job] = b.submit([{"pieces": ["a"]}])
        time.sleep(0.3)  # the loop does not run: the job finishes, its events wait for delivery
        assert not engine.running, "the one-step job did not finish in time"
        b.cancel(job)  # what a client hanging up at that moment does
        [after] = b.submit([{"pieces": ["z"]}])
        return await drain(after)

    after = asyncio.run(go())
    assert [e.text for e in after] == ["z"] and after[-1].error is None
    assert engine.cancelled == [] and b.restarts == 0 and b.failed is None


def test_a_result_for_a_sequence_the_batcher_does_not_hold_is_skipped_and_the_rest_delivered(make):
    """An engine may report a sequence the batcher no longer holds (one cancelled
    while the step ran): its piece goes nowhere, and every other job of that step
    still gets its own."""
    b, engine = make(max_batch=2)

    async def go():
        engine.paused.set()
        a, c = b.submit([{"pieces": ["a1", "a2"]}, {"pieces": ["c1"]}])
        await until(lambda: b.decoding == 2, "both jobs decoding")
        engine.ghosts = 1
        engine.paused.clear()
        return await drain(a), await drain(c)

    events_a, events_c = asyncio.run(go())
    assert [e.text for e in events_a] == ["a1", "a2"] and [e.text for e in events_c] == ["c1"]


def test_a_request_that_slips_in_as_the_worker_gives_up_gets_a_503_not_a_hang(make, monkeypatch):
    """A request that passed the capacity check a moment before the worker gave up
    is already in the queue: it must be answered with the 503, and never run."""
    b, engine = make(max_batch=2, max_failures=1)

    async def go():
        engine.fail_steps = 1
        [j] = b.submit([{"pieces": ["x"]}])
        assert (await drain(j))[-1].error.status == 500
        await until(lambda: b.failed is not None, "the worker did not give up")
        monkeypatch.setattr(b, "check_capacity", lambda n: None)  # the check ran before the give-up
        late = b.submit([{"pieces": ["late"]}, {"pieces": ["later"]}])
        return [await drain(job) for job in late]

    answers = asyncio.run(go())
    for events in answers:
        [event] = events
        assert event.finished and event.text in ("", None)
        assert (event.error.status, event.error.code) == (503, "worker_stopped")
        assert b.failed in event.error.message
    assert [r["pieces"] for r in engine.added] == [["x"]]  # the late requests never reached the engine
    b.close()
    assert not b._thread.is_alive()  # close() ends the refusing worker


def test_a_program_that_never_closes_its_batcher_still_exits(tmp_path):
    """The batcher's worker thread must not keep the interpreter alive: a server
    that fails on its way out without closing the batcher still ends (issue 23's
    survivors `__init__` 29 and 32 made the thread non-daemon: the process hung).
    The child imports the same fmforge this test did, so a mutant reaches it."""
    import subprocess
    import sys
    from pathlib import Path

    import fmforge

    script = tmp_path / "forget.py"
    script.write_text("from fmforge.serve.batcher import Batcher\n"
                      "batcher = Batcher(engine=object())\n"
                      "print('started', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(fmforge.__file__).parents[1])}
    try:
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: the batcher's worker thread kept it alive")
    assert done.returncode == 0 and done.stdout == "started\n", done.stderr[-2000:]
