"""The server under hostile input and load: malformed bodies, parameters and
headers each get a 4xx in OpenAI's error shape (never a 500, never a hang); 64
concurrent streams all complete with the engine's own text; clients that hang up
mid-stream free their slots; and a stream's events are exactly what OpenAI's
wire format says, read as raw HTTP and through the official client."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import httpx
import openai
import pytest

KEY = "test-key"  # the shared server's (conftest.py)
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 64  # the tiny model's seq_len (conftest.py)


OK = {"model": "tiny", "prompt": "x", "max_tokens": 2}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
NESTED = b'{"model": "tiny", "prompt": "x", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

# (id, method, path, body: dict (JSON), bytes (raw) or a function returning a fresh one per run,
#  headers (None: the key), status, param, code)
# A param or code of ... is not checked; None must be null.
CASES = [
    # bodies that are not a JSON object
    ("not-json", "POST", "/v1/completions", b"{not json", None, 400, None, None),
    ("truncated-json", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x"', None, 400, None, None),
    ("json-array", "POST", "/v1/completions", b"[1, 2]", None, 400, None, None),
    ("json-string", "POST", "/v1/completions", b'"hello"', None, 400, None, None),
    ("json-null", "POST", "/v1/completions", b"null", None, 400, None, None),
    ("empty-body", "POST", "/v1/chat/completions", b"", None, 400, None, None),
    ("not-utf8", "POST", "/v1/completions", b'{"model": "\xff\xfe", "prompt": "x"}', None, 400, None, None),
    ("nested-100k-deep", "POST", "/v1/completions", NESTED, None, 400, None, None),
    ("too-large", "POST", "/v1/completions", b"x" * (2 << 20), None, 413, None, "request_too_large"),
    # a factory: an iterator is spent by its first run (a second run in the process sends nothing)
    ("too-large-chunked", "POST", "/v1/completions", lambda: iter([b"x" * 65536] * 32), None, 413, None,
     "request_too_large"),
    # numbers JSON does not have, which Python's parser accepts
    ("nan-temperature", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "temperature": NaN}',
     None, 400, "temperature", None),
    ("infinite-top-p", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "top_p": Infinity}',
     None, 400, "top_p", None),
    ("infinite-max-tokens", "POST", "/v1/completions",
     b'{"model": "tiny", "prompt": "x", "max_tokens": -Infinity}', None, 400, "max_tokens", None),
    ("overflowing-exponent", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "seed": 1e400}',
     None, 400, "seed", None),
    # text that is not Unicode (a lone surrogate escaped in JSON)
    ("surrogate-prompt", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "a\\ud800b"}',
     None, 400, "prompt", None),
    ("surrogate-message", "POST", "/v1/chat/completions",
     b'{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}',
     None, 400, "messages.0.content", None),
    ("surrogate-stop", "POST", "/v1/completions", b'{"model": "tiny", "prompt": "x", "stop": "\\ud800"}',
     None, 400, "stop", None),
    # the model
    ("no-model", "POST", "/v1/completions", {"prompt": "x"}, None, 400, "model", None),
    ("model-number", "POST", "/v1/completions", {**OK, "model": 5}, None, 400, "model", None),
    ("unknown-model", "POST", "/v1/completions", {**OK, "model": "gpt-4"}, None, 404, "model", "model_not_found"),
    ("empty-model", "POST", "/v1/chat/completions", {**CHAT, "model": ""}, None, 404, "model", "model_not_found"),
    # the prompt
    ("no-prompt", "POST", "/v1/completions", {"model": "tiny"}, None, 400, "prompt", None),
    ("prompt-number", "POST", "/v1/completions", {**OK, "prompt": 5}, None, 400, "prompt", None),
    ("prompt-null", "POST", "/v1/completions", {**OK, "prompt": None}, None, 400, "prompt", None),
    ("prompt-empty-list", "POST", "/v1/completions", {**OK, "prompt": []}, None, 400, "prompt", None),
    ("prompt-two", "POST", "/v1/completions", {**OK, "prompt": ["a", "b"]}, None, 400, "prompt", None),
    ("prompt-token-ids", "POST", "/v1/completions", {**OK, "prompt": [1, 2, 3]}, None, 400, "prompt", None),
    ("prompt-object", "POST", "/v1/completions", {**OK, "prompt": {"text": "x"}}, None, 400, "prompt", None),
    ("prompt-past-context", "POST", "/v1/completions", {**OK, "prompt": "word " * 400}, None, 400, "prompt",
     "context_length_exceeded"),
    # max_tokens
    ("max-tokens-zero", "POST", "/v1/completions", {**OK, "max_tokens": 0}, None, 400, "max_tokens", None),
    ("max-tokens-negative", "POST", "/v1/completions", {**OK, "max_tokens": -5}, None, 400, "max_tokens", None),
    ("max-tokens-text", "POST", "/v1/completions", {**OK, "max_tokens": "ten"}, None, 400, "max_tokens", None),
    ("max-tokens-fraction", "POST", "/v1/completions", {**OK, "max_tokens": 1.5}, None, 400, "max_tokens", None),
    ("max-tokens-context", "POST", "/v1/completions", {**OK, "max_tokens": CONTEXT}, None, 400, "max_tokens",
     "context_length_exceeded"),
    ("max-tokens-huge", "POST", "/v1/chat/completions", {**CHAT, "max_tokens": 10**30}, None, 400, "max_tokens",
     "context_length_exceeded"),
    # sampling
    ("temperature-negative", "POST", "/v1/completions", {**OK, "temperature": -0.1}, None, 400, "temperature", None),
    ("temperature-high", "POST", "/v1/completions", {**OK, "temperature": 2.01}, None, 400, "temperature", None),
    ("temperature-text", "POST", "/v1/completions", {**OK, "temperature": "hot"}, None, 400, "temperature", None),
    ("top-p-zero", "POST", "/v1/completions", {**OK, "top_p": 0}, None, 400, "top_p", None),
    ("top-p-high", "POST", "/v1/completions", {**OK, "top_p": 1.5}, None, 400, "top_p", None),
    ("n-zero", "POST", "/v1/completions", {**OK, "n": 0}, None, 400, "n", None),
    ("n-nine", "POST", "/v1/completions", {**OK, "n": 9}, None, 400, "n", None),
    ("n-list", "POST", "/v1/completions", {**OK, "n": [2]}, None, 400, "n", None),
    ("stream-number", "POST", "/v1/completions", {**OK, "stream": 2}, None, 400, "stream", None),
    ("stream-word", "POST", "/v1/completions", {**OK, "stream": "maybe"}, None, 400, "stream", None),
    ("seed-text", "POST", "/v1/completions", {**OK, "seed": "x"}, None, 400, "seed", None),
    ("seed-fraction", "POST", "/v1/completions", {**OK, "seed": 1.5}, None, 400, "seed", None),
    ("seed-past-64-bits", "POST", "/v1/completions", {**OK, "seed": 2**64}, None, 400, "seed", None),
    ("seed-below-64-bits", "POST", "/v1/completions", {**OK, "seed": -(2**63) - 1}, None, 400, "seed", None),
    ("stop-empty", "POST", "/v1/completions", {**OK, "stop": ""}, None, 400, "stop", None),
    ("stop-empty-in-list", "POST", "/v1/completions", {**OK, "stop": ["a", ""]}, None, 400, "stop", None),
    ("stop-five", "POST", "/v1/completions", {**OK, "stop": list("abcde")}, None, 400, "stop", None),
    ("stop-number", "POST", "/v1/completions", {**OK, "stop": [1]}, None, 400, "stop", None),
    ("stop-object", "POST", "/v1/completions", {**OK, "stop": {"a": 1}}, None, 400, "stop", None),
    # chat messages
    ("no-messages", "POST", "/v1/chat/completions", {"model": "tiny"}, None, 400, "messages", None),
    ("messages-empty", "POST", "/v1/chat/completions", {**CHAT, "messages": []}, None, 400, "messages", None),
    ("messages-string", "POST", "/v1/chat/completions", {**CHAT, "messages": "hi"}, None, 400, "messages", None),
    ("message-number", "POST", "/v1/chat/completions", {**CHAT, "messages": [5]}, None, 400, "messages.0", None),
    ("message-no-content", "POST", "/v1/chat/completions", {**CHAT, "messages": [{"role": "user"}]}, None, 400,
     "messages.0.content", None),
    ("message-null-content", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": None}]}, None, 400, "messages.0.content", None),
    ("message-content-parts", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, None, 400,
     "messages.0.content", None),
    ("message-no-role", "POST", "/v1/chat/completions", {**CHAT, "messages": [{"content": "x"}]}, None, 400,
     "messages.0.role", None),
    ("message-tool-role", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "tool", "content": "x"}]}, None, 400, "messages.0.role", None),
    ("messages-past-context", "POST", "/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]}, None, 400, "messages",
     "context_length_exceeded"),
    # headers
    ("no-key", "POST", "/v1/completions", OK, {}, 401, None, "invalid_api_key"),
    ("wrong-key", "POST", "/v1/completions", OK, {"Authorization": "Bearer nope"}, 401, None, "invalid_api_key"),
    ("key-after-two-spaces", "POST", "/v1/completions", OK, {"Authorization": f"Bearer  {KEY}"}, 401, None,
     "invalid_api_key"),
    ("bearer-alone", "POST", "/v1/completions", OK, {"Authorization": "Bearer"}, 401, None, "invalid_api_key"),
    ("basic-auth", "POST", "/v1/completions", OK, {"Authorization": "Basic dGVzdC1rZXk="}, 401, None,
     "invalid_api_key"),
    # the key behind another 7-character scheme: only "Bearer " introduces the key
    ("key-under-another-scheme", "POST", "/v1/completions", OK, {"Authorization": f"Token: {KEY}"}, 401,
     None, "invalid_api_key"),
    ("latin1-key", "POST", "/v1/completions", OK, {"Authorization": b"Bearer \xe9\xff"}, 401, None,
     "invalid_api_key"),
    ("key-on-models", "GET", "/v1/models", None, {}, 401, None, "invalid_api_key"),
    # paths and methods
    ("get-completions", "GET", "/v1/completions", None, None, 405, None, None),
    ("put-chat", "PUT", "/v1/chat/completions", CHAT, None, 405, None, None),
    ("unknown-path", "GET", "/v1/embeddings", None, None, 404, None, None),
    ("unknown-post", "POST", "/v1/nothing", OK, None, 404, None, None),
]


def _body(payload) -> dict:
    """httpx's keyword for a case's body, made afresh for each run."""
    if callable(payload):
        payload = payload()
    if isinstance(payload, dict):
        return {"json": copy.deepcopy(payload)}
    return {} if payload is None else {"content": payload}


def test_every_case_sends_the_same_body_each_time_it_runs():
    # mutmut runs the tests twice in one process (its stats run, then its clean run), as
    # does anyone calling pytest.main twice: a case whose body was a shared iterator sent
    # an empty body the second time (a 400, not the 413 asked for), which stopped mutmut.
    for name, method, path, payload, *_ in CASES:
        sent = [httpx.Request(method, "http://127.0.0.1" + path, **_body(payload)).read() for _ in range(2)]
        assert sent[0] == sent[1], name
        assert payload is None or sent[0] or name == "empty-body", name


@pytest.mark.parametrize("name,method,path,payload,headers,status,param,code", CASES,
                         ids=[c[0] for c in CASES])
def test_hostile_requests_get_a_4xx_in_openais_shape(server, name, method, path, payload, headers,
                                                     status, param, code):
    r = httpx.request(method, server[0] + path, headers=AUTH if headers is None else headers,
                      timeout=10, **_body(payload))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    assert error["type"] == {401: "authentication_error", 404: "invalid_request_error"}.get(
        status, "invalid_request_error")
    assert error["param"] == param
    assert error["code"] == code
    if param:
        assert param.split(".")[0] in error["message"]  # the message names what was wrong


def test_the_server_is_still_healthy_after_the_hostile_requests(server, greedy):
    base, batcher, model = server
    r = httpx.post(base + "/v1/completions", headers=AUTH, json={**OK, "max_tokens": 6, "temperature": 0},
                   timeout=10)
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == greedy(model, "x", 6).text
    health = httpx.get(base + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["in_flight"] == 0


# ------------------------------------------------------------------------ load

def _events(text: str) -> list[str]:
    return [e for e in text.split("\n\n") if e]


def _chunks(events: list[str]) -> list[dict]:
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1]), events
    return [json.loads(e[6:]) for e in events[:-1]]


def test_64_concurrent_streams_all_complete_with_the_engines_text(server, greedy):
    base, batcher, model = server
    prompts = [f"def {w}(" for w in ("alpha", "beta", "gamma", "delta", "value", "total", "count", "index")]
    expected = {p: greedy(model, p, 12) for p in prompts}
    peak = {"n": 0}

    async def one(client, prompt):
        async with client.stream("POST", base + "/v1/completions", headers=AUTH, json={
                "model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0,
                "stream": True}) as r:
            assert r.status_code == 200
            peak["n"] = max(peak["n"], batcher.in_flight)
            return prompt, "".join([line + "\n\n" async for line in r.aiter_lines() if line])

    async def all_at_once():
        limits = httpx.Limits(max_connections=80, max_keepalive_connections=80)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(one(client, prompts[i % 8]) for i in range(64)))

    results = asyncio.run(all_at_once())
    assert len(results) == 64
    for prompt, text in results:
        chunks = _chunks(_events(text))
        assert "".join(c["choices"][0]["text"] for c in chunks) == expected[prompt].text
        assert chunks[-1]["choices"][0]["finish_reason"] == expected[prompt].finish_reason
        assert len({c["id"] for c in chunks}) == 1
    assert peak["n"] > 8, "the 64 streams were not in the server at the same time"
    assert batcher.in_flight == 0 and not batcher.engine.running


def test_clients_hanging_up_mid_stream_free_their_slots(server, greedy):
    base, batcher, model = server

    async def hang_up_after(client, lines: int):
        async with client.stream("POST", base + "/v1/chat/completions", headers=AUTH, json={
                "model": "tiny", "messages": [{"role": "user", "content": f"def f{lines}("}],
                "max_tokens": 50, "stream": True, "stop": ["never-appears"]}) as r:
            seen = 0
            async for _ in r.aiter_lines():
                seen += 1
                if seen >= lines:
                    return  # leaves the block: the connection is closed

    async def many():
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(*(hang_up_after(client, 1 + i % 4) for i in range(24)))

    asyncio.run(many())
    deadline = time.time() + 10
    while (batcher.in_flight or batcher.engine.running) and time.time() < deadline:
        time.sleep(0.02)
    assert batcher.in_flight == 0 and not batcher.engine.running
    assert httpx.get(base + "/health", timeout=5).json()["in_flight"] == 0
    # and the slots serve again
    r = httpx.post(base + "/v1/completions", headers=AUTH, json={**OK, "max_tokens": 6, "temperature": 0},
                   timeout=10)
    assert r.json()["choices"][0]["text"] == greedy(model, "x", 6).text


# ---------------------------------------------------------- exact stream events

CHAT_MESSAGES = [{"role": "user", "content": "def beta"}]
CHAT_PROMPT = "<|user|>\ndef beta\n<|assistant|>\n"  # the simple template (docs/serving.md)
CHAT_STOPS = ["<|user|>", "<|system|>"]


def test_a_chat_stream_is_exactly_role_content_finish_done_over_raw_http(server, greedy):
    base, _, model = server
    expected = greedy(model, CHAT_PROMPT, 10, stop=CHAT_STOPS)
    r = httpx.post(base + "/v1/chat/completions", headers=AUTH, timeout=10, json={
        "model": "tiny", "messages": CHAT_MESSAGES, "max_tokens": 10, "temperature": 0, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = _chunks(_events(r.text))
    first, middle, last = chunks[0], chunks[1:-1], chunks[-1]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == "tiny"
        assert c["id"] == first["id"] and c["id"].startswith("chatcmpl-")
        assert c["created"] == first["created"]
        assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["finish_reason"] is None
    assert middle, "no content chunks"
    for c in middle:
        assert set(c["choices"][0]["delta"]) == {"content"} and c["choices"][0]["delta"]["content"]
        assert c["choices"][0]["finish_reason"] is None
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == expected.text
    assert last["choices"][0]["delta"] == {}
    assert last["choices"][0]["finish_reason"] == expected.finish_reason


def test_a_chat_stream_through_the_official_client(server, greedy):
    base, _, model = server
    expected = greedy(model, CHAT_PROMPT, 10, stop=CHAT_STOPS)
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=10)
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT_MESSAGES, max_tokens=10,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].choices[0].finish_reason == expected.finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_a_completion_stream_over_raw_http(server, greedy):
    base, _, model = server
    expected = greedy(model, "def gamma(", 10)
    r = httpx.post(base + "/v1/completions", headers=AUTH, timeout=10, json={
        "model": "tiny", "prompt": "def gamma(", "max_tokens": 10, "temperature": 0, "stream": True})
    chunks = _chunks(_events(r.text))
    assert all(c["object"] == "text_completion" and c["id"].startswith("cmpl-") for c in chunks)
    assert all(c["choices"][0]["text"] for c in chunks[:-1])  # no empty pieces before the end
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "text": "", "finish_reason": expected.finish_reason,
                                        "logprobs": None}
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected.text
