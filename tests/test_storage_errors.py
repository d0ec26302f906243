"""A full, read-only or forbidden disk is the user's to fix: one line, exit code 2,
saying what could not be done (issue 29, defect 9).

- a permission error on a path fmforge reads (an unreadable ``--against``
  directory) says it cannot be *read*, not "make it writable";
- a bug raised while handling a disk error is a bug: it keeps its traceback and
  exit code 1, instead of being reported as the disk error it interrupted.

The tests run as root, where ``chmod 000`` does not stop a read, and the Python
here lives under /root, so a child process cannot drop to another user: the
error the kernel gives another user is raised by hand, on a real path whose
permission bits forbid it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fmforge.cli import app

runner = CliRunner()


def _raising(make):
    def stage(*args, **kwargs):
        raise make()

    return stage


@pytest.fixture
def locked_down(tmp_path: Path):
    """A model directory nobody may read (mode 000) and a folder nobody may write (555)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    model.chmod(0o000)
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    yield model, out
    model.chmod(0o755)
    out.chmod(0o755)


def _message(result) -> str:
    return " ".join(result.output.split())


def test_a_permission_error_reading_an_unreadable_directory_says_reading(
        tiny_config_file, monkeypatch, locked_down):
    import fmforge.pipeline

    model, _ = locked_down
    denied = lambda: PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(model / "config.json"))  # noqa: E731
    monkeypatch.setattr(fmforge.pipeline, "run_stage", _raising(denied))
    result = runner.invoke(app, ["data", str(tiny_config_file)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    text = _message(result)
    assert f"cannot read {model / 'config.json'}" in text, text
    assert "readable" in text and "writ" not in text, text


def test_a_permission_error_writing_into_a_read_only_folder_says_writing(
        tiny_config_file, monkeypatch, locked_down):
    import fmforge.pipeline

    _, out = locked_down
    denied = lambda: PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out / "stages.json"))  # noqa: E731
    monkeypatch.setattr(fmforge.pipeline, "run_stage", _raising(denied))
    result = runner.invoke(app, ["data", str(tiny_config_file)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    text = _message(result)
    assert f"cannot write {out / 'stages.json'}" in text and "writable" in text, text


def test_a_bug_raised_while_handling_a_disk_error_keeps_its_traceback(tiny_config_file, monkeypatch):
    import fmforge.pipeline

    def stage(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/run/checkpoints")
        except OSError:
            return {}["summary"]  # our bug, in the handler

    monkeypatch.setattr(fmforge.pipeline, "run_stage", stage)
    result = runner.invoke(app, ["data", str(tiny_config_file)])
    assert result.exit_code == 1, result.output
    assert type(result.exception) is KeyError
    assert "error:" not in result.output


def test_an_error_raised_from_a_disk_error_is_still_the_disk_error(tiny_config_file, monkeypatch):
    import fmforge.pipeline

    def stage(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/run/checkpoints/step-000010")
        except OSError as exc:
            raise RuntimeError("saving the checkpoint failed") from exc

    monkeypatch.setattr(fmforge.pipeline, "run_stage", stage)
    result = runner.invoke(app, ["data", str(tiny_config_file)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    text = _message(result)
    assert "no space left on device" in text and "/run/checkpoints/step-000010" in text, text
