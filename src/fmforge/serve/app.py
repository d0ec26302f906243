"""The OpenAI-compatible HTTP server (FastAPI): ``/v1/models``,
``/v1/completions``, ``/v1/chat/completions`` (``stream: true`` as server-sent
events ending in ``data: [DONE]``), ``/health``, and a chat page at ``/``.

Errors follow OpenAI's shape (``{"error": {"message", "type", "param",
"code"}}``): 400 for invalid parameters or a prompt past the context, 401 for a
missing or wrong key when one is set, 404 for an unknown model or path, 413 for
an oversized body. Bad input is never a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import Request  # at module level: FastAPI resolves the string annotations here

from fmforge.serve.batcher import Batcher, Event
from fmforge.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse

MAX_BODY_BYTES = 1 << 20


def create_app(backend, batcher: Batcher, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES):
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="fmforge", docs_url=None, redoc_url=None)

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: "
                                       f"{exc.detail}", type_=kind))

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if api_key is not None:
                given = request.headers.get("authorization", "")
                token = given[7:] if given.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(token.encode(), api_key.encode()):
                    return error_response(APIError(
                        401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                        code="invalid_api_key", type_="authentication_error"))
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_body_bytes:
                return error_response(APIError(413, f"request body of {int(length):,} bytes is over "
                                               f"the limit of {max_body_bytes:,}",
                                               code="request_too_large"))
        return await call_next(request)

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

    def check_model(name: str) -> None:
        if name != backend.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server has "
                           f"{backend.model_name!r}", param="model", code="model_not_found")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": backend.model_name, "in_flight": batcher.in_flight}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model",
                                            "created": backend.created, "owned_by": "fmforge"}]}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files("fmforge.serve").joinpath("chat_page.html").read_text(encoding="utf-8")

    async def run_choices(req, prompt: str, extra_stops: list[str]):
        """Submit the request's n choices; returns their jobs (prompt checked first)."""
        prompt_tokens, max_tokens = backend.check_prompt(prompt, req.max_tokens)
        jobs = []
        for i in range(req.n):
            seed = None if req.seed is None else req.seed + i
            jobs.append(batcher.submit(backend.make_request(
                prompt, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                stop=req.stop_list + extra_stops, seed=seed)))
        return jobs, prompt_tokens

    async def collect(job) -> tuple[str, Event]:
        text = []
        while True:
            event: Event = await job.events.get()
            if event.error:
                raise APIError(400, event.error)
            text.append(event.text)
            if event.finished:
                return "".join(text), event

    async def complete(request: Request, req, prompt: str, extra_stops: list[str], chat: bool):
        jobs, prompt_tokens = await run_choices(req, prompt, extra_stops)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if req.stream:
            return StreamingResponse(stream(request, jobs, rid, created, chat),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            results = await asyncio.gather(*(collect(j) for j in jobs))
        finally:
            for j in jobs:
                batcher.cancel(j)  # a no-op for finished jobs; frees the rest on error
        choices = []
        for i, (text, last) in enumerate(results):
            if chat:
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": last.finish_reason, "logprobs": None})
            else:
                choices.append({"index": i, "text": text, "finish_reason": last.finish_reason,
                                "logprobs": None})
        completion_tokens = sum(last.completion_tokens for _, last in results)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": created, "model": backend.model_name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    async def stream(request: Request, jobs, rid: str, created: int, chat: bool) -> AsyncIterator[str]:
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
        open_ = len(jobs)
        try:
            if chat:
                for i in range(len(jobs)):
                    yield chunk(i, None, None, first=True)
            while open_:
                i, event = await merged.get()
                if event.error:
                    yield "data: " + json.dumps(APIError(400, event.error).body()) + "\n\n"
                    open_ -= 1
                    continue
                if event.text:
                    yield chunk(i, event.text, None)
                if event.finished:
                    open_ -= 1
                    yield chunk(i, None, event.finish_reason)
            yield "data: [DONE]\n\n"
        finally:
            # A client gone mid-stream closes this generator: free its slots now.
            for p in pumps:
                p.cancel()
            for j in jobs:
                batcher.cancel(j)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse(CompletionRequest, await read_json(request))
        check_model(req.model)
        return await complete(request, req, req.prompt, [], chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse(ChatCompletionRequest, await read_json(request))
        check_model(req.model)
        messages = [m.model_dump(include={"role", "content"}) for m in req.messages]
        prompt, stops = backend.chat_prompt(messages)
        return await complete(request, req, prompt, stops, chat=True)

    return app
