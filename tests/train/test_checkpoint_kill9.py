"""kill -9 while a step already on disk is saved again (fault suite).

The worst moment of such a save is just before the new copy is renamed into
place: the old copy has left the step's name. A real process is killed there
(SIGKILL: no handler, no ``finally``), then a second save of the step is killed
while it writes its files; after each, the step is still found, complete, with
the weights one of the saves wrote. ``tests/train/test_checkpoint_resave.py``
stops the save at every rename and removal in-process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fmforge.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import torch.distributed.checkpoint as dcp
    import fmforge.train.checkpoint as ck

    root, sharded, seed, kill = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace
    def replace(src, dst, *a, **k):
        # just before the new copy of the step takes the step's name
        if Path(dst).name == "step-000005" and ".tmp-" in Path(src).name:
            die()
        return real_replace(src, dst, *a, **k)

    if kill == "publish":
        os.replace = replace
    elif kill == "write":
        dcp.save = die
        ck.torch.save = die  # the single-file path's optimizer state

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).square().sum().backward()
    opt.step()
    if sharded:
        ck.save_sharded_checkpoint(root, 5, model, opt, {"seed": seed}, keep=1, is_main=True,
                                   barrier=lambda: None)
    else:
        ck.save_checkpoint(root, 5, model, opt, {"seed": seed}, keep=1)
""")


def _child(tmp_path: Path, root: Path, sharded: bool, seed: int, kill: str) -> int:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run([sys.executable, str(script), str(root), "1" if sharded else "0", str(seed), kill],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode


def _trained(seed: int):
    """What the child saves for ``seed`` (the same operations, in this process)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).square().sum().backward()
    opt.step()
    return model, opt


def _found_seed(root: Path) -> int:
    """The seed of the complete copy of step 5 a resume finds (its weights checked)."""
    found = list_checkpoints(root)
    assert [step for step, _ in found] == [5], f"step 5 lost: {found}, on disk: {sorted(p.name for p in root.iterdir())}"
    model, opt = _trained(99)
    state = load_checkpoint(found[0][1], model, opt)
    reference, _ = _trained(state["seed"])
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-6, atol=1e-7)
    return state["seed"]


def _save_here(root: Path, sharded: bool, seed: int) -> None:
    model, opt = _trained(seed)
    if sharded:
        save_sharded_checkpoint(root, 5, model, opt, {"seed": seed}, keep=1, is_main=True,
                                barrier=lambda: None)
    else:
        save_checkpoint(root, 5, model, opt, {"seed": seed}, keep=1)


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
def test_kill_9_while_a_step_is_saved_again_keeps_a_complete_copy(tmp_path, sharded):
    root = tmp_path / "checkpoints"
    _save_here(root, sharded, seed=1)
    assert _found_seed(root) == 1
    assert _child(tmp_path, root, sharded, seed=2, kill="publish") == -9
    assert _found_seed(root) in (1, 2)
    assert _child(tmp_path, root, sharded, seed=3, kill="write") == -9
    assert _found_seed(root) in (1, 2)
    _save_here(root, sharded, seed=4)
    assert _found_seed(root) == 4
    assert sorted(p.name for p in root.iterdir()) == ["step-000005"]
