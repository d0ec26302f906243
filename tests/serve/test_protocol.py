"""The request contract (serve/protocol.py) on its own, no server: OpenAI's documented
ranges and defaults for each parameter, on both sides of every bound (docs/serving.md
names the same ones: temperature 0-2, top_p (0, 1], n 1-8, stop a string or up to 4,
a 64-bit seed), the bodies the official ``openai`` client sends, and the error object
as that client reads it. Fast: each check is a pydantic validation or a mocked HTTP
exchange."""

from __future__ import annotations

import json

import httpx2  # the HTTP library the installed openai client is built on
import openai
import pytest

from fmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    parse,
    server_error,
)

BODIES = {CompletionRequest: {"model": "tiny", "prompt": "x"},
          ChatCompletionRequest: {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}}
KINDS = pytest.mark.parametrize("kind", [CompletionRequest, ChatCompletionRequest],
                                ids=["completions", "chat"])


def refused(kind, body) -> APIError:
    with pytest.raises(APIError) as err:
        parse(kind, body)
    assert err.value.status == 400 and err.value.type == "invalid_request_error"
    assert err.value.code is None
    return err.value


# (parameter, value sent, value the request holds): inside or on OpenAI's documented bounds
ACCEPTED = [
    ("temperature", 0, 0.0), ("temperature", 2, 2.0), ("temperature", 1.999, 1.999),
    ("temperature", 0.001, 0.001),
    ("top_p", 1, 1.0), ("top_p", 1e-9, 1e-9), ("top_p", 0.5, 0.5),
    ("n", 1, 1), ("n", 8, 8), ("n", 2, 2),
    ("max_tokens", 1, 1), ("max_tokens", 2, 2), ("max_tokens", None, None),
    ("seed", 2**63 - 1, 2**63 - 1), ("seed", -(2**63), -(2**63)), ("seed", 0, 0),
    ("stop", "\n", "\n"), ("stop", ["a", "b", "c", "d"], ["a", "b", "c", "d"]), ("stop", ["a"], ["a"]),
    ("stop", None, None), ("stop", [], []),
    ("stream", True, True), ("stream", False, False),
    ("truncation", "auto", "auto"), ("truncation", "disabled", "disabled"),
]
# just outside them, or not a value of the parameter's type
REFUSED = [
    ("temperature", -0.001), ("temperature", 2.001), ("temperature", float("nan")),
    ("temperature", float("inf")), ("temperature", "warm"),
    ("top_p", 0), ("top_p", -0.5), ("top_p", 1.001), ("top_p", float("nan")), ("top_p", float("-inf")),
    ("n", 0), ("n", 9), ("n", -1), ("n", 1.5),
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 2.5),
    ("seed", 2**63), ("seed", -(2**63) - 1), ("seed", 0.5),
    ("stop", ["a", "b", "c", "d", "e"]), ("stop", ""), ("stop", ["a", ""]), ("stop", ["", "a"]),
    ("stop", [1]), ("stop", ["a", 2]), ("stop", 3), ("stop", {"a": "b"}), ("stop", "a\ud800"),
    ("stop", ["a", "\udc00"]),
    ("stream", "maybe"), ("stream", 2),
    ("truncation", "left"), ("truncation", True),
]


@KINDS
# (ids are plain ASCII without spaces: mutmut hands node ids back to pytest, which cannot
# find one holding an escaped surrogate or a quoted list)
@pytest.mark.parametrize("param,value,held", ACCEPTED, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(ACCEPTED)])
def test_values_inside_openais_bounds_are_accepted_as_sent(kind, param, value, held):
    req = parse(kind, {**BODIES[kind], param: value})
    assert getattr(req, param) == held and type(getattr(req, param)) is type(held)


@KINDS
@pytest.mark.parametrize("param,value", REFUSED, ids=[f"{p}-{i}" for i, (p, _) in enumerate(REFUSED)])
def test_values_outside_them_are_a_400_naming_the_parameter(kind, param, value):
    err = refused(kind, {**BODIES[kind], param: value})
    assert err.param == param
    assert err.message.startswith(f"{param}: ") and "Value error" not in err.message
    assert err.body() == {"error": {"message": err.message, "type": "invalid_request_error",
                                    "param": param, "code": None}}


@KINDS
def test_openais_defaults(kind):
    # OpenAI's API reference: temperature 1, top_p 1, n 1, stream false; no stop, seed or
    # max_tokens unless given (the server then fills max_tokens from the context).
    req = parse(kind, BODIES[kind])
    assert (req.temperature, req.top_p, req.n, req.stream) == (1.0, 1.0, 1, False)
    assert (req.max_tokens, req.stop, req.seed, req.truncation) == (None, None, None, None)
    assert req.stop_list == [] and req.model == "tiny"


