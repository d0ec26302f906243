"""The OpenAI wire format: request bodies, validated, and errors the OpenAI way.

Only what the server implements is accepted; anything else is a 400 naming the
parameter, never silently ignored and never a 500 (an unknown field is allowed,
as OpenAI's clients send some we do not use, e.g. ``user``). Text must be
Unicode (JSON can escape a lone surrogate, which no tokenizer can encode) and
numbers finite (Python's JSON parser reads ``NaN`` and ``Infinity``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_N = 8  # choices per request
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch's generator takes (choice i is seeded seed + i)


class APIError(Exception):
    """An error returned as ``{"error": {"message", "type", "param", "code"}}``
    with ``status`` (and ``headers``, e.g. ``Retry-After`` on a 429)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def server_error(what: str, exc: BaseException) -> APIError:
    """A 500 for a failure of the server itself (not of the request), the way
    OpenAI answers one: type ``server_error``. The message names the exception;
    its traceback goes to the server's log."""
    return APIError(500, f"{what}: {type(exc).__name__}: {exc} (the server's log has the "
                    "traceback; the request itself may be retried)", type_="server_error")


def _unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode: a lone surrogate ({text[exc.start]!r}) at "
                         f"character {exc.start}") from None
    return text


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    # An extension, named as in OpenAI's Responses API: "auto" fits a request past the
    # context by dropping the oldest turns (chat) or the prompt's start (completions);
    # "disabled" (the default, OpenAI's chat semantics) answers such a request with a 400.
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return v
        stops = [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("stop must be a string or a list of up to 4 strings")
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if not all(stops):
            raise ValueError("a stop sequence must not be empty")
        for s in stops:
            _unicode(s)
        return v

    @property
    def stop_list(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Sampling):
    prompt: str

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
            v = v[0]
        if not isinstance(v, str):
            raise ValueError("must be a string, or a list of one string (one prompt per request; "
                             "prompts of token ids are not accepted)")
        return _unicode(v)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, v):
        if not isinstance(v, str):
            raise ValueError("must be a string (content parts, images and tool calls are not "
                             "accepted)")
        return _unicode(v)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body; the first problem becomes a 400 naming its parameter.

    No validator here walks into a value, so a deeply nested one is refused at its
    first level (a list where a string is due); JSON nested past Python's recursion
    limit never gets here: the server's ``json.loads`` refuses it (app.py)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}" if param else message, param=param) from None
