"""The server when the engine fails, the queue is full, a client hangs up or a
prefill is long: every request gets an answer (never a hang), failures are 500s
in OpenAI's shape and logged with their traceback, the generation worker comes
back after a failure, and a worker that cannot come back stops the server.

Each test runs its own small server over a FaultyEngine (conftest.py): the real
engine, with failures or slowness injected where the test says."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time

import httpx
import openai
import pytest

from fmforge.serve.server import build_app

# A prompt the tiny model continues to max_tokens greedily (checked where it matters).
PROMPT = "def alpha("


@pytest.fixture
def served(trained, running, faulty):
    """``served(**build_app options) -> (base_url, batcher, engine)``: a fresh server
    (no key, 4 sequences decoded together) over a FaultyEngine."""
    run, model = trained
    with contextlib.ExitStack() as stack:
        def start(**options):
            options.setdefault("max_batch", 4)
            app, batcher = build_app(model, "tiny", tokenizer_dir=run.tokenizer, **options)
            stack.callback(batcher.close)
            engine = batcher.engine = faulty(batcher.engine)
            return stack.enter_context(running(app)), batcher, engine
        yield start


def body(**kw) -> dict:
    return {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, **kw}


def assert_server_error(response: httpx.Response, injected: str) -> None:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    assert injected in error["message"]


def assert_logged(caplog, injected: str) -> None:
    """The failure is in the server's log with its traceback."""
    records = [r for r in caplog.records if r.exc_info and injected in str(r.exc_info[1])]
    assert records, f"no log record with a traceback of {injected!r}: {caplog.text}"
    assert records[0].levelno >= logging.ERROR
    assert "Traceback" in caplog.text


def assert_serves(base: str, model, greedy) -> None:
    """A normal request afterwards gets the engine's own answer."""
    r = httpx.post(base + "/v1/completions", json=body(), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == greedy(model, PROMPT, 8).text
    health = httpx.get(base + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def sequences(engine) -> int:
    """Sequences the engine holds, waiting for their prefill or decoding."""
    return len(engine.waiting) + len(engine.running)


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.01)
    return True


# ------------------------------------------------------------ engine failures

def test_a_failure_admitting_a_request_is_a_logged_500_and_the_server_keeps_serving(
        served, trained, greedy, caplog):
    caplog.set_level(logging.ERROR)
    base, _, engine = served()
    engine.fail["add"] = 1
    r = httpx.post(base + "/v1/completions", json=body(), timeout=5)
    assert_server_error(r, "injected add failure")
    assert_logged(caplog, "injected add failure")
    assert_serves(base, trained[1], greedy)


def test_a_failing_step_is_a_logged_500_for_every_request_in_flight_or_waiting(
        served, trained, greedy, caplog):
    caplog.set_level(logging.ERROR)
    base, batcher, engine = served(max_batch=1)  # one request decoding, the other waiting
    engine.pause()  # both requests in before the step that fails

    async def two_requests():
        async with httpx.AsyncClient(timeout=5) as client:
            whole = asyncio.create_task(client.post(base + "/v1/completions", json=body(max_tokens=40)))
            streamed = asyncio.create_task(client.post(
                base + "/v1/chat/completions", json={
                    "model": "tiny", "messages": [{"role": "user", "content": "def"}],
                    "max_tokens": 40, "temperature": 0, "stream": True}))
            assert await asyncio.to_thread(
                wait_until, lambda: batcher.in_flight == 2 and sequences(engine) == 1)
            engine.fail["step"] = 1
            engine.resume()
            return await whole, await streamed

    whole, streamed = asyncio.run(two_requests())
    assert_server_error(whole, "injected step failure")
    # The stream had begun (status 200, the role chunk): the error is its last event before [DONE].
    events = [e for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "injected step failure" in error["message"]
    assert_logged(caplog, "injected step failure")
    assert_serves(base, trained[1], greedy)


def test_a_stream_of_two_choices_where_one_fails_still_carries_the_other_to_its_end(
        served, trained, greedy):
    """n=2, streamed: admitting one choice fails (an error event for it), the other
    choice streams its whole text and its finish_reason before [DONE] (app mutant
    create_app 436, `continue` → `break` after an error event, cut the survivor off)."""
    base, _, engine = served()
    engine.fail["add"] = 1
    expected = greedy(trained[1], PROMPT, 8).text
    r = httpx.post(base + "/v1/completions", json=body(stream=True, n=2), timeout=10)
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    errors = [d for d in data if "error" in d]
    assert len(errors) == 1 and "injected add failure" in errors[0]["error"]["message"]
    chunks = [d["choices"][0] for d in data if "choices" in d]
    assert len({c["index"] for c in chunks}) == 1  # the failed choice has no text chunks
    assert "".join(c["text"] for c in chunks) == expected
    assert chunks[-1]["finish_reason"] == "length"


def test_the_official_client_raises_on_a_stream_that_fails(served):
    base, _, engine = served()
    engine.fail["step"] = 1
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=5)
    with pytest.raises(openai.APIError, match="injected step failure"):
        for _ in client.completions.create(**body(), stream=True):
            pass


def test_a_failure_freeing_a_slot_fails_the_requests_in_flight_and_the_worker_restarts(
        served, trained, greedy, caplog):
    """Before: the batcher thread died in engine.cancel, and every request after it hung."""
    caplog.set_level(logging.ERROR)
    base, batcher, engine = served()
    engine.pause()
    outcome = {}
    other = threading.Thread(target=lambda: outcome.update(r=httpx.post(
        base + "/v1/completions", json=body(max_tokens=40), timeout=5)))
    other.start()
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=chat, timeout=5) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)  # the role chunk: the stream has begun
        assert wait_until(lambda: sequences(engine) == 2)
        engine.fail["cancel"] = 1
    # hung up: freeing its slot fails, and so does the request still in flight
    other.join(timeout=10)
    assert not other.is_alive()
    assert_server_error(outcome["r"], "injected cancel failure")
    assert_logged(caplog, "injected cancel failure")
    engine.resume()
    assert_serves(base, trained[1], greedy)
    assert not engine.has_work() and batcher.in_flight == 0 and batcher.restarts == 1


