"""A run killed mid-training resumes from its latest checkpoint and reproduces,
step for step, the losses of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fmforge.config import load_config
from fmforge.pipeline import run_pipeline
from fmforge.train.checkpoint import list_checkpoints
from fmforge.train.metrics import read_metrics


def _train_cmd(cfg_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fmforge", "train", str(cfg_path), *extra]


def test_killed_run_resumes_exactly(tmp_path: Path, make_tiny_config):
    raw = make_tiny_config(tmp_path, train={"max_steps": 40, "checkpoint_every": 4, "log_every": 1,
                                       "eval_every": 20, "keep_checkpoints": 2})
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    run, _ = run_pipeline(cfg)  # reference: uninterrupted
    reference = {r["step"]: r["loss"] for r in read_metrics(run.metrics)}
    assert len(reference) == 40

    run.metrics.unlink()  # so the wait below sees only the new run's steps
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1"}
    proc = subprocess.Popen(_train_cmd(cfg_path, "--force"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [r["step"] for r in read_metrics(run.metrics)]
        if steps and steps[-1] >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out.decode()
    stopped_at = list_checkpoints(run.checkpoints)[-1][0]
    assert 6 <= stopped_at < 40, "the interrupted run saved a checkpoint where it stopped"
    assert run.stage_record("train") is None, "an interrupted stage is not marked complete"

    subprocess.run(_train_cmd(cfg_path), env=env, check=True, capture_output=True)
    resumed = {r["step"]: r["loss"] for r in read_metrics(run.metrics)}
    assert resumed == reference
