"""Loading a single-file checkpoint's ``optimizer.pt``: on any machine, and never
by running code stored in it.

- A run trained on a GPU resumes on a machine without one (a CPU box to debug,
  a laptop to look at it): ``torch.save`` records each tensor's device in the
  file, and ``torch.load`` without ``map_location`` puts it back there, which
  fails where CUDA is not available. The file is written here as a GPU run
  writes it: the device ``torch.save`` records for each storage is "cuda:0".
- A checkpoint is data. ``torch.load`` unpickles, and a pickle can call any
  function; only ``weights_only=True`` stops that. PyTorch lets a user turn the
  default off for every call that does not ask for it
  (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, set for some older library), so the
  load must ask for it explicitly. The oracle is the directory a planted pickle
  would create: it must not appear.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.serialization

from fmforge.train.checkpoint import checkpoint_dir, load_checkpoint, save_checkpoint


def _pair(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 8)).square().sum().backward()
    opt.step()
    opt.zero_grad()
    return model, opt


def test_an_optimizer_state_saved_on_a_gpu_resumes_on_a_machine_without_one(tmp_path, monkeypatch):
    model, opt = _pair(1)
    with monkeypatch.context() as m:
        # What torch.save records for a tensor that lives on the first GPU.
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(tmp_path, 3, model, opt, {}, keep=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # The file really names the GPU: torch alone, not told where to put it, refuses it here.
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(checkpoint_dir(tmp_path, 3) / "optimizer.pt", weights_only=True)

    other, other_opt = _pair(2)
    state = load_checkpoint(checkpoint_dir(tmp_path, 3), other, other_opt)
    assert state["step"] == 3
    saved, loaded = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert sorted(loaded) == sorted(saved) == [0, 1, 2, 3]
    for i in saved:
        for key in ("exp_avg", "exp_avg_sq"):
            assert loaded[i][key].device.type == "cpu"
            assert torch.equal(loaded[i][key], saved[i][key]), (i, key)


class _Planted:
    """Unpickling this calls ``os.mkdir(path)``: any function could stand there."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_an_optimizer_file_that_would_run_code_is_refused_whatever_torchs_default(tmp_path, monkeypatch):
    model, opt = _pair(1)
    save_checkpoint(tmp_path, 3, model, opt, {}, keep=1)
    ckpt = checkpoint_dir(tmp_path, 3)
    marker = tmp_path / "code-ran"
    planted = opt.state_dict()
    planted["param_groups"][0]["lr"] = _Planted(marker)
    torch.save(planted, ckpt / "optimizer.pt")
    # The user's environment turns torch.load's safe default off.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    other, other_opt = _pair(2)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ckpt, other, other_opt)
    assert not marker.exists(), "loading the checkpoint ran a function stored in it"