def test_stop_as_a_string_or_a_list_is_one_list_of_stop_strings():
    one = {**BODIES[CompletionRequest]}
    assert parse(CompletionRequest, {**one, "stop": "\n\n"}).stop_list == ["\n\n"]
    assert parse(CompletionRequest, {**one, "stop": ["a", "bc", "d", "e"]}).stop_list == ["a", "bc", "d", "e"]
    assert parse(CompletionRequest, {**one, "stop": []}).stop_list == []


def test_the_stop_messages_say_what_is_allowed():
    body = BODIES[CompletionRequest]
    assert "4" in refused(CompletionRequest, {**body, "stop": list("abcde")}).message
    assert "empty" in refused(CompletionRequest, {**body, "stop": ["a", ""]}).message
    assert "string" in refused(CompletionRequest, {**body, "stop": [7]}).message


@pytest.mark.parametrize("value,message", [
    ("a\ud800b", "prompt: is not valid Unicode: a lone surrogate ('\\ud800') at character 1"),
    ("\udfff", "prompt: is not valid Unicode: a lone surrogate ('\\udfff') at character 0"),
    ("héllo\udc80", "prompt: is not valid Unicode: a lone surrogate ('\\udc80') at character 5"),
], ids=["inside", "alone", "after-an-accent"])
def test_a_lone_surrogate_is_named_with_its_position(value, message):
    assert refused(CompletionRequest, {"model": "tiny", "prompt": value}).message == message


def test_the_prompt_is_one_string():
    body = {"model": "tiny"}
    assert parse(CompletionRequest, {**body, "prompt": ["only one"]}).prompt == "only one"
    assert parse(CompletionRequest, {**body, "prompt": ""}).prompt == ""  # the engine starts at end-of-text
    assert parse(CompletionRequest, {**body, "prompt": "héllo 😀"}).prompt == "héllo 😀"
    for bad in ([], ["a", "b"], [1, 2], [["a"]], [None], None, 5, {"text": "x"}):
        err = refused(CompletionRequest, {**body, "prompt": bad})
        assert err.param == "prompt" and err.message.startswith("prompt: must be a string"), bad
    err = refused(CompletionRequest, {**body, "prompt": ["a\ud800"]})
    assert err.param == "prompt" and "lone surrogate" in err.message
    assert refused(CompletionRequest, {"model": "tiny"}).param == "prompt"


def test_chat_messages():
    body = {"model": "tiny"}
    said = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "ann"},
            {"role": "assistant", "content": ""}]
    req = parse(ChatCompletionRequest, {**body, "messages": said})
    assert [(m.role, m.content) for m in req.messages] == [(m["role"], m["content"]) for m in said]
    for messages, param in [([], "messages"), ("hi", "messages"), ([5], "messages.0"),
                            ([{"role": "user"}], "messages.0.content"),
                            ([{"role": "user", "content": None}], "messages.0.content"),
                            ([{"role": "user", "content": 5}], "messages.0.content"),
                            ([said[0], {"role": "user", "content": [{"type": "text", "text": "x"}]}],
                             "messages.1.content"),
                            ([said[0], {"role": "user", "content": "ok\ud800"}], "messages.1.content"),
                            ([{"content": "x"}], "messages.0.role"),
                            ([{"role": "tool", "content": "x"}], "messages.0.role"),
                            ([{"role": "User", "content": "x"}], "messages.0.role")]:
        err = refused(ChatCompletionRequest, {**body, "messages": messages})
        assert err.param == param and err.message.startswith(param + ": "), messages
    err = refused(ChatCompletionRequest, {**body, "messages": [{"role": "user", "content": [1]}]})
    assert "must be a string" in err.message
    assert refused(ChatCompletionRequest, body).param == "messages"


def test_the_model_is_a_required_string():
    assert refused(CompletionRequest, {"prompt": "x"}).param == "model"
    assert refused(CompletionRequest, {"prompt": "x", "model": 5}).param == "model"


def test_fields_openai_clients_send_that_the_server_does_not_use_are_accepted():
    req = parse(CompletionRequest, {"model": "tiny", "prompt": "x", "user": "u-1", "logprobs": None,
                                    "stream_options": {"include_usage": True}})
    assert req.prompt == "x"


@pytest.mark.parametrize("body", [[1, 2], "text", None, 3, ["model"]])
def test_a_body_that_is_not_an_object_is_a_400_without_a_param(body):
    err = refused(CompletionRequest, body)
    assert err.message == "the request body must be a JSON object" and err.param is None


def test_deeply_nested_values_are_a_400_naming_their_parameter():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for param in ("stop", "prompt", "n", "temperature", "seed"):
        assert refused(CompletionRequest, {"model": "tiny", "prompt": "x", param: deep}).param == param
    assert refused(ChatCompletionRequest, {"model": "tiny", "messages": deep}).param == "messages.0"


