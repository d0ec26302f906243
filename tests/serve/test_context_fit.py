"""Requests against the model's context (the shared tiny model has 64 tokens):
``/v1/models`` says how large it is; a request past it is a 400 naming the limit,
as OpenAI answers, unless it opts into ``truncation: "auto"``, which drops the
oldest turns of a chat (keeping its system messages) or the start of a prompt and
answers, saying what it dropped in a response header."""

from __future__ import annotations

import re

import httpx
import pytest

from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.serve.chat_template import SIMPLE_STOPS, simple_prompt

KEY = "test-key"  # the shared server's (conftest.py)
AUTH = {"Authorization": f"Bearer {KEY}"}
CONTEXT = 64  # conftest's tiny model


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server[0] + path, headers=AUTH, json={"model": "tiny", **body}, timeout=30)


def n_tokens(model, text: str) -> int:
    return len(model.tokenizer.encode(text, add_special_tokens=False).ids)


def greedy_ids(model, ids: list[int], n: int, stop=()) -> str:
    return Engine(model).generate([GenerationRequest(prompt_ids=ids, max_new_tokens=n, temperature=0,
                                                     stop=list(stop))])[0].text


def conversation(turns: int) -> list[dict]:
    """A system message, then `turns` user/assistant exchanges, ending on a user message."""
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"def v{i}"})
        messages.append({"role": "assistant", "content": f"x{i}"})
    messages.append({"role": "user", "content": "def a"})
    return messages


def test_models_lists_the_context_in_openais_shape(server):
    r = httpx.get(server[0] + "/v1/models", headers=AUTH)
    assert r.status_code == 200
    (entry,) = r.json()["data"]
    assert {"id", "object", "created", "owned_by"} <= entry.keys()
    assert entry["id"] == "tiny" and entry["object"] == "model"
    assert entry["context_length"] == CONTEXT
    assert entry["max_model_len"] == CONTEXT  # vLLM's name for it


def test_a_chat_past_the_context_is_a_400_naming_the_limit_without_opt_in(server):
    r = post(server, "/v1/chat/completions", {"messages": conversation(6), "max_tokens": 8})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert re.search(f"context (of|is) {CONTEXT} tokens", error["message"])
    disabled = post(server, "/v1/chat/completions", {"messages": conversation(6), "max_tokens": 8,
                                                     "truncation": "disabled"})
    assert disabled.status_code == 400 and disabled.json()["error"]["code"] == "context_length_exceeded"


def test_truncation_auto_drops_the_oldest_turns_keeps_the_system_message_and_answers(server):
    model = server[2]
    messages = conversation(6)
    r = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0,
                                              "truncation": "auto"})
    assert r.status_code == 200, r.text
    dropped = int(r.headers["x-dropped-messages"])
    assert dropped >= 2 and dropped % 2 == 0  # whole exchanges: the kept part starts on a user turn
    kept = [messages[0], *messages[1 + dropped:]]
    assert kept[1]["role"] == "user"
    prompt = simple_prompt(kept)
    assert n_tokens(model, prompt) + 8 <= CONTEXT
    # the fewest dropped: one exchange more would not fit
    assert n_tokens(model, simple_prompt([messages[0], *messages[dropped - 1:]])) + 8 > CONTEXT
    body = r.json()
    assert body["usage"]["prompt_tokens"] == n_tokens(model, prompt)
    ids = model.tokenizer.encode(prompt, add_special_tokens=False).ids
    assert body["choices"][0]["message"]["content"] == greedy_ids(model, ids, 8, SIMPLE_STOPS)


def test_truncation_auto_streams_too_and_fitting_requests_drop_nothing(server):
    r = post(server, "/v1/chat/completions", {"messages": conversation(6), "max_tokens": 8,
                                              "stream": True, "truncation": "auto"})
    assert r.status_code == 200 and int(r.headers["x-dropped-messages"]) >= 2
    assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    short = post(server, "/v1/chat/completions", {"messages": conversation(0), "max_tokens": 8,
                                                  "truncation": "auto"})
    assert short.status_code == 200 and short.headers["x-dropped-messages"] == "0"


def test_truncation_auto_lowers_max_tokens_when_the_last_turn_alone_leaves_less(server):
    model = server[2]
    messages = [{"role": "user", "content": "def alpha(value, total): return value"}]
    n = n_tokens(model, simple_prompt(messages))
    r = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": CONTEXT - 1,
                                              "truncation": "auto", "stop": ["never-appears"],
                                              "temperature": 0})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == n and usage["completion_tokens"] <= CONTEXT - n


def test_truncation_auto_refuses_a_last_message_larger_than_the_context(server):
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 200}],
                                              "truncation": "auto"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert re.search(f"context (of|is) {CONTEXT} tokens", error["message"])


def test_a_completion_with_truncation_auto_keeps_the_prompts_end(server):
    model = server[2]
    prompt = "def value(total): return total\n" * 20
    ids = model.tokenizer.encode(prompt, add_special_tokens=False).ids
    assert len(ids) > CONTEXT
    refused = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 10})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    r = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 10, "temperature": 0,
                                         "truncation": "auto"})
    assert r.status_code == 200, r.text
    assert int(r.headers["x-dropped-prompt-tokens"]) == len(ids) - (CONTEXT - 10)
    assert r.json()["usage"]["prompt_tokens"] == CONTEXT - 10
    assert r.json()["choices"][0]["text"] == greedy_ids(model, ids[-(CONTEXT - 10):], 10)


@pytest.mark.parametrize("value", ["yes", True, 1])
def test_truncation_takes_only_auto_or_disabled(server, value):
    r = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 2, "truncation": value})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "truncation"


def test_truncation_auto_keeps_every_system_message_and_drops_a_leading_reply_as_a_turn(server):
    model = server[2]
    messages = [{"role": "system", "content": "s1"}, {"role": "assistant", "content": "hello " * 8},
                {"role": "user", "content": "def v0"}, {"role": "assistant", "content": "x0"},
                {"role": "system", "content": "s2"}, {"role": "user", "content": "def a"}]
    r = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0,
                                              "truncation": "auto"})
    assert r.status_code == 200, r.text
    dropped = int(r.headers["x-dropped-messages"])
    # the leading reply alone when that is enough, else with the exchange after it
    without_reply = [m for i, m in enumerate(messages) if i != 1]
    assert dropped == (1 if n_tokens(model, simple_prompt(without_reply)) + 8 <= CONTEXT else 3)
    gone = [1, 2, 3][:dropped]
    kept = [m for i, m in enumerate(messages) if i not in gone]
    assert [m["content"] for m in kept if m["role"] == "system"] == ["s1", "s2"]
    assert r.json()["usage"]["prompt_tokens"] == n_tokens(model, simple_prompt(kept))
    assert n_tokens(model, simple_prompt(messages)) + 8 > CONTEXT  # something had to go
