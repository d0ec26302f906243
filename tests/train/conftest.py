"""Fixtures shared by the in-process trainer tests (test_loop.py, test_loop_edges.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from fmforge.config import RunConfig, load_config
from fmforge.pipeline import run_pipeline
from fmforge.rundir import RunDir


@pytest.fixture(scope="session")
def _prepared(tmp_path_factory, make_tiny_config) -> Path:
    """The tiny config's data, tokenizer and tokens, built once. Under mutmut, with
    a mutant of the training modules (which cannot change these stages), once for
    all the mutants' test processes: the stages are cached, so a later process
    only finds them done."""
    if os.environ.get("MUTANT_UNDER_TEST", "").startswith("fmforge.train."):
        import fcntl
        import tempfile

        # one folder per user and per mutmut run (the mutants' parent process): another
        # user's folder is unwritable, and an earlier run's was built by other code
        root = Path(tempfile.gettempdir()) / f"fmforge-mutmut-train-tokens-{os.getuid()}-{os.getppid()}"
        root.mkdir(exist_ok=True)
        lock = open(root / ".lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds, the others wait
    else:
        root, lock = tmp_path_factory.mktemp("loop-prepared"), None
    path = root / "c.yaml"
    if not path.is_file():
        path.write_text(yaml.safe_dump(make_tiny_config(root)))
    cfg = load_config(path)
    run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    if lock is not None:
        lock.close()
    return Path(cfg.run_dir)


@pytest.fixture
def new_run(_prepared, tmp_path, make_tiny_config):
    """``new_run(name, **train)``: (config, run directory) of a run whose tokens are
    ready; training settings over the tiny config's (float32 everywhere, so the
    comparisons hold on any CPU)."""

    def make(name: str = "run", **train) -> tuple[RunConfig, RunDir]:
        root = tmp_path / name
        shutil.copytree(_prepared, root, ignore=shutil.ignore_patterns("checkpoints*", "metrics.jsonl", "tb"))
        raw = make_tiny_config(tmp_path / f"{name}-src",
                               train={"dtype": "float32", "tensorboard": False, "eval_every": 1000,
                                      "checkpoint_every": 1000, **train})
        raw["out_dir"] = str(root)
        return RunConfig.model_validate(raw), RunDir(root)

    return make


@pytest.fixture
def one_second_per_reading(monkeypatch):
    """The training loop's clock moves exactly one second at each reading (its own
    ``time`` module only), so the records' rounded seconds and throughputs are exact."""
    import itertools
    import time
    from types import SimpleNamespace

    import fmforge.train.loop as loop

    ticks = itertools.count()
    clock = SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.perf_counter = lambda: float(next(ticks))
    monkeypatch.setattr(loop, "time", clock)


@pytest.fixture
def nan_added_to_the_loss_of_step(monkeypatch):
    """``nan_added_to_the_loss_of_step(step)``: a NaN is added to the loss's value
    alone in the forward pass of training step ``step`` (1-based); the gradient, which
    does not depend on an added constant, stays that of the real loss."""
    import math

    import torch

    import fmforge.train.loop as loop

    def plant(step: int) -> None:
        forward = loop.Transformer.forward
        calls = {"n": 0}

        def forward_with_nan(self, *a, **kw):
            out = forward(self, *a, **kw)
            if self.training:
                calls["n"] += 1
                if calls["n"] == step:
                    return out + torch.tensor(math.nan)
            return out

        monkeypatch.setattr(loop.Transformer, "forward", forward_with_nan)

    return plant