@pytest.mark.parametrize("fail,served_before", [
    ({"step": 10**9}, 3),  # every step fails: three in a row and the worker gives up
    ({"step": 1, "cancel": 10**9}, 1),  # the failed sequences cannot be dropped: the engine is unusable
], ids=["repeated-step-failures", "engine-cannot-be-reset"])
def test_a_worker_that_cannot_recover_turns_health_503_and_asks_to_stop(served, fail, served_before):
    stops = []
    base, _, engine = served(on_fatal=stops.append)
    engine.fail.update(fail)
    for _ in range(served_before):
        assert_server_error(httpx.post(base + "/v1/completions", json=body(), timeout=5), "injected")
    assert wait_until(lambda: stops)
    health = httpx.get(base + "/health", timeout=5)
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "injected" in health.json()["reason"]
    r = httpx.post(base + "/v1/completions", json=body(), timeout=5)
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "worker_stopped"
    assert len(stops) == 1 and "injected" in stops[0]


def test_fmforge_serve_exits_with_an_error_when_the_worker_gives_up(trained):
    from fmforge.inference.loading import load_trained
    from fmforge.serve.server import WorkerFailed, serve

    run, _ = trained
    broken = load_trained(run, device="cpu")  # its own copy: the shared model stays intact

    def embed(*args, **kwargs):  # every forward of the engine's starts with the embedding
        raise RuntimeError("injected device failure")

    broken.model.embed.forward = embed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = {}

    def target():
        try:
            serve(broken, "tiny", port=port, tokenizer_dir=run.tokenizer)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what serve() raised
            outcome["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(base + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, timeout=30)
    for _ in range(3):
        assert_server_error(httpx.post(base + "/v1/completions", json=body(), timeout=5),
                            "injected device failure")
    thread.join(timeout=15)
    assert not thread.is_alive(), "serve() kept running after its worker gave up"
    assert isinstance(outcome.get("exc"), WorkerFailed)
    assert "injected device failure" in str(outcome["exc"])


# ------------------------------------------------------------------ capacity

def test_a_full_queue_answers_429_with_retry_after(served, trained, greedy):
    base, batcher, engine = served(max_batch=2, max_queue=1)
    engine.pause()
    with contextlib.ExitStack() as streams:
        for _ in range(3):  # two decoding, one waiting: full
            r = streams.enter_context(httpx.stream(
                "POST", base + "/v1/completions", json=body(max_tokens=40, stream=True), timeout=5))
            assert r.status_code == 200
        full = httpx.post(base + "/v1/completions", json=body(), timeout=5)
        assert full.status_code == 429
        assert int(full.headers["retry-after"]) >= 1
        error = full.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "queue_full" and "--max-queue" in error["message"]
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=5)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
        health = httpx.get(base + "/health", timeout=5).json()
        assert (health["in_flight"], health["decoding"]) == (3, 2)
    # the three hung up: their slots are free again
    assert wait_until(lambda: httpx.get(base + "/health", timeout=5).json()["in_flight"] == 0)
    engine.resume()
    assert_serves(base, trained[1], greedy)


