"""The server's wire contract, checked exactly against OpenAI's documented shapes
over raw HTTP: every error body is ``{"error": {"message", "type", "param",
"code"}}`` with the status OpenAI uses; responses and stream chunks carry exactly
OpenAI's keys; ``n`` seeded choices are distinct and each equals the same request
with ``n=1`` and ``seed + i``; usage counts equal the engine's own.

Each test builds its own app (the session server is built once, so only a test
that builds one is run against a bug planted in the app; docs/testing.md)."""

from __future__ import annotations

import json
import logging
import re
import time

import httpx
import openai
import pytest

from fmforge.serve.server import build_app

KEY = "k-contract"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "def alpha("
CHAT_PROMPT = "<|user|>\ndef beta\n<|assistant|>\n"  # the simple template (test_server.py)
CHAT_STOPS = ["<|user|>", "<|system|>"]


@pytest.fixture
def app(trained, running):
    run, model = trained
    app, batcher = build_app(model, "tiny", api_key=KEY, tokenizer_dir=run.tokenizer, max_batch=4)
    try:
        with running(app) as base:
            yield base, batcher, model
    finally:
        batcher.close()


def post(base, path, body=None, headers=AUTH, **kw) -> httpx.Response:
    return httpx.post(base + path, headers=headers, json=body, timeout=30, **kw)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def events_of(r: httpx.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    raw = [e for e in r.text.split("\n\n") if e and not e.startswith(":")]
    assert raw[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in raw)
    return [json.loads(e[6:]) for e in raw[:-1]]


def test_health_and_models_are_exactly_openais_shape_plus_the_context(app):
    base, _, model = app
    assert httpx.get(base + "/health").json() == {"status": "ok", "model": "tiny", "in_flight": 0,
                                                 "decoding": 0, "max_batch": 4, "max_queue": 64,
                                                 "restarts": 0}
    listed = httpx.get(base + "/v1/models", headers=AUTH).json()
    assert listed["object"] == "list" and len(listed["data"]) == 1
    entry = listed["data"][0]
    assert isinstance(entry.pop("created"), int)
    assert entry == {"id": "tiny", "object": "model", "owned_by": "fmforge", "context_length": 64,
                     "max_model_len": 64}
    page = httpx.get(base + "/")  # no key needed outside /v1
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": "nope", "prompt": "x"}),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
])
def test_an_unknown_model_is_openais_404(app, path, body):
    assert error_of(post(app[0], path, body), 404) == {
        "message": "the model 'nope' does not exist; this server has 'tiny'",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Token {KEY}", f"Bearer {KEY}x", "Bearer"])
def test_a_missing_or_wrong_key_is_openais_401(app, header):
    headers = {} if header is None else {"Authorization": header}
    for r in (httpx.get(app[0] + "/v1/models", headers=headers),
              post(app[0], "/v1/completions", {"model": "tiny", "prompt": "x"}, headers=headers)):
        assert error_of(r, 401) == {
            "message": "missing or wrong API key: send 'Authorization: Bearer KEY'",
            "type": "authentication_error", "param": None, "code": "invalid_api_key"}


def test_the_bearer_scheme_is_case_insensitive_and_health_needs_no_key(app):
    assert httpx.get(app[0] + "/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert httpx.get(app[0] + "/v1/models", headers={"Authorization": f"BEARER {KEY}"}).status_code == 200
    assert httpx.get(app[0] + "/health").status_code == 200


def test_body_size_limit_by_header_and_by_bytes_read(app):
    base = app[0]
    declared = error_of(post(base, "/v1/completions", content=b" " * ((1 << 20) + 1)), 413)
    assert declared == {"message": "request body of 1,048,577 bytes is over the limit of 1,048,576",
                        "type": "invalid_request_error", "param": None, "code": "request_too_large"}

    def chunks():  # no Content-Length: the size is only known while reading
        for _ in range(17):
            yield b" " * 65536

    streamed = error_of(post(base, "/v1/completions", content=chunks()), 413)
    assert streamed == {"message": "request body is over the limit of 1,048,576 bytes",
                        "type": "invalid_request_error", "param": None, "code": "request_too_large"}
    # Exactly at the limit is read (and then judged as JSON).
    body = json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 1}).encode()
    at_limit = body + b" " * ((1 << 20) - len(body))
    assert post(base, "/v1/completions", content=at_limit).status_code == 200


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"model": "tiny", "prompt": "x"'])
def test_a_body_that_is_not_json_is_a_400(app, content):
    err = error_of(post(app[0], "/v1/completions", content=content), 400)
    assert err["message"].startswith("the request body is not valid JSON: ")
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", None, None)


def test_a_deeply_nested_body_is_a_400(app):
    err = error_of(post(app[0], "/v1/completions", content=b"[" * 100_000 + b"]" * 100_000), 400)
    assert err["message"] == ("the request body is nested too deeply to parse: send a JSON object of "
                              "the documented parameters")


