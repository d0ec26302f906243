"""What may set a checkpoint aside, and what must not.

Only real damage (a truncated or corrupt file, bad JSON, a missing file of a
complete checkpoint) makes the trainer fall back to the checkpoint before. Any
other failure while loading (out of memory, an I/O error, a bug in our own code)
stops the run with the error and leaves every checkpoint where it was: renaming
good checkpoints one after another would throw away days of training.

A sharded (DCP) checkpoint saved and consolidated in this process resumes with
its optimizer state: the consolidated ``model.safetensors`` beside ``dcp/`` must
not make the resume look for a single-file checkpoint's ``optimizer.pt``.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import fmforge.train.checkpoint as checkpoint
import fmforge.train.loop as loop
from fmforge.config import ModelConfig, TrainConfig, load_config
from fmforge.model.transformer import Transformer
from fmforge.pipeline import run_pipeline, stage_fingerprint, training_lineage
from fmforge.rundir import RunDir, read_metrics
from fmforge.train.checkpoint import (
    DCP_DIR,
    consolidate,
    list_checkpoints,
    load_checkpoint,
    save_sharded_checkpoint,
)
from fmforge.train.optim import build_optimizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_tiny_config):
    """A finished 12-step run with checkpoints at steps 8, 10 and 12."""
    root = tmp_path_factory.mktemp("ckfaults")
    raw = make_tiny_config(root, train={"max_steps": 12, "checkpoint_every": 2, "keep_checkpoints": 3,
                                        "eval_every": 6, "tensorboard": False})
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(raw))
    run, _ = run_pipeline(load_config(path))
    losses = {r["step"]: r["loss"] for r in read_metrics(run.metrics) if "loss" in r}
    return root, raw, losses


def _copy(trained, tmp_path: Path):
    """A copy of the finished run, and what the trainer needs to resume it."""
    root, raw, _ = trained
    target = tmp_path / "run"
    shutil.copytree(root / "run", target)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**raw, "out_dir": str(target)}))
    cfg = load_config(path)
    run = RunDir(target)
    fp = stage_fingerprint(cfg, run, "train", None)
    lineage = training_lineage(cfg, run.stage_record("tokenize")["output"])
    return cfg, run, fp, lineage


def _listing(run: RunDir) -> list[str]:
    return sorted(p.name for p in run.checkpoints.iterdir())


def _tree(run: RunDir) -> dict[str, bytes]:
    return {str(p.relative_to(run.checkpoints)): p.read_bytes()
            for p in sorted(run.checkpoints.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failure", [
    MemoryError("out of memory"),
    OSError(errno.EIO, "Input/output error"),
    RuntimeError("a bug in our own loading code"),
], ids=["out-of-memory", "io-error", "our-bug"])
def test_a_failure_that_is_not_damage_stops_and_touches_no_checkpoint(trained, tmp_path, monkeypatch,
                                                                       failure):
    cfg, run, fp, lineage = _copy(trained, tmp_path)
    before = _tree(run)

    def failing_load(*args, **kwargs):
        raise failure

    # Deep inside the loader, where a real out-of-memory or EIO would come from.
    monkeypatch.setattr(checkpoint, "load_model", failing_load)
    with pytest.raises(type(failure), match=str(failure.args[-1])):
        loop.run_train_stage(cfg, run, fp, lineage=lineage)
    assert _listing(run) == ["step-000008", "step-000010", "step-000012"]
    assert _tree(run) == before  # not a byte moved
    assert not (run.root / "checkpoints.previous").exists()


def test_an_io_error_reading_the_trainer_state_stops_and_touches_nothing(trained, tmp_path, monkeypatch):
    cfg, run, fp, lineage = _copy(trained, tmp_path)
    real = loop.load_trainer_state

    def eio(ckpt):
        if Path(ckpt).name == "step-000012":
            raise OSError(errno.EIO, "Input/output error")
        return real(ckpt)

    monkeypatch.setattr(loop, "load_trainer_state", eio)
    with pytest.raises(OSError, match="Input/output error"):
        loop.run_train_stage(cfg, run, fp, lineage=lineage)
    assert _listing(run) == ["step-000008", "step-000010", "step-000012"]


def _corrupt_optimizer(ck: Path) -> None:
    data = bytearray((ck / "optimizer.pt").read_bytes())
    data[:4096] = bytes(4096)  # a block of the file zeroed (a bad sector), size unchanged
    (ck / "optimizer.pt").write_bytes(bytes(data))


DAMAGE = {
    "truncated-weights": lambda ck: (ck / "model.safetensors").write_bytes(
        (ck / "model.safetensors").read_bytes()[:-100]),
    "corrupt-optimizer": _corrupt_optimizer,
    "missing-optimizer": lambda ck: (ck / "optimizer.pt").unlink(),
    "bad-json-state": lambda ck: (ck / "trainer_state.json").write_text('{"step": 12, "lin'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_real_damage_sets_the_checkpoint_aside_and_resumes_from_the_one_before(trained, tmp_path, damage):
    cfg, run, fp, lineage = _copy(trained, tmp_path)
    DAMAGE[damage](run.checkpoints / "step-000012")
    loop.run_train_stage(cfg, run, fp, lineage=lineage)
    assert _listing(run) == ["step-000008", "step-000010", "step-000012", "step-000012.unreadable"]
    # Steps 11 and 12 were trained again from step 10: the same losses.
    redone = {r["step"]: r["loss"] for r in read_metrics(run.metrics) if "loss" in r}
    assert redone == trained[2]


# ------------------------------------------------------- DCP in one process


def _model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=200, d_model=32, n_layers=2, n_heads=4,
                                   n_kv_heads=2, seq_len=16))


def _trained_pair(seed: int):
    model = _model(seed)
    opt = build_optimizer(model, TrainConfig(max_steps=10, warmup_steps=0))
    for _ in range(2):
        x = torch.randint(0, 200, (2, 16))
        model(x, x).backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_a_consolidated_sharded_checkpoint_resumes_with_its_optimizer_state(tmp_path):
    model, opt = _trained_pair(0)
    ck = save_sharded_checkpoint(tmp_path, 5, model, opt, {"tokens": 9}, keep=2, is_main=True,
                                 barrier=lambda: None)
    assert (ck / DCP_DIR / ".metadata").is_file() and not (ck / "model.safetensors").exists()
    written = consolidate(ck, _model(1))
    # The consolidated file holds exactly the trained weights ...
    weights = load_file(str(written))
    for name, tensor in model.state_dict().items():
        if name in weights:
            assert torch.equal(weights[name], tensor), name
    # ... and the step still resumes with the optimizer's moments (from dcp/).
    other, other_opt = _trained_pair(2)
    state = load_checkpoint(ck, other, other_opt)
    assert state["step"] == 5 and state["tokens"] == 9
    for a, b in zip(opt.state_dict()["state"].values(), other_opt.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    x = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    assert list_checkpoints(tmp_path) == [(5, ck)]


def test_a_truncated_sharded_file_is_damage_and_a_whole_one_is_not(tmp_path):
    model, opt = _trained_pair(0)
    ck = save_sharded_checkpoint(tmp_path, 5, model, opt, {}, keep=2, is_main=True, barrier=lambda: None)
    assert checkpoint.checkpoint_damage(ck) is None
    shard = max((ck / DCP_DIR).glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    found = checkpoint.checkpoint_damage(ck)
    assert found is not None and shard.name in found
    with pytest.raises(Exception):
        load_checkpoint(ck, *_trained_pair(1))


def test_a_whole_single_file_checkpoint_shows_no_damage(trained, tmp_path):
    _, run, _, _ = _copy(trained, tmp_path)
    for _, ck in list_checkpoints(run.checkpoints):
        assert checkpoint.checkpoint_damage(ck) is None
    ck = run.checkpoints / "step-000012"
    json.loads((ck / "trainer_state.json").read_text())  # sanity: the state is JSON
    (ck / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes() + b"\0" * 8)
    assert "model.safetensors" in checkpoint.checkpoint_damage(ck)