# -------------------------------------------------- through the official client

def _client(answer) -> tuple[openai.OpenAI, list[dict]]:
    """An openai client whose HTTP goes to ``answer(request) -> httpx2.Response``; the
    JSON bodies it sent are collected."""
    sent: list[dict] = []

    def handle(request):
        sent.append(json.loads(request.content))
        return answer(request)

    http = httpx2.Client(transport=httpx2.MockTransport(handle))
    return openai.OpenAI(base_url="http://fmforge.test/v1", api_key="k", max_retries=0,
                         http_client=http), sent


def _refuse(request):
    return httpx2.Response(400, json=APIError(400, "refused", param="x").body())


def test_what_the_official_client_sends_is_read_as_sent():
    client, sent = _client(_refuse)
    calls = [
        (client.completions.create, dict(model="tiny", prompt="def f(", max_tokens=1, temperature=2,
                                          top_p=1, n=8, stop=["a", "b", "c", "d"], seed=2**63 - 1,
                                          user="someone")),
        (client.completions.create, dict(model="tiny", prompt=["one"], temperature=0, top_p=0.01, n=1,
                                          stop="\n", seed=-(2**63), stream=True)),
        (client.chat.completions.create, dict(
            model="tiny", max_tokens=5, temperature=0.5, top_p=0.9, n=3, stop=["\n"], seed=7,
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi", "name": "ann"},
                      {"role": "assistant", "content": "hello"}, {"role": "user", "content": "é"}])),
        (client.chat.completions.create, dict(model="tiny", messages=[{"role": "user", "content": "x"}],
                                               stream=True, extra_body={"truncation": "auto"})),
    ]
    for create, kw in calls:
        with pytest.raises(openai.BadRequestError):
            create(**kw)
    kinds = [CompletionRequest, CompletionRequest, ChatCompletionRequest, ChatCompletionRequest]
    for (_, kw), kind, body in zip(calls, kinds, sent):
        req = parse(kind, body)
        for name, value in kw.items():
            if name == "extra_body":
                assert req.truncation == "auto"
            elif name == "prompt":
                assert req.prompt == (value[0] if isinstance(value, list) else value)
            elif name == "messages":
                assert [(m.role, m.content) for m in req.messages] == [(m["role"], m["content"])
                                                                       for m in value]
            elif name == "stop":
                assert req.stop_list == ([value] if isinstance(value, str) else value)
            elif name != "user":
                assert getattr(req, name) == value, name


@pytest.mark.parametrize("error,exc_class", [
    (APIError(400, "temperature: must be at most 2", param="temperature"), openai.BadRequestError),
    (APIError(401, "missing or wrong API key", code="invalid_api_key", type_="authentication_error"),
     openai.AuthenticationError),
    (APIError(404, "no such model", param="model", code="model_not_found"), openai.NotFoundError),
    (APIError(429, "at capacity", code="queue_full", type_="rate_limit_error",
              headers={"Retry-After": "1"}), openai.RateLimitError),
    (server_error("generation failed", RuntimeError("boom")), openai.InternalServerError),
], ids=["400", "401", "404", "429", "500"])
def test_the_error_object_reads_in_the_official_client(error, exc_class):
    client, _ = _client(lambda request: httpx2.Response(error.status, json=error.body(),
                                                        headers=error.headers))
    with pytest.raises(exc_class) as caught:
        client.completions.create(model="tiny", prompt="x")
    got = caught.value
    assert got.status_code == error.status
    assert (got.param, got.code, got.type) == (error.param, error.code, error.type)
    assert got.body == {"message": error.message, "type": error.type, "param": error.param,
                        "code": error.code}
    assert error.message in got.message
    if error.status == 429:
        assert got.response.headers["retry-after"] == "1"


def test_an_api_error_defaults_to_openais_invalid_request_error():
    err = APIError(400, "temperature: too hot", param="temperature")
    assert str(err) == "temperature: too hot"
    assert (err.status, err.type, err.code, err.headers) == (400, "invalid_request_error", None, None)
    assert err.body() == {"error": {"message": "temperature: too hot", "type": "invalid_request_error",
                                    "param": "temperature", "code": None}}
    assert APIError(404, "gone").body()["error"]["param"] is None


def test_a_server_failure_is_a_500_server_error_naming_the_exception():
    err = server_error("the generation worker failed", ValueError("shape mismatch"))
    assert (err.status, err.type, err.param, err.code) == (500, "server_error", None, None)
    assert err.message == ("the generation worker failed: ValueError: shape mismatch (the server's log "
                           "has the traceback; the request itself may be retried)")
    assert err.body()["error"]["type"] == "server_error"
