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
        assert seed in (1, 2), n
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