def test_unknown_paths_and_methods_are_openai_errors(app):
    base = app[0]
    assert error_of(httpx.get(base + "/v1/nothing", headers=AUTH), 404) == {
        "message": "GET /v1/nothing: Not Found", "type": "invalid_request_error", "param": None,
        "code": None}
    assert error_of(httpx.get(base + "/v1/completions", headers=AUTH), 405) == {
        "message": "GET /v1/completions: Method Not Allowed", "type": "invalid_request_error",
        "param": None, "code": None}


def test_a_completion_is_exactly_openais_shape_with_the_engines_text_and_counts(app, greedy):
    base, _, model = app
    t0 = int(time.time())
    r = post(base, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 9,
                                       "temperature": 0, "n": 2})
    t1 = int(time.time())
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "x-dropped-prompt-tokens" not in r.headers
    out = r.json()
    assert set(out) == {"id", "object", "created", "model", "choices", "usage"}
    assert re.fullmatch(r"cmpl-[0-9a-f]{24}", out["id"])
    assert out["object"] == "text_completion" and out["model"] == "tiny" and t0 <= out["created"] <= t1
    ref = greedy(model, PROMPT, 9)
    assert out["choices"] == [{"index": i, "text": ref.text, "finish_reason": ref.finish_reason,
                               "logprobs": None} for i in range(2)]
    prompt_tokens = len(model.tokenizer.encode(PROMPT, add_special_tokens=False).ids)
    assert out["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 2 * ref.completion_tokens,
                            "total_tokens": prompt_tokens + 2 * ref.completion_tokens}


def test_a_chat_completion_is_exactly_openais_shape(app, greedy):
    base, _, model = app
    r = post(base, "/v1/chat/completions", {"model": "tiny", "max_tokens": 7, "temperature": 0,
                                            "messages": [{"role": "user", "content": "def beta"}]})
    out = r.json()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", out["id"]) and out["object"] == "chat.completion"
    ref = greedy(model, CHAT_PROMPT, 7, stop=CHAT_STOPS)
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": ref.text},
                               "finish_reason": ref.finish_reason, "logprobs": None}]
    assert out["usage"]["completion_tokens"] == ref.completion_tokens
    assert out["usage"]["prompt_tokens"] == len(model.tokenizer.encode(CHAT_PROMPT,
                                                                        add_special_tokens=False).ids)


def test_seeded_choices_are_distinct_and_each_is_the_single_request_with_seed_plus_i(app):
    base = app[0]
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
    kw = dict(model="tiny", prompt="def ", max_tokens=12, temperature=1.0)
    several = client.completions.create(n=3, seed=11, **kw)
    texts = [c.text for c in sorted(several.choices, key=lambda c: c.index)]
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert len(set(texts)) == 3, texts
    assert texts == [client.completions.create(n=1, seed=11 + i, **kw).choices[0].text for i in range(3)]
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                          max_tokens=12, temperature=1.0, n=2, seed=4)
    assert [c.message.content for c in chat.choices] == [
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=12, temperature=1.0, n=1, seed=4 + i)
        .choices[0].message.content for i in range(2)]


def test_a_chat_stream_of_two_choices_is_exactly_openais_events(app, greedy):
    base, _, model = app
    r = post(base, "/v1/chat/completions", {"model": "tiny", "max_tokens": 8, "temperature": 0, "n": 2,
                                            "stream": True,
                                            "messages": [{"role": "user", "content": "def beta"}]})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    chunks = events_of(r)
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-[0-9a-f]{24}", ids.pop())
    for c in chunks:
        assert set(c) == {"id", "object", "created", "model", "choices"}
        assert c["object"] == "chat.completion.chunk" and c["model"] == "tiny"
        assert isinstance(c["created"], int) and len(c["choices"]) == 1
        assert set(c["choices"][0]) == {"index", "delta", "finish_reason", "logprobs"}
        assert c["choices"][0]["logprobs"] is None
    # The role chunk of each choice first, before any content.
    assert [c["choices"][0] for c in chunks[:2]] == [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
         "logprobs": None} for i in range(2)]
    ref = greedy(model, CHAT_PROMPT, 8, stop=CHAT_STOPS)
    for i in range(2):
        mine = [c["choices"][0] for c in chunks[2:] if c["choices"][0]["index"] == i]
        *middle, last = mine
        assert all(set(m["delta"]) == {"content"} and m["delta"]["content"] and m["finish_reason"] is None
                   for m in middle)
        assert "".join(m["delta"]["content"] for m in middle) == ref.text
        assert last["delta"] == {} and last["finish_reason"] == ref.finish_reason


