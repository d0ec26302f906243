"""torchrun with 2 processes on CPU (gloo): DDP and FSDP2 train exactly like one
process with the same global batch, and a 2-process run killed with SIGKILL
resumes on one process with the same losses."""

from __future__ import annotations

import json
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
         "num_threads": 1, "tensorboard": False,
         # Exact agreement is a float32 promise: under bf16, FSDP's mixed-precision
         # policy casts the parameters while one process autocasts the matmuls, so
         # the two round differently (2e-5 relative at step 2 on an AVX512-BF16 CPU).
         "dtype": "float32"}


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


def _torchrun(cfg: Path, *overrides: str, nproc: int = 2, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "fmforge", "train", str(cfg), *overrides]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **popen)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc, field 4 of stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _single(cfg: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fmforge", "train", str(cfg)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


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


@pytest.mark.parametrize("parallel,nproc,extra", [
    ("ddp", 2, {}), ("fsdp", 2, {}), ("fsdp", 1, {}),
    # HSDP as two nodes of two: a 2 × 2 mesh, each pair shards, the pairs replicate.
    # One window per process keeps the global batch of 4 windows.
    ("hsdp", 4, {"replicate_degree": 2, "micro_batch_size": 1})])
def test_torchrun_reproduces_one_process_with_the_same_global_batch(prepared, reference, parallel,
                                                                   nproc, extra):
    cfg = _copy(prepared, f"{parallel}{nproc}", parallel=parallel, **extra)
    proc = _torchrun(cfg, nproc=nproc)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert f"{parallel} on {nproc} process(es)" in out.decode()
    if parallel == "hsdp":
        assert "(2 replicas × 2 shards)" in out.decode()
    if parallel in ("fsdp", "hsdp"):  # sharded checkpoints, even on one process
        out_dir = Path(yaml.safe_load(cfg.read_text())["out_dir"])
        assert (out_dir / "checkpoints" / f"step-{STEPS:06d}" / "dcp" / ".metadata").is_file()
    losses = _losses(cfg)
    assert sorted(losses) == sorted(reference)
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step


def test_a_killed_two_process_run_consolidated_resumes_on_one_process(prepared, reference):
    """The Slurm example's ending: an FSDP run killed, its checkpoint consolidated
    (``model.safetensors`` beside ``dcp/``), then resumed on one process."""
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
    # Both workers and torchrun, with no chance to save (torchrun starts each
    # worker in a session of its own, so they are found as its children).
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    checkpoints = metrics.parent / "checkpoints"
    ckpts = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))
    assert ckpts and ckpts[-1] < f"step-{STEPS:06d}", ckpts
    done = subprocess.run([sys.executable, "-m", "fmforge", "checkpoint", "consolidate", str(metrics.parent)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (checkpoints / ckpts[-1] / "model.safetensors").is_file()
    out = _single(cfg)
    assert f"resuming training from {checkpoints / ckpts[-1]}" in " ".join(out.split()), out[-3000:]
    assert not [p.name for p in checkpoints.iterdir() if "unreadable" in p.name]
    assert not (metrics.parent / "checkpoints.previous").exists()
    losses = _losses(cfg)
    assert sorted(losses) == sorted(reference)
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step


def test_a_gradient_gone_bad_on_one_process_is_skipped_by_every_process(prepared, reference):
    """Rank 1 alone gets a NaN in its gradient at step 3, after DDP's all-reduce (a
    flipped bit, one faulty GPU). Every process must skip that step: one that stepped
    while the other skipped would hold different weights from then on, and DDP never
    compares them again."""
    cfg = _copy(prepared, "poisoned", parallel="ddp")
    digests = cfg.parent / "poisoned-digests"
    worker = Path(__file__).with_name("nonfinite_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(worker), str(cfg)]
    done = subprocess.run(cmd, env={**_env(), "POISON_STEP": "3", "DIGEST_OUT": str(digests)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    per_rank = [json.loads(Path(f"{digests}.{rank}.json").read_text()) for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == STEPS
    # The weights before every step, step 4 on included, are the same on both processes.
    assert per_rank[0] == per_rank[1]
    records = {r["step"]: r for r in read_metrics(Path(yaml.safe_load(cfg.read_text())["out_dir"])
                                                  / "metrics.jsonl")}
    assert records[3].get("skipped") is True and records[3]["reason"] == "non-finite gradient norm"
    assert not any(r.get("skipped") for s, r in records.items() if s != 3)
    # Steps 1-3 saw the reference's weights; a skipped step leaves them unchanged, so
    # step 4 starts from step 3's weights and its loss differs from the reference's.
    for step in (1, 2, 3):
        assert records[step]["loss"] == pytest.approx(reference[step], rel=1e-5)
    assert per_rank[0][3] == per_rank[0][2]
