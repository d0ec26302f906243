"""Running the server: the backend, its batching thread, and uvicorn.

When the batching thread gives up (see batcher.py), ``serve`` stops uvicorn and
raises WorkerFailed, so ``fmforge serve`` exits non-zero for a supervisor to
restart it; until it has stopped, /health answers 503."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from fmforge.inference.loading import TrainedModel
from fmforge.progress import log
from fmforge.serve.app import DEFAULT_KEEPALIVE_S, create_app
from fmforge.serve.backend import EngineBackend
from fmforge.serve.batcher import DEFAULT_MAX_QUEUE, Batcher


class WorkerFailed(RuntimeError):
    """The generation worker gave up; the server has stopped."""


def build_app(trained: TrainedModel, model_name: str, api_key: str | None = None,
              tokenizer_dir: Path | None = None, max_batch: int = 16,
              max_queue: int = DEFAULT_MAX_QUEUE, keepalive_s: float = DEFAULT_KEEPALIVE_S,
              on_fatal: Callable[[str], None] | None = None):
    """The ASGI app and its batcher (close the batcher when done). ``on_fatal(reason)``
    is called once if the batching thread gives up."""
    backend = EngineBackend(trained, model_name, max_batch=max_batch, tokenizer_dir=tokenizer_dir)
    batcher = Batcher(backend.engine, max_batch=max_batch, max_queue=max_queue, on_fatal=on_fatal)
    return create_app(backend, batcher, api_key=api_key, keepalive_s=keepalive_s), batcher


def _log_to_stderr() -> None:
    """The server's own log (failures with their tracebacks) on stderr, with times."""
    logger = logging.getLogger("fmforge.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def serve(trained: TrainedModel, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, tokenizer_dir: Path | None = None, max_batch: int = 16,
          max_queue: int = DEFAULT_MAX_QUEUE, keepalive_s: float = DEFAULT_KEEPALIVE_S) -> None:
    """Serve until interrupted; raises WorkerFailed if the batching thread gives up."""
    import uvicorn

    _log_to_stderr()
    reasons: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        reasons.append(reason)
        if server is not None:
            server.should_exit = True

    app, batcher = build_app(trained, model_name, api_key, tokenizer_dir, max_batch, max_queue,
                             keepalive_s, on_fatal=on_fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    server.should_exit = bool(reasons)
    where = f"http://{host}:{port}"
    log(f"serving {model_name!r} at {where}/v1 (chat page: {where}/); {max_batch} sequences decoded "
        f"together, {max_queue} more may wait" + ("; API key required" if api_key else ""))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log("[yellow]listening beyond this machine without an API key: anyone who can reach "
            "it can use the model (set --api-key or FMFORGE_API_KEY)[/yellow]")
    try:
        server.run()
    finally:
        batcher.close()
    if reasons:
        raise WorkerFailed(f"the generation worker gave up ({reasons[0]}); the server stopped so "
                           "that a supervisor (systemd, Kubernetes, docker --restart) starts it afresh")