def test_a_completion_stream_is_exactly_openais_events(app, greedy):
    base, _, model = app
    r = post(base, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 8,
                                       "temperature": 0, "stream": True})
    chunks = events_of(r)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert all(c["object"] == "text_completion" and c["model"] == "tiny" for c in chunks)
    choices = [c["choices"][0] for c in chunks]
    assert all(set(ch) == {"index", "text", "finish_reason", "logprobs"} and ch["index"] == 0
               for ch in choices)
    ref = greedy(model, PROMPT, 8)
    *middle, last = choices
    assert all(ch["text"] and ch["finish_reason"] is None for ch in middle)
    assert "".join(ch["text"] for ch in middle) == ref.text
    assert last == {"index": 0, "text": "", "finish_reason": ref.finish_reason, "logprobs": None}


def test_truncation_auto_headers_name_what_was_dropped(app):
    base = app[0]
    r = post(base, "/v1/completions", {"model": "tiny", "prompt": "word " * 100, "max_tokens": 4,
                                       "truncation": "auto"})
    assert r.status_code == 200 and int(r.headers["x-dropped-prompt-tokens"]) > 0
    assert "x-dropped-messages" not in r.headers
    c = post(base, "/v1/chat/completions", {"model": "tiny", "max_tokens": 4, "truncation": "auto",
                                            "messages": [{"role": "user", "content": "x"}]})
    assert c.status_code == 200 and c.headers["x-dropped-messages"] == "0"
    assert "x-dropped-prompt-tokens" not in c.headers
    plain = post(base, "/v1/chat/completions", {"model": "tiny", "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "x"}]})
    assert "x-dropped-messages" not in plain.headers


def test_no_interactive_docs_pages_and_the_schema_names_the_server(app):
    base = app[0]
    for path in ("/docs", "/redoc"):
        assert error_of(httpx.get(base + path), 404)["message"] == f"GET {path}: Not Found"
    assert httpx.get(base + "/openapi.json").json()["info"]["title"] == "fmforge"


@pytest.fixture
def own(trained, running):
    """``own(patch) -> base_url``: an app over a backend and batcher that ``patch(backend,
    batcher)`` may alter first (no key)."""
    from fmforge.serve.app import create_app
    from fmforge.serve.backend import EngineBackend
    from fmforge.serve.batcher import Batcher

    run, model = trained
    import contextlib

    with contextlib.ExitStack() as stack:
        def start(patch):
            backend = EngineBackend(model, "tiny", max_batch=2, tokenizer_dir=run.tokenizer)
            batcher = Batcher(backend.engine, max_batch=2)
            stack.callback(batcher.close)
            patch(backend, batcher)
            return stack.enter_context(running(create_app(backend, batcher)))
        yield start


def test_a_failure_of_the_server_before_generating_is_a_500_logged_with_its_path(own, caplog):
    def patch(backend, batcher):
        def broken(*args):
            raise RuntimeError("tokenizer broke")
        backend.prepare_prompt = broken

    base = own(patch)
    with caplog.at_level(logging.ERROR, logger="fmforge.serve"):
        r = post(base, "/v1/completions", {"model": "tiny", "prompt": "x"}, headers={})
    err = error_of(r, 500)
    assert err["type"] == "server_error" and err["param"] is None and err["code"] is None
    assert err["message"].startswith("the server failed: RuntimeError: tokenizer broke")
    [record] = [r for r in caplog.records if r.name == "fmforge.serve"]
    assert record.getMessage() == "POST /v1/completions failed"
    assert record.exc_info and "tokenizer broke" in str(record.exc_info[1])


def test_a_bug_of_ours_mid_stream_is_an_error_event_then_done_and_logged(own, caplog):
    def patch(backend, batcher):
        submit = batcher.submit

        def with_a_bad_event(requests):
            jobs = submit(requests)
            for job in jobs:
                job.events.put_nowait(object())  # not an Event: the stream's own code fails on it
            return jobs
        batcher.submit = with_a_bad_event

    base = own(patch)
    with caplog.at_level(logging.ERROR, logger="fmforge.serve"):
        r = post(base, "/v1/completions", {"model": "tiny", "prompt": "x", "stream": True}, headers={})
    assert r.status_code == 200
    raw = [e for e in r.text.split("\n\n") if e]
    assert raw[-1] == "data: [DONE]" and len(raw) == 2
    # An SSE field name is case-sensitive: anything but "data: " is ignored by clients.
    assert raw[0].startswith("data: {")
    err = json.loads(raw[0].removeprefix("data: "))["error"]
    assert err["type"] == "server_error" and err["message"].startswith("the stream failed: AttributeError")
    [record] = [r for r in caplog.records if r.name == "fmforge.serve"]
    assert record.getMessage() == "a stream failed"
    assert record.exc_info and record.exc_info[0] is AttributeError  # the traceback is logged


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b'"text"'])
def test_an_empty_or_non_object_body_is_a_400_that_asks_for_an_object(app, content):
    """An empty body is not a JSON syntax error of the client's: it is a missing
    object, and the answer says what to send."""
    err = error_of(post(app[0], "/v1/completions", content=content), 400)
    assert err["message"] == "the request body must be a JSON object"
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", None, None)
