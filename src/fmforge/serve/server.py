"""Running the server: the backend, its batching thread, and uvicorn."""

from __future__ import annotations

from pathlib import Path

from fmforge.inference.loading import TrainedModel
from fmforge.progress import log
from fmforge.serve.app import create_app
from fmforge.serve.backend import EngineBackend
from fmforge.serve.batcher import Batcher


def build_app(trained: TrainedModel, model_name: str, api_key: str | None = None,
              tokenizer_dir: Path | None = None, max_batch: int = 16):
    """The ASGI app and its batcher (close the batcher when done)."""
    backend = EngineBackend(trained, model_name, max_batch=max_batch, tokenizer_dir=tokenizer_dir)
    batcher = Batcher(backend.engine, max_batch=max_batch)
    return create_app(backend, batcher, api_key=api_key), batcher


def serve(trained: TrainedModel, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, tokenizer_dir: Path | None = None, max_batch: int = 16) -> None:
    import uvicorn

    app, batcher = build_app(trained, model_name, api_key, tokenizer_dir, max_batch)
    where = f"http://{host}:{port}"
    log(f"serving {model_name!r} at {where}/v1 (chat page: {where}/)"
        + ("; API key required" if api_key else ""))
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log("[yellow]listening beyond this machine without an API key: anyone who can reach "
            "it can use the model (set --api-key or FMFORGE_API_KEY)[/yellow]")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        batcher.close()
