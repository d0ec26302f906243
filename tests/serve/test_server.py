"""The OpenAI-compatible server, exercised over real HTTP by the official
``openai`` client and by raw requests: results equal the engine's, streams end in
[DONE], errors have OpenAI's shape and status, and concurrent requests are batched
without changing their results."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

KEY = "test-key"  # the shared server's (conftest.py)

@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)


def test_models_and_a_greedy_completion_equal_the_engine(client, server, greedy):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    out = client.completions.create(model="tiny", prompt="def alpha(", max_tokens=12, temperature=0)
    assert out.choices[0].text == greedy(server[2], "def alpha(", 12).text
    assert out.choices[0].finish_reason in ("length", "stop")
    prompt_tokens = len(server[2].tokenizer.encode("def alpha(", add_special_tokens=False).ids)
    assert out.usage.prompt_tokens == prompt_tokens
    assert out.usage.total_tokens == prompt_tokens + out.usage.completion_tokens


def test_chat_uses_the_simple_template_and_streams_the_same_text(client, server, greedy):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "def beta"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    prompt = "<|system|>\nbe brief\n<|user|>\ndef beta\n<|assistant|>\n"
    assert whole.choices[0].message.content == greedy(
        server[2], prompt, 10, stop=["<|user|>", "<|system|>"]).text
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True)]
    assert "".join(pieces) == whole.choices[0].message.content


def test_a_raw_stream_is_server_sent_events_ending_in_done(server):
    r = httpx.post(server[0] + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny", "prompt": "x", "max_tokens": 5, "stream": True}, timeout=30)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("length", "stop")


def test_n_choices_and_seeded_sampling_are_reproducible(client):
    kw = dict(model="tiny", prompt="def ", max_tokens=8, temperature=1.0, seed=5, n=2)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]


@pytest.mark.parametrize("call,status,param,code", [
    (dict(model="nope", prompt="x"), 404, "model", "model_not_found"),
    (dict(model="tiny", prompt="x", temperature=5), 400, "temperature", None),
    (dict(model="tiny", prompt="x", n=0), 400, "n", None),
    (dict(model="tiny", prompt="word " * 400), 400, None, "context_length_exceeded"),
    (dict(model="tiny", prompt="x", max_tokens=10_000), 400, None, "context_length_exceeded"),
])
def test_bad_requests_get_openai_errors(client, call, status, param, code):
    with pytest.raises(openai.APIStatusError) as exc:
        client.completions.create(**call)
    assert exc.value.status_code == status
    body = exc.value.body
    assert body["message"] and body["type"]
    if param:
        assert body["param"] == param
    if code:
        assert body["code"] == code


def test_keys_bodies_and_paths(server):
    base = server[0]
    unauthorised = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthorised.models.list()
    assert httpx.get(base + "/v1/models").status_code == 401  # no key at all
    auth = {"Authorization": f"Bearer {KEY}"}
    big = httpx.post(base + "/v1/completions", headers=auth, content=b"x" * (2 << 20))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad = httpx.post(base + "/v1/completions", headers=auth, content=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    missing = httpx.get(base + "/v1/nothing", headers=auth)
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(base + "/health").json()["status"] == "ok"
    assert "fmforge chat" in httpx.get(base + "/").text


def test_concurrent_requests_are_batched_and_unchanged(server, client):
    base, batcher, model = server
    prompts = [f"def {w}(" for w in ("alpha", "beta", "gamma", "delta", "value", "total")]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0)
             .choices[0].text for p in prompts]
    peak = {"n": 0}
    original = batcher.engine.step

    def counting_step():
        peak["n"] = max(peak["n"], len(batcher.engine.running) + len(batcher.engine.waiting))
        return original()

    batcher.engine.step = counting_step
    try:
        async def all_at_once():
            async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0) as aclient:
                outs = await asyncio.gather(*(aclient.completions.create(
                    model="tiny", prompt=p, max_tokens=16, temperature=0) for p in prompts))
            return [o.choices[0].text for o in outs]

        together = asyncio.run(all_at_once())
    finally:
        batcher.engine.step = original
    assert together == alone
    assert peak["n"] > 1, "the requests were decoded one after another, not together"


def test_a_client_that_disconnects_frees_its_slot(server):
    base, batcher, _ = server
    with httpx.stream("POST", base + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tiny", "prompt": "a", "max_tokens": 60, "stream": True,
                            "stop": ["never-appears"]}, timeout=30) as r:
        next(r.iter_lines())  # the stream has started; now hang up
    deadline = time.time() + 10
    while (batcher.in_flight or batcher.engine.running) and time.time() < deadline:
        time.sleep(0.05)
    assert batcher.in_flight == 0
    assert not batcher.engine.running
