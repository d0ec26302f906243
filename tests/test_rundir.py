"""The run directory's write discipline."""

import os
import stat

from safetensors.torch import save_file
import torch

from fmforge.rundir import atomic_directory


def test_an_atomic_directory_gets_the_permissions_of_plain_files(tmp_path):
    # safetensors (like mkstemp) creates files only their owner can read; a run
    # directory is read by other users, other nodes and other programs.
    umask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "ckpt") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "sub").mkdir()
            (tmp / "sub" / "x.json").write_text("{}")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "ckpt" / "model.safetensors").stat().st_mode)
    assert mode == 0o644
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755