def test_more_choices_than_the_server_runs_at_once_is_a_400(served):
    base, _, _ = served(max_batch=2, max_queue=1)
    r = httpx.post(base + "/v1/completions", json=body(n=4), timeout=5)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "n" and "3" in error["message"]


# ------------------------------------------------------------------- hang-ups

def test_a_non_streaming_client_that_hangs_up_frees_its_slot(served, trained, greedy):
    base, batcher, engine = served()
    assert greedy(trained[1], PROMPT, 50).finish_reason == "length"  # it would run all 50 steps
    engine.delay = 0.05  # 50 tokens: at least 2.5 s
    start = time.time()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/completions", json=body(max_tokens=50), timeout=0.4)
    assert wait_until(lambda: not engine.has_work() and batcher.in_flight == 0, timeout=1.5)
    assert time.time() - start < 2.0, "the slot was only freed when generation ended"
    assert httpx.get(base + "/health", timeout=5).json()["in_flight"] == 0
    steps = engine.steps
    time.sleep(0.2)
    assert engine.steps == steps  # nothing left to decode


def test_a_non_streaming_client_that_hangs_up_while_waiting_frees_its_slot(served):
    base, batcher, engine = served()
    engine.pause()  # the request would never finish: only the hang-up can free its slot
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/completions", json=body(max_tokens=50), timeout=0.4)
    assert wait_until(lambda: not engine.has_work() and batcher.in_flight == 0)
    assert httpx.get(base + "/health", timeout=5).json()["in_flight"] == 0


# ------------------------------------------------------------------ keep-alive

def test_a_long_prefill_sends_keep_alive_comments_that_clients_ignore(served, trained, greedy):
    base, _, engine = served(keepalive_s=0.05)
    expected = greedy(trained[1], PROMPT, 8).text
    engine.pause()  # a prefill that lasts until the client has seen three keep-alives
    text = ""
    with httpx.stream("POST", base + "/v1/completions", json=body(stream=True), timeout=5) as r:
        for piece in r.iter_text():
            text += piece
            if text.count(": keep-alive\n\n") == 3:
                engine.resume()
    events = [e for e in text.split("\n\n") if e]
    assert events[:3] == [": keep-alive"] * 3  # bytes before the first token
    data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert "".join(d["choices"][0]["text"] for d in data) == expected
    assert events[-1] == "data: [DONE]"

    engine.pause()
    threading.Timer(0.3, engine.resume).start()
    client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=5)
    chunks = list(client.completions.create(**body(), stream=True))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_with_keep_alive_off_a_slow_stream_carries_no_comments(served, trained, greedy):
    """`--stream-keepalive 0` turns the comments off: a stream waiting on a long prefill
    sends nothing until its first token, then exactly the events."""
    base, _, engine = served(keepalive_s=0)
    expected = greedy(trained[1], PROMPT, 8).text
    engine.pause()
    threading.Timer(0.3, engine.resume).start()
    r = httpx.post(base + "/v1/completions", json=body(stream=True), timeout=5)
    events = [e for e in r.text.split("\n\n") if e]
    assert not [e for e in events if e.startswith(":")]
    data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert "".join(d["choices"][0]["text"] for d in data) == expected and events[-1] == "data: [DONE]"


# --------------------------------------------------------------- the event loop

class SlowTokenizer:
    """A tokenizer that takes a second over any text holding 'SLOW'."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, text, *args, **kwargs):
        if "SLOW" in text:
            time.sleep(1.0)
        return self._tokenizer.encode(text, *args, **kwargs)


@pytest.mark.parametrize("path,payload", [
    ("/v1/completions", {"prompt": "SLOW"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "SLOW"}]}),
])
def test_a_slow_tokenization_does_not_hold_up_other_requests(trained, running, path, payload):
    run, model = trained
    slow = dataclasses.replace(model, tokenizer=SlowTokenizer(model.tokenizer))
    app, batcher = build_app(slow, "tiny", tokenizer_dir=run.tokenizer, max_batch=2)
    try:
        with running(app) as base:
            outcome = {}
            request = threading.Thread(target=lambda: outcome.update(r=httpx.post(
                base + path, json={"model": "tiny", "max_tokens": 2, **payload}, timeout=10)))
            request.start()
            time.sleep(0.2)  # the slow request is being tokenized
            start = time.perf_counter()
            assert httpx.get(base + "/health", timeout=5).status_code == 200
            waited = time.perf_counter() - start
            request.join(timeout=10)
            assert outcome["r"].status_code == 200
            assert waited < 0.4, f"/health waited {waited:.2f} s behind another request's tokenization"
    finally:
        batcher.close()
