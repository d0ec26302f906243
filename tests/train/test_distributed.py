"""torchrun with 2 processes on CPU (gloo): DDP and FSDP2 train exactly like one
process with the same global batch, and a 2-process run killed with SIGKILL
resumes on one process with the same losses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fmforge.config import load_config
from fmforge.pipeline import run_pipeline
from fmforge.rundir import read_metrics

pytestmark = [pytest.mark.dist, pytest.mark.slow]

STEPS = 10
TRAIN = {"max_steps": STEPS, "micro_batch_size": 2, "global_batch_tokens": 2 * 32 * 2,
         "log_every": 1, "eval_every": 1000, "checkpoint_every": 4, "device": "cpu",
         "num_threads": 1, "tensorboard": False}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_tiny_config):
    """A run directory with data, tokenizer and tokens, copied by each test."""
    root = tmp_path_factory.mktemp("dist")
    raw = make_tiny_config(root, train=dict(TRAIN))
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_pipeline(load_config(path), stages=("data", "tokenizer", "tokenize"))
    return root, raw


def _copy(prepared, name: str, **train) -> Path:
    root, raw = prepared
    target = root / name
    shutil.copytree(root / "run", target)
    cfg = {**raw, "out_dir": str(target), "train": {**raw["train"], **train}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    return {**os.environ, "FMFORGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _torchrun(cfg: Path, *overrides: str, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fmforge", "train", str(cfg), *overrides]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **popen)


def _single(cfg: Path) -> None:
    subprocess.run([sys.executable, "-m", "fmforge", "train", str(cfg)], env=_env(), check=True,
                   capture_output=True, timeout=300)


def _losses(cfg: Path) -> dict[int, float]:
    out = Path(yaml.safe_load(cfg.read_text())["out_dir"])
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def reference(prepared) -> dict[int, float]:
    cfg = _copy(prepared, "single")
    _single(cfg)
    losses = _losses(cfg)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_reproduce_one_with_the_same_global_batch(prepared, reference, parallel):
    cfg = _copy(prepared, parallel, parallel=parallel)
    proc = _torchrun(cfg)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert f"{parallel} on 2 processes" in out.decode()
    losses = _losses(cfg)
    assert sorted(losses) == sorted(reference)
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step


def test_a_killed_two_process_run_resumes_on_one_process(prepared, reference):
    cfg = _copy(prepared, "killed", parallel="fsdp")  # sharded checkpoints, resharded on resume
    metrics = Path(yaml.safe_load(cfg.read_text())["out_dir"]) / "metrics.jsonl"
    proc = _torchrun(cfg)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in read_metrics(metrics)]
        if steps and steps[-1] >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers, no chance to save
    proc.wait(timeout=30)
    ckpts = sorted(p.name for p in (metrics.parent / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts and ckpts[-1] < f"step-{STEPS:06d}", ckpts
    _single(cfg)
    losses = _losses(cfg)
    assert sorted(losses) == sorted(reference)
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step
