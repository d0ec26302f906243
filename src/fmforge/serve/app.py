"""The OpenAI-compatible HTTP server (FastAPI): ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (``stream: true`` as server-sent
events ending in ``data: [DONE]``), ``/health``, and a chat page at ``/``.

Errors follow OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``): 400 for invalid parameters or a prompt past the context (unless
the request asks for ``truncation: "auto"``, see backend.py), 401 for a missing
or wrong key when one is set, 404 for an unknown model or path, 405 for a wrong
method, 413 for an oversized body, 429 (with ``Retry-After``) when the queue is
full, 500 (``server_error``, logged with its traceback) when the server
itself fails, 503 once the generation worker has given up (see batcher.py). Bad
input is never a 500.

Tokenizing and templating run in worker threads, off the event loop. A client
that hangs up, streaming or not, cancels its sequences. A stream that has sent
nothing for ``keepalive_s`` seconds (a long prefill, a wait for a slot) gets an
SSE comment, ``: keep-alive``, which clients ignore and proxies count as traffic.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import Request  # at module level: FastAPI resolves the string annotations here

from fmforge.serve.batcher import Batcher, Event
from fmforge.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    parse,
    server_error,
)

log = logging.getLogger("fmforge.serve")

MAX_BODY_BYTES = 1 << 20
DEFAULT_KEEPALIVE_S = 15.0  # under the 60 s idle timeout of nginx and most load balancers
KEEPALIVE = ": keep-alive\n\n"


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


def create_app(backend, batcher: Batcher, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, keepalive_s: float = DEFAULT_KEEPALIVE_S):
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.datastructures import Headers
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="fmforge", docs_url=None, redoc_url=None)

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                       f"{exc.detail}"))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # the last resort; routes log their own
        return error_response(server_error("the server failed", exc))

    def refusal(headers) -> APIError | None:
        """The answer to a /v1 request refused on its headers alone, if any."""
        if api_key is not None:
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                code="invalid_api_key", type_="authentication_error")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return APIError(413, f"request body of {int(length):,} bytes is over the limit of "
                            f"{max_body_bytes:,}", code="request_too_large")
        return None

    class Guard:
        """Key and body-size checks before any route runs (a plain ASGI middleware:
        routes get the server's own receive, which they watch for a hang-up)."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                error = refusal(Headers(scope=scope))
                if error is not None:
                    await error_response(error)(scope, receive, send)
                    return
            await self.inner(scope, receive, send)

    app.add_middleware(Guard)

    async def read_json(request: Request) -> Any:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise APIError(413, f"request body is over the limit of {max_body_bytes:,} bytes",
                               code="request_too_large")
        try:
            return json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise APIError(400, "the request body is nested too deeply to parse: send a JSON "
                           "object of the documented parameters") from None

    def check_model(name: str) -> None:
        if name != backend.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server has "
                           f"{backend.model_name!r}", param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        if batcher.failed is not None:
            return JSONResponse({"status": "failed", "reason": batcher.failed,
                                 "model": backend.model_name}, status_code=503)
        return {"status": "ok", "model": backend.model_name, "in_flight": batcher.in_flight,
                "decoding": batcher.decoding, "max_batch": batcher.max_batch,
                "max_queue": batcher.max_queue, "restarts": batcher.restarts}

    @app.get("/v1/models")
    async def models():
        # OpenAI's shape, plus the context the way vLLM (max_model_len) and others
        # (context_length) name it: clients, and the chat page, size requests by it.
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model",
                                            "created": backend.created, "owned_by": "fmforge",
                                            "context_length": backend.context,
                                            "max_model_len": backend.context}]}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files("fmforge.serve").joinpath("chat_page.html").read_text(encoding="utf-8")

    async def run_choices(req, prepare, *args):
        """Submit the request's n choices; returns their jobs and the prepared prompt
        (``prepare(*args, max_tokens, truncate)``, run in a worker thread). Capacity is
        checked before tokenizing (cheap) and again when submitting."""
        batcher.check_capacity(req.n)
        prepared = await asyncio.to_thread(prepare, *args, req.max_tokens, req.truncation == "auto")
        requests = [backend.make_request(prepared.ids, max_tokens=prepared.max_tokens,
                                         temperature=req.temperature, top_p=req.top_p,
                                         stop=req.stop_list + prepared.stops,
                                         seed=None if req.seed is None else req.seed + i)
                    for i in range(req.n)]
        return batcher.submit(requests), prepared

    async def collect(job) -> tuple[str, Event]:
        text = []
        while True:
            event: Event = await job.events.get()
            if event.error:
                raise event.error
            text.append(event.text)
            if event.finished:
                return "".join(text), event

    async def disconnected(request: Request) -> None:
        """Returns when the client closes its connection (the body has been read)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass  # nothing to do with other messages: only the disconnect ends the wait

    async def collect_all(request: Request, jobs) -> list[tuple[str, Event]]:
        """Every choice's text and last event; ClientGone if the client hangs up first."""
        tasks = [asyncio.create_task(collect(j)) for j in jobs]
        hangup = asyncio.create_task(disconnected(request))
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending | {hangup},
                                                   return_when=asyncio.FIRST_COMPLETED)
                pending.discard(hangup)
                for t in done - {hangup}:
                    t.result()  # raises the first choice's error
                if hangup in done:
                    raise ClientGone
            return [t.result() for t in tasks]
        finally:
            for t in [*tasks, hangup]:
                t.cancel()

    async def complete(request: Request, req, chat: bool, prepare, *args):
        jobs, prepared = await run_choices(req, prepare, *args)
        prompt_tokens = len(prepared.ids)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        headers = {}
        if req.truncation == "auto":  # what was dropped to fit the context (docs/serving.md)
            headers = ({"X-Dropped-Messages": str(prepared.dropped_messages)} if chat else
                       {"X-Dropped-Prompt-Tokens": str(prepared.dropped_prompt_tokens)})
        if req.stream:
            return StreamingResponse(stream(jobs, rid, created, chat),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              **headers})
        try:
            results = await collect_all(request, jobs)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; the slots are free
        finally:
            for j in jobs:
                batcher.cancel(j)  # a no-op for finished jobs; frees the rest on error or hang-up
        choices = []
        for i, (text, last) in enumerate(results):
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": last.finish_reason, "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": last.finish_reason,
                                "logprobs": None})
        completion_tokens = sum(last.completion_tokens for _, last in results)
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": created, "model": backend.model_name, "choices": choices,
                             "usage": {"prompt_tokens": prompt_tokens,
                                       "completion_tokens": completion_tokens,
                                       "total_tokens": prompt_tokens + completion_tokens}},
                            headers=headers)

    async def stream(jobs, rid: str, created: int, chat: bool) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = ({"role": "assistant", "content": ""} if first else
                         {"content": text} if text else {})
                choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created,
                                          "model": backend.model_name, "choices": [choice]}) + "\n\n"

        merged: asyncio.Queue = asyncio.Queue()

        async def pump(i, job):
            while True:
                event = await job.events.get()
                await merged.put((i, event))
                if event.finished:
                    return

        pumps = [asyncio.create_task(pump(i, j)) for i, j in enumerate(jobs)]
        getter = None
        open_ = len(jobs)
        try:
            if chat:
                for i in range(len(jobs)):
                    yield chunk(i, None, None, first=True)
            while open_:
                # Wait for the next event without cancelling the wait: after keepalive_s
                # of silence, send a comment and keep waiting.
                getter = getter or asyncio.ensure_future(merged.get())
                done, _ = await asyncio.wait({getter}, timeout=keepalive_s if keepalive_s > 0 else None)
                if not done:
                    yield KEEPALIVE
                    continue
                (i, event), getter = getter.result(), None
                if event.error:
                    # The stream has begun (status 200): the error is an event, as OpenAI sends it.
                    yield "data: " + json.dumps(event.error.body()) + "\n\n"
                    open_ -= 1
                    continue
                if event.text:
                    yield chunk(i, event.text, None)
                if event.finished:
                    open_ -= 1
                    yield chunk(i, None, event.finish_reason)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # a bug of ours mid-stream: the client hears of it, the log has it
            log.error("a stream failed", exc_info=True)
            yield "data: " + json.dumps(server_error("the stream failed", exc).body()) + "\n\n"
            yield "data: [DONE]\n\n"
        finally:
            # A client gone mid-stream closes this generator: free its slots now.
            for p in [*pumps, getter]:
                if p is not None:
                    p.cancel()
            for j in jobs:
                batcher.cancel(j)

    async def guarded(request: Request, work):
        """Run a route's work: an APIError is the answer; anything else is the
        server's own failure, logged with its traceback and answered with a 500."""
        try:
            return await work
        except APIError:
            raise
        except Exception as exc:
            log.error("POST %s failed", request.url.path, exc_info=True)
            raise server_error("the server failed", exc) from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await read_json(request))
        check_model(req.model)
        return await guarded(request, complete(request, req, False, backend.prepare_prompt, req.prompt))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse(ChatCompletionRequest, await read_json(request))
        check_model(req.model)
        messages = [m.model_dump(include={"role", "content"}) for m in req.messages]
        return await guarded(request, complete(request, req, True, backend.prepare_chat, messages))

    return app
