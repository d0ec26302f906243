"""Edges of the data store's completion markers that the main store tests leave
open, checked against the module's documented contract (a marker lists every
file its task wrote and did not remove) with file names chosen by hand."""

from __future__ import annotations

from fmforge.data.store import WorkDir


def test_removing_a_path_keeps_the_files_of_a_sibling_whose_name_it_begins(tmp_path):
    # "part-1" is a prefix of "part-10" and "part-1.json" as strings, not as paths:
    # removing the directory part-1 removes what is under it, nothing else.
    work = WorkDir(str(tmp_path / "w"))
    work.write_bytes("tasks/00001/part-1/x.bin", b"scratch")
    work.write_bytes("tasks/00001/part-10/y.bin", b"kept")
    work.write_bytes("tasks/00001/part-1.json", b"{}")
    work.remove("tasks/00001/part-1")
    work.mark_done("curate", 1)
    marker = work.read_json(work.marker("curate", 1))
    assert marker == {"files": {"tasks/00001/part-10/y.bin": 4, "tasks/00001/part-1.json": 2}}
    # so the marker vouches for them: a sibling cut short is found and the task redone
    (tmp_path / "w/tasks/00001/part-10/y.bin").write_bytes(b"ke")
    rerun = WorkDir(work.url)
    assert not rerun.is_done("curate", 1)
    assert rerun.redone == ["curate task 1: tasks/00001/part-10/y.bin has 2 bytes, 4 when the task ended"]
