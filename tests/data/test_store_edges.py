"""Edges of the data store's completion markers that the main store tests leave
open, checked against the module's documented contract (a marker lists every
file its task wrote and did not remove) with file names chosen by hand."""

from __future__ import annotations

import uuid

import pytest

from fmforge.data.store import Store, WorkDir, is_url


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


# RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), so
# "s3", "s3a", "git+https" and "x-y.z" are schemes; a scheme starts with a letter.
@pytest.mark.parametrize("path, url", [
    ("s3://bucket/data/*.jsonl", True), ("s3a://bucket/x", True), ("gs://b/x", True),
    ("git+https://host/repo", True), ("x-y.z://a", True), ("memory://x", True), ("file:///data", True),
    ("3s://bucket/x", False), ("/data/s3://x", False), ("data/x.jsonl", False), ("C:/data/x", False),
])
def test_a_url_is_any_rfc_3986_scheme_followed_by_two_slashes(path, url):
    assert is_url(path) is url


def test_a_store_on_a_scheme_with_a_digit_reads_through_its_filesystem(monkeypatch):
    # s3:// (s3fs is not installed here: fsspec's memory filesystem stands in for it)
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    class FakeS3(MemoryFileSystem):
        protocol = ("s3", "s3a")

        @classmethod
        def _strip_protocol(cls, path):
            return MemoryFileSystem._strip_protocol(path.split("://", 1)[-1] if "://" in path else path)

    monkeypatch.setitem(_registry, "s3", FakeS3)
    bucket = f"fmforge-edges-{uuid.uuid4().hex}"
    store = Store(f"s3://{bucket}/prefix")
    store.write_bytes("a/b.jsonl", b"{}\n")
    assert store.is_url and not store.is_local
    assert store.isfile("a/b.jsonl") and store.glob("**/*.jsonl") == ["a/b.jsonl"]
    assert store.stat("a/b.jsonl")[0] == 3
    assert store.url_of("a/b.jsonl").startswith("s3://")
    store.remove()
