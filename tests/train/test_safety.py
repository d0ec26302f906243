"""A step that cannot poison the run: non-finite steps are skipped before they
reach the weights, a damaged latest checkpoint is set aside, and one trainer
holds a run at a time."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import fmforge.train.loop as loop
from fmforge.config import load_config
from fmforge.pipeline import run_pipeline, stage_fingerprint, training_lineage
from fmforge.rundir import RunLockedError, read_metrics, run_lock
from fmforge.train.checkpoint import list_checkpoints


def _config(tmp_path: Path, make_tiny_config, **train) -> Path:
    raw = make_tiny_config(tmp_path, train={"max_steps": 12, "checkpoint_every": 2,
                                            "keep_checkpoints": 3, "eval_every": 6, **train})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _inject_infinite_gradient(monkeypatch, at_steps: set[int]):
    """Make the gradient of one weight infinite in the backward pass of the given
    (1-based) steps; the loss itself stays finite."""
    build = loop.build_model
    calls = {"n": 0}

    def build_with_hook(cfg, device):
        model = build(cfg, device)
        weight = next(model.parameters())

        def hook(grad):
            calls["n"] += 1
            return grad * math.inf if calls["n"] in at_steps else grad

        weight.register_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model", build_with_hook)


def test_an_infinite_gradient_skips_the_step_and_leaves_weights_finite(
        tmp_path, make_tiny_config, monkeypatch):
    _inject_infinite_gradient(monkeypatch, at_steps={5})
    run, _ = run_pipeline(load_config(_config(tmp_path, make_tiny_config)))
    records = read_metrics(run.metrics)
    skipped = [r for r in records if r.get("skipped")]
    assert [r["step"] for r in skipped] == [5]
    assert skipped[0]["reason"] == "non-finite gradient norm" and skipped[0]["loss"] is not None
    assert run.stage_record("train")["summary"]["skipped_steps"] == 1
    final = list_checkpoints(run.checkpoints)[-1][1]
    weights = load_file(str(final / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    # AdamW took 11 steps of 12: the skipped one never reached the optimizer.
    optim = torch.load(final / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optim["state"].values()} == {11}
    assert all(math.isfinite(r["loss"]) for r in records if not r.get("skipped"))


def test_consecutive_skips_stop_the_run_and_keep_the_last_good_checkpoint(
        tmp_path, make_tiny_config, monkeypatch):
    _inject_infinite_gradient(monkeypatch, at_steps=set(range(5, 100)))
    cfg = load_config(_config(tmp_path, make_tiny_config, max_skipped_steps=3))
    with pytest.raises(loop.TrainingDiverged, match="3 consecutive steps"):
        run_pipeline(cfg)
    run_root = Path(cfg.run_dir)
    steps = [s for s, _ in list_checkpoints(run_root / "checkpoints")]
    assert steps == [2, 4, 6]  # stopped at step 7
    good = load_file(str(run_root / "checkpoints" / "step-000004" / "model.safetensors"))
    after = load_file(str(run_root / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in after.values())
    # Steps 5 and 6 were skipped: the weights saved at 6 are those of step 4.
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_a_truncated_latest_checkpoint_is_set_aside_and_the_one_before_used(
        tmp_path, make_tiny_config):
    cfg_path = _config(tmp_path, make_tiny_config)
    reference, _ = run_pipeline(load_config(cfg_path))
    losses = {r["step"]: r["loss"] for r in read_metrics(reference.metrics)}
    # Damage the final checkpoint, then train again: it resumes from step 10.
    cfg = load_config(cfg_path)
    ckpts = dict(list_checkpoints(reference.checkpoints))
    latest = ckpts[12]
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 2])
    # The train stage is recorded complete; call the trainer as a resume would.

    fp = stage_fingerprint(cfg, reference, "train", None)
    up = reference.stage_record("tokenize")["output"]
    loop.run_train_stage(cfg, reference, fp, lineage=training_lineage(cfg, up))
    names = sorted(p.name for p in reference.checkpoints.iterdir())
    assert "step-000012.unreadable" in names
    assert "step-000012" in names  # redone from step 10
    redone = {r["step"]: r["loss"] for r in read_metrics(reference.metrics)}
    assert redone == losses


def test_a_second_trainer_on_the_same_run_refuses_and_names_the_holder(tmp_path, tiny_config_file):
    run_root = tmp_path / "run"
    with run_lock(run_root, "fmforge train test"):
        result = subprocess.run([sys.executable, "-m", "fmforge", "run", str(tiny_config_file)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert "is in use by process" in result.stderr
        assert str(os.getpid()) in result.stderr
        # The same refusal in-process: taking the held lock raises at once.
        with pytest.raises(RunLockedError, match="fmforge train test"):
            run_lock(run_root, "again").__enter__()


def test_a_crashed_holder_leaves_no_stuck_lock(tmp_path):
    code = ("import os, sys; from fmforge.rundir import run_lock\n"
            f"with run_lock({str(tmp_path)!r}, 'crash'):\n    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    assert "crash" in (tmp_path / ".lock").read_text()
    with run_lock(tmp_path, "next"):  # the kernel released the dead process's lock
        assert "next" in (tmp_path / ".lock").read_text()


def test_fp16_with_its_gradient_scaler_also_stops_a_diverged_run(tmp_path, make_tiny_config, monkeypatch):
    """Under float16 the gradient scaler skips overflowing steps and halves its
    scale; an overflow that a lower scale cannot cure (here every gradient is
    infinite from step 5 on) must still stop the run, as in float32 and bf16.
    Float16 training needs CUDA, so the trainer is told it has float16 here:
    the scaler itself runs on the CPU."""
    _inject_infinite_gradient(monkeypatch, at_steps=set(range(5, 1000)))
    monkeypatch.setattr(loop, "resolve_dtype", lambda device, cfg: "float16")
    cfg = load_config(_config(tmp_path, make_tiny_config, max_steps=60, checkpoint_every=4,
                              eval_every=1000, max_skipped_steps=3, warmup_steps=2))
    with pytest.raises(loop.TrainingDiverged, match="3 consecutive steps"):
        run_pipeline(cfg)
    records = read_metrics(Path(cfg.run_dir) / "metrics.jsonl")
    skipped = [r["step"] for r in records if r.get("skipped")]
    # The scaler halves its scale of 2^16 at each overflow: 16 overflows bring it to
    # 1, after which 3 more count as divergence.
    assert skipped == list(range(5, 5 + 16 + 3))
    steps = [s for s, _ in list_checkpoints(Path(cfg.run_dir) / "checkpoints")]
    assert steps and steps[-1] <= 20  # the last good weights are kept; training stopped early
