"""Saving a step that is already on disk never passes through a moment with no
complete copy of it, and a resume finds the complete copy whichever moment the
save was stopped at.

A step is saved again when a run resumes from it and checkpoints it once more
(a budget stop, an extension that saves where it started). With
``keep_checkpoints: 1`` that step is the only checkpoint the run has: losing it
means training again from step 0.

The save is stopped just before each rename or removal it makes, by an exception
no code of ours catches (``_Killed`` derives from ``BaseException``, and the save
has no ``finally``), which leaves the disk as a ``kill -9`` at that moment
would; ``tests/train/test_checkpoint_kill9.py`` kills a real process at the
worst of these moments.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fmforge.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)

STEP = 5


class _Killed(BaseException):
    """The process stopped here (nothing after this point ran)."""


def _pair(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).square().sum().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def _save(root: Path, sharded: bool, seed: int) -> None:
    model, opt = _pair(seed)
    if sharded:
        save_sharded_checkpoint(root, STEP, model, opt, {"seed": seed}, keep=1, is_main=True,
                                barrier=lambda: None)
    else:
        save_checkpoint(root, STEP, model, opt, {"seed": seed}, keep=1)


class _StopAt:
    """Raise ``_Killed`` before the ``n``-th rename or removal of a directory in
    the checkpoints folder (the moments between a save's files being written and
    the step being in place; a kill while the files are written is the random
    kill test's, in ``tests/train/test_faults_train.py``)."""

    def __init__(self, monkeypatch, root: Path, n: int):
        self.n, self.seen = n, 0
        real_replace, real_rename, real_rmtree = os.replace, os.rename, shutil.rmtree

        def point(path):
            if Path(path).parent != root:
                return
            if self.seen == self.n:
                raise _Killed(self.n)
            self.seen += 1

        def replace(src, dst, *a, **k):
            point(src)
            return real_replace(src, dst, *a, **k)

        def rename(src, dst, *a, **k):
            point(src)
            return real_rename(src, dst, *a, **k)

        def rmtree(path, *a, **k):
            point(path)
            return real_rmtree(path, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(shutil, "rmtree", rmtree)


def _weights_of_step(root: Path) -> tuple[int, int]:
    """(the seed of the copy a resume finds, how many copies are listed)."""
    found = list_checkpoints(root)
    assert [step for step, _ in found] == [STEP], f"no complete copy of step {STEP}: {found}"
    model, opt = _pair(99)
    state = load_checkpoint(found[0][1], model, opt)
    reference, _ = _pair(state["seed"])
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    return state["seed"], len(found)


def _stop_points(tmp_path: Path, sharded: bool, monkeypatch) -> int:
    """How many renames and removals re-saving the step makes."""
    root = tmp_path / "count"
    _save(root, sharded, seed=1)
    with monkeypatch.context() as m:
        counter = _StopAt(m, root, n=10**9)
        _save(root, sharded, seed=2)
    return counter.seen


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_a_step_saved_again_always_has_a_complete_copy_that_resume_finds(tmp_path, sharded, monkeypatch):
    points = _stop_points(tmp_path, sharded, monkeypatch)
    assert points >= 2  # at least: the old copy goes, the new one comes
    for n in range(points):
        root = tmp_path / f"stopped-{n}"
        _save(root, sharded, seed=1)
        with monkeypatch.context() as m:
            _StopAt(m, root, n)
            with pytest.raises(_Killed):
                _save(root, sharded, seed=2)
        seed, _ = _weights_of_step(root)
        # Once the new copy holds the step's name, resume finds it, never the old
        # copy still beside it (a kill before the old copy's removal).
        named = root / f"step-{STEP:06d}" / "trainer_state.json"
        assert seed == (json.loads(named.read_text())["seed"] if named.is_file() else 1), n
        # The next save of that step stops while writing its files (after it has
        # dealt with what the stopped one left): a complete copy must still be there.
        with monkeypatch.context() as m:
            writer = "fmforge.train.checkpoint.torch.save" if not sharded else \
                "torch.distributed.checkpoint.save"

            def killed(*a, **k):
                raise _Killed("write")

            m.setattr(writer, killed)
            with pytest.raises(_Killed):
                _save(root, sharded, seed=3)
        assert _weights_of_step(root)[0] in (1, 2), n
        # And a save that completes leaves exactly the new step, nothing hidden beside it.
        _save(root, sharded, seed=4)
        assert _weights_of_step(root) == (4, 1)
        assert sorted(p.name for p in root.iterdir()) == [f"step-{STEP:06d}"], n


def _kill_at(monkeypatch, root: Path, call: str, name_part: str, *,
            first_remove: str | None = None) -> None:
    """Raise ``_Killed`` at the first ``os.replace`` (of a source) or ``shutil.rmtree``
    of a directory in ``root`` whose name contains ``name_part``; an rmtree stopped so has removed
    ``first_remove`` already (its order is the file system's, so any one file)."""
    real = getattr(os if call == "replace" else shutil, call)

    def stop(path, *a, **k):
        if Path(path).parent == root and name_part in Path(path).name:
            if first_remove is not None:
                (Path(path) / first_remove).unlink()
            raise _Killed(call, path)
        return real(path, *a, **k)

    monkeypatch.setattr(os if call == "replace" else shutil, call, stop)


def test_a_prune_killed_while_removing_a_lone_old_copy_leaves_the_newer_step(tmp_path, monkeypatch):
    """A save of step 5 again killed between its renames leaves the old copy alone
    (listed as step 5); the run goes on, and the save of step 7 prunes that copy and
    is killed midway through removing it. Resume must find step 7."""
    root = tmp_path / "ck"
    _save(root, False, seed=1)
    with monkeypatch.context() as m:
        _kill_at(m, root, "replace", ".tmp-")  # the new copy never takes the name
        with pytest.raises(_Killed):
            _save(root, False, seed=2)
    assert [s for s, _ in list_checkpoints(root)] == [STEP]
    model, opt = _pair(7)
    with monkeypatch.context() as m:
        _kill_at(m, root, "rmtree", ".old-", first_remove="trainer_state.json")
        with pytest.raises(_Killed):
            save_checkpoint(root, 7, model, opt, {"seed": 7}, keep=1)
    assert [(s, p.name) for s, p in list_checkpoints(root)] == [(7, "step-000007")]
    other, other_opt = _pair(99)
    assert load_checkpoint(root / "step-000007", other, other_opt)["seed"] == 7
    for (name, a), b in zip(other.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_moved_aside_copy_never_stands_in_for_its_step_while_that_step_is_in_place(tmp_path, monkeypatch):
    """A save of step 5 again killed after the new copy took the name but before
    the old copy's removal; later the save of step 7 prunes step 5 and is killed
    midway through removing it. The old copy is stale (the next save of step 5
    would delete it): step 5, pruned, must not come back as it."""
    root = tmp_path / "ck"
    _save(root, False, seed=1)
    with monkeypatch.context() as m:
        _kill_at(m, root, "rmtree", ".old-")
        with pytest.raises(_Killed):
            _save(root, False, seed=2)
    assert any(".old-" in p.name for p in root.iterdir())
    model, opt = _pair(7)
    with monkeypatch.context() as m:
        _kill_at(m, root, "rmtree", f"step-{STEP:06d}", first_remove="trainer_state.json")
        with pytest.raises(_Killed):
            save_checkpoint(root, 7, model, opt, {"seed": 7}, keep=1)
    assert (root / f"step-{STEP:06d}").is_dir()  # what the killed removal left
    assert [(s, p.name) for s, p in list_checkpoints(root)] == [(7, "step-000007")]
