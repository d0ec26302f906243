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


def _record_syncs(monkeypatch):
    """Record, in order, each rename and each fsync (of a file or a directory,
    by inode) that the code under test makes."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st.st_mode) else "fsync-file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("replace", os.stat(dst).st_ino))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_an_atomic_write_reaches_the_disk_with_its_name(tmp_path, monkeypatch):
    # After a power cut the file must be there under its new name: the data is
    # fsynced before the rename and the directory holding the name after it.
    from fmforge.rundir import atomic_write_json

    (tmp_path / "stages.json").write_text("{}")
    events = _record_syncs(monkeypatch)
    atomic_write_json(tmp_path / "stages.json", {"data": 1})
    file_ino = (tmp_path / "stages.json").stat().st_ino
    dir_ino = tmp_path.stat().st_ino
    kinds = [e for e in events if e[1] in (file_ino, dir_ino)]
    assert kinds == [("fsync-file", file_ino), ("replace", file_ino), ("fsync-dir", dir_ino)]
