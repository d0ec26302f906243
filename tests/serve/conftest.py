"""Shared by the server tests: one tiny trained model for the session, a way to
run an app on a real loopback port, and an engine whose failures and speed a test
controls (the real engine underneath, so what it does produce is real)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from fmforge.config import load_config
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import load_trained
from fmforge.pipeline import run_pipeline

KEY = "test-key"


def _run_root(tmp_path_factory) -> tuple[Path, contextlib.AbstractContextManager]:
    """Where the session's tiny model is trained, and a lock to hold while training.

    Under mutmut, with a mutant of the server itself under test, every mutant's
    test process would train the same model again (most of its time): the model
    is then kept in one directory shared by the mutants (the stages are cached, so
    the second process only loads it). A server mutant cannot change the data,
    tokenizer or training stages, so the model is what each process would train.
    Otherwise (``make test``, or a mutant of a module training runs) it is trained
    afresh in the session's temporary directory."""
    if not os.environ.get("MUTANT_UNDER_TEST", "").startswith("fmforge.serve."):
        return tmp_path_factory.mktemp("serve"), contextlib.nullcontext()
    # one folder per user and per mutmut run (the mutants' parent process): another
    # user's folder is unwritable, and an earlier run's was built by other code
    root = Path(tempfile.gettempdir()) / f"fmforge-mutmut-serve-model-{os.getuid()}-{os.getppid()}"
    root.mkdir(exist_ok=True)

    @contextlib.contextmanager
    def lock():
        with open(root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # one process trains, the others wait and load
            yield

    return root, lock()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, make_tiny_config):
    root, lock = _run_root(tmp_path_factory)
    with lock:
        path = root / "c.yaml"
        if not path.is_file():  # (a shared directory has its corpus and config already)
            raw = make_tiny_config(root, train={"max_steps": 40})
            raw["model"]["seq_len"] = 64
            path.write_text(yaml.safe_dump(raw))
        run, _ = run_pipeline(load_config(path), stages=("data", "tokenizer", "tokenize", "train"))
    return run, load_trained(run, device="cpu")


@contextlib.contextmanager
def _running(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        timeout_graceful_shutdown=2))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.02)
    assert srv.started, "the test server did not start within 30 s"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def _greedy(model, prompt: str, n: int, stop=()):
    """What the engine alone generates, greedily (a GenerationResult): the reference
    a served answer must equal."""
    return Engine(model).generate([GenerationRequest(prompt=prompt, max_new_tokens=n,
                                                     temperature=0, stop=list(stop))])[0]


@pytest.fixture(scope="session")
def server(trained):
    """The shared server: API key KEY, 8 sequences decoded together."""
    from fmforge.serve.server import build_app

    run, model = trained
    app, batcher = build_app(model, "tiny", api_key=KEY, tokenizer_dir=run.tokenizer, max_batch=8)
    with _running(app) as base:
        yield base, batcher, model
    batcher.close()


@pytest.fixture(scope="session")
def running():
    """``with running(app) as base_url:`` serves an app on a free loopback port."""
    return _running


@pytest.fixture(scope="session")
def greedy():
    """``greedy(model, prompt, n, stop=())``: the engine's own greedy GenerationResult."""
    return _greedy


@pytest.fixture(scope="session")
def faulty():
    """The FaultyEngine class: wrap a batcher's engine to inject failures."""
    return FaultyEngine


class FaultyEngine:
    """The real engine with injected failures: ``fail["add"|"step"|"cancel"] = k``
    makes the next k calls raise RuntimeError; ``delay`` seconds of sleep before
    each step (``slow_steps``: only that many steps, None: all) stand for a slow
    model or a long prefill; after ``pause()`` a step does nothing (the sequences
    admitted stay where they are, as behind a prefill that never ends) until
    ``resume()``, so a test can line requests up without racing the clock."""

    def __init__(self, engine):
        self._engine = engine
        self.fail = {"add": 0, "step": 0, "cancel": 0}
        self.delay = 0.0
        self.slow_steps: int | None = None
        self.steps = 0
        self._go = threading.Event()
        self._go.set()

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def _maybe_fail(self, what: str) -> None:
        if self.fail[what] > 0:
            self.fail[what] -= 1
            raise RuntimeError(f"injected {what} failure")

    def add(self, request):
        self._maybe_fail("add")
        return self._engine.add(request)

    def cancel(self, seq_id):
        self._maybe_fail("cancel")
        return self._engine.cancel(seq_id)

    def step(self):
        if not self._go.is_set():
            time.sleep(0.005)
            return []
        self.steps += 1
        if self.delay and (self.slow_steps is None or self.steps <= self.slow_steps):
            time.sleep(self.delay)
        self._maybe_fail("step")
        return self._engine.step()
