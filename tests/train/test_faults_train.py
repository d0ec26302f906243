"""Fault injection for training (marker ``faults``; ``make faults`` runs them all).

- kill -9 at ten random moments of a 2-process DDP run (in the middle of a step,
  of a checkpoint save, of the start-up): after each resume the losses are those
  of the uninterrupted run, and no checkpoint is ever set aside;
- the disk fills while a checkpoint is written: a clear error naming the
  directory and what to do, the previous checkpoint intact, and a resume from it
  once there is space again gives the uninterrupted run's losses;
- a read-only run directory: reading commands (eval's figures, generate) work,
  writing ones stop with a message naming the directory.

The disk-full and read-only cases mount a small tmpfs, which needs root (CI runs
as root); they skip elsewhere.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fmforge.rundir import read_metrics

pytestmark = [pytest.mark.faults, pytest.mark.slow]
# The kill test launches torchrun (2 processes): also `dist`, so that runs which
# cannot see into subprocesses (mutmut) leave it out.

STEPS = 60
TRAIN = {"max_steps": STEPS, "micro_batch_size": 2, "global_batch_tokens": 2 * 32 * 2,
         "log_every": 1, "eval_every": 1000, "checkpoint_every": 2, "keep_checkpoints": 2,
         "device": "cpu", "num_threads": 1, "tensorboard": False, "dtype": "float32",
         "warmup_steps": 2}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_tiny_config):
    """Data, tokenizer and tokens of a tiny run, and the losses of an
    uninterrupted one-process run with the same global batch."""
    from fmforge.config import load_config
    from fmforge.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("faults")
    raw = make_tiny_config(root, train=dict(TRAIN))
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_pipeline(load_config(path), stages=("data", "tokenizer", "tokenize"))
    reference = _copy(root, raw, "reference")
    _fmforge("train", str(reference))
    losses = _losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return root, raw, losses


def _copy(root: Path, raw: dict, name: str, parent: Path | None = None, **train) -> Path:
    target = (parent or root) / name
    shutil.copytree(root / "run", target)
    cfg = {**raw, "out_dir": str(target), "train": {**raw["train"], **train}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    return {**os.environ, "FMFORGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _fmforge(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fmforge", *args], env=_env(),
                          capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _out_dir(cfg: Path) -> Path:
    return Path(yaml.safe_load(cfg.read_text())["out_dir"])


def _losses(cfg: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(_out_dir(cfg) / "metrics.jsonl") if "loss" in r}


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc: field 4 of stat is the parent)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        tree += children
        frontier = children
    return tree


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in _process_tree(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it exited on its own between the listing and the kill: that is the point
    proc.wait(timeout=60)


@pytest.mark.dist
def test_kill_9_at_ten_random_moments_of_a_ddp_run_changes_no_loss(prepared):
    root, raw, reference = prepared
    cfg = _copy(root, raw, "killed", parallel="ddp")
    out = _out_dir(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fmforge", "train", str(cfg)]
    rng = random.Random(17)
    # Ten moments: eight at steps drawn across the run (each caught a few
    # milliseconds after the step is logged: inside the next step, or inside the
    # save of an even step's checkpoint) and two during the start-up.
    plan = sorted(rng.sample(range(3, STEPS - 2), 8)) + [None, None]
    rng.shuffle(plan)
    plan = sorted(t for t in plan if t is not None)
    plan.insert(rng.randint(0, 8), None)
    plan.insert(rng.randint(0, 9), None)
    kills = []
    for target in plan:
        logged = max([r["step"] for r in read_metrics(out / "metrics.jsonl")], default=0)
        if target is not None:
            target = min(max(target, logged + 1), STEPS - 1)  # a step this session has yet to log
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 120
        if target is None:
            time.sleep(rng.uniform(0.3, 3.0))
        while target is not None and time.time() < deadline and proc.poll() is None:
            steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
            if steps and steps[-1] >= target:
                time.sleep(rng.uniform(0, 0.03))
                break
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before it could be killed (moment {target})"
        _kill_tree(proc)
        saved = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else []
        kills.append((target, saved[-1] if saved else None))
    assert len(kills) == 10, kills
    print('kills (moment, latest checkpoint after it):', kills)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = _losses(cfg)
    assert sorted(losses) == sorted(reference), kills
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), (step, kills)
    # Nothing was ever set aside, and no temporary directory is left behind.
    names = [p.name for p in (out / "checkpoints").iterdir()]
    assert not [n for n in names if not n.startswith("step-") or n.endswith(".unreadable")], names
    assert not (out / "checkpoints.previous").exists()


# ------------------------------------------------------------ a small disk


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size at tmp_path/disk (root only), unmounted after."""
    mounted = []

    def mount(size_bytes: int, read_only: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = f"size={size_bytes}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        todo = free - leave
        while todo > 0:
            n = min(todo, len(chunk))
            f.write(chunk[:n])
            todo -= n
    return filler


def _run_config(cfg_path: Path):
    from fmforge.config import load_config

    return load_config(cfg_path)


def test_a_disk_that_fills_while_saving_keeps_the_previous_checkpoint(prepared, small_disk, monkeypatch):
    import fmforge.train.loop as loop
    from fmforge.pipeline import run_pipeline
    from fmforge.rundir import RunDirWriteError
    from fmforge.train.checkpoint import checkpoint_damage

    root, raw, reference = prepared
    disk = small_disk(64 << 20)
    cfg_path = _copy(root, raw, "full", parent=disk, checkpoint_every=4)
    out = _out_dir(cfg_path)
    real_save = loop.save_checkpoint
    filler = []

    def save_on_a_filling_disk(ckroot, step, *args, **kwargs):
        if step == 8 and not filler:  # the disk fills up just as step 8 is saved
            filler.append(_fill(disk, leave=4096))
        return real_save(ckroot, step, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save_on_a_filling_disk)
    with pytest.raises(RunDirWriteError) as caught:
        run_pipeline(_run_config(cfg_path), stages=("train",))
    message = str(caught.value)
    assert "no space left" in message.lower() and str(out / "checkpoints") in message
    assert "resumes from step 4" in message
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-000004"], names  # no half-written step 8, nothing set aside
    assert checkpoint_damage(out / "checkpoints" / "step-000004") is None

    filler[0].unlink()  # space again: the same command resumes from step 4
    run_pipeline(_run_config(cfg_path), stages=("train",))
    losses = _losses(cfg_path)
    assert sorted(losses) == sorted(reference)
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), step


def test_a_read_only_run_directory_is_read_and_never_half_written(prepared, small_disk):
    root, raw, reference = prepared
    disk = small_disk(64 << 20)
    cfg_path = _copy(root, raw, "readonly", parent=disk, max_steps=4, checkpoint_every=4)
    out = _out_dir(cfg_path)
    _fmforge("train", str(cfg_path))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    remount = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True)
    assert remount.returncode == 0, remount.stderr
    # Reading works: a sample from the trained model.
    sample = _fmforge("generate", str(out), "--prompt", "def", "--max-new-tokens", "4")
    assert sample.stdout.strip()
    # Writing stops with a message naming the run directory, not a traceback.
    for args in (("train", str(cfg_path), "train.max_steps=8"), ("eval", str(cfg_path))):
        done = _fmforge(*args, ok=False)
        assert done.returncode == 2, (args, done.stdout[-2000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        text = " ".join(done.stderr.split())
        assert "read-only" in text.lower() and str(out) in text, text
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
