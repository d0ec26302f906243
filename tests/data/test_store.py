"""The data stage's store (``fmforge.data.store``) against outside oracles: a
local directory read back with ``os`` and ``pathlib``, and fsspec's own
``memory://`` filesystem read back with fsspec; both stores must agree."""

from __future__ import annotations

import datetime
import os
import pickle
import uuid

import fsspec
import pytest

from fmforge.data.store import Store, WorkDir


def _memory_url() -> str:
    return f"memory://fmforge-store-{uuid.uuid4().hex}"


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> Store:
    url = str(tmp_path / "store") if request.param == "local" else _memory_url()
    s = Store(url)
    yield s
    s.remove()


def _on_disk(store: Store, rel: str) -> bytes:
    """The bytes at ``rel``, read without the store: os for a local store, fsspec's
    memory filesystem for a memory one."""
    if store.is_url:
        return fsspec.filesystem("memory").cat_file(f"{store.root}/{rel}")
    with open(os.path.join(store.url, rel), "rb") as f:
        return f.read()


def _exercise(store: Store) -> dict:
    store.write_bytes("a.bin", b"\x00\x01" * 10)
    store.write_json("b.json", {"x": [1, 2], "y": "é"})
    with store.open_write("sub/c.bin") as f:
        for i in range(5):
            f.write(bytes([i]) * 1000)
    store.makedirs("empty/inner")
    return {
        "list": sorted(store.list("")),
        "list_sub": store.list("sub"),
        "list_missing": store.list("nowhere"),
        "glob_top": store.glob("*.bin"),
        "glob_all": store.glob("**/*.bin"),
        "exists": [store.exists(r) for r in ("a.bin", "sub", "sub/c.bin", "nowhere")],
        "isfile": [store.isfile(r) for r in ("a.bin", "sub", "nowhere")],
        "isdir": [store.isdir(r) for r in ("a.bin", "sub", "nowhere")],
        "json": store.read_json("b.json"),
        "bytes": store.read_bytes("sub/c.bin"),
        "size": store.stat("sub/c.bin")[0],
        "tree_size": store.tree_stat("sub")[0],
        "stream": store.open_read("a.bin").read(),
        "rel": store.rel(store.path("sub/c.bin")),
    }


def test_local_and_memory_stores_agree(tmp_path):
    local, memory = Store(str(tmp_path / "s")), Store(_memory_url())
    try:
        got_local, got_memory = _exercise(local), _exercise(memory)
    finally:
        memory.remove()
    assert got_local == got_memory
    # and each is what its filesystem, read without the store, holds
    expected_c = b"".join(bytes([i]) * 1000 for i in range(5))
    assert got_local["list"] == ["a.bin", "b.json", "empty", "sub"]
    assert got_local["list_sub"] == ["c.bin"] and got_local["list_missing"] == []
    assert got_local["glob_top"] == ["a.bin"] and got_local["glob_all"] == ["a.bin", "sub/c.bin"]
    assert got_local["exists"] == [True, True, True, False]
    assert got_local["isfile"] == [True, False, False] and got_local["isdir"] == [False, True, False]
    assert got_local["json"] == {"x": [1, 2], "y": "é"}
    assert got_local["bytes"] == expected_c == (tmp_path / "s/sub/c.bin").read_bytes()
    assert got_local["size"] == got_local["tree_size"] == 5000
    assert got_local["stream"] == b"\x00\x01" * 10
    assert got_local["rel"] == "sub/c.bin"


def test_a_missing_file_is_file_not_found(store):
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nowhere.bin")
    with pytest.raises(FileNotFoundError):
        store.read_json("nowhere.json")


def _fail_half_way(store: Store, monkeypatch) -> None:
    """Every file the store's filesystem opens for writing takes half of the first
    write, then fails as a full disk would."""
    real_open = store.fs.open

    def open_failing(path, mode="rb", **kwargs):
        f = real_open(path, mode, **kwargs)
        if "w" in mode:
            real_write = f.write

            def write(data):
                real_write(data[: len(data) // 2])
                raise OSError(28, "No space left on device")

            f.write = write
        return f

    monkeypatch.setattr(store.fs, "open", open_failing)


def test_a_write_interrupted_midway_leaves_no_partial_file(store, monkeypatch):
    store.write_bytes("d/old.bin", b"old contents")
    with monkeypatch.context() as m:
        _fail_half_way(store, m)
        with pytest.raises(OSError, match="No space left"):
            store.write_bytes("d/new.bin", b"n" * 1000)
        with pytest.raises(OSError, match="No space left"):
            store.write_bytes("d/old.bin", b"replacement" * 100)
    assert not store.exists("d/new.bin")
    assert _on_disk(store, "d/old.bin") == b"old contents"  # the old file, whole
    assert store.list("d") == ["old.bin"]  # no temporary file left behind either


def test_an_error_in_a_streamed_write_leaves_no_file(store):
    with pytest.raises(ValueError, match="bad row"), store.open_write("t/table.parquet") as f:
        f.write(b"PAR1 first row group")
        raise ValueError("bad row")
    assert not store.exists("t/table.parquet")
    assert store.list("t") == []


def test_a_url_keeps_its_protocol_and_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URL taken for a local path would write here
    name = f"fmforge-store-{uuid.uuid4().hex}"
    s = Store(f"memory://{name}/run/")  # a trailing slash, as users write folders
    s.write_bytes("a/b.bin", b"remote")
    mem = fsspec.filesystem("memory")
    try:
        assert s.is_url and s.url == f"memory://{name}/run"
        assert mem.cat_file(f"/{name}/run/a/b.bin") == b"remote"  # under the URL's root
        assert not mem.exists("/a/b.bin") and not mem.exists(f"/{name}/a/b.bin")
        assert os.listdir(tmp_path) == []
        assert s.url_of("a/b.bin") == mem.unstrip_protocol(f"/{name}/run/a/b.bin")
        assert s.url_of("a/b.bin").startswith("memory://")
        again = pickle.loads(pickle.dumps(s))  # what a worker receives: the URL alone
        assert again.url == s.url and again.read_bytes("a/b.bin") == b"remote"
    finally:
        s.remove()
    assert not mem.exists(f"/{name}/run")


def test_a_local_path_stays_local(tmp_path):
    s = Store(str(tmp_path / "loc") + "/")
    s.write_bytes("a/b.bin", b"local")
    assert not s.is_url and s.url == str(tmp_path / "loc")
    assert (tmp_path / "loc/a/b.bin").read_bytes() == b"local"
    assert s.url_of("a/b.bin") == f"{tmp_path}/loc/a/b.bin"  # a path, not a file:// URL
    assert not fsspec.filesystem("memory").exists(f"{tmp_path}/loc/a/b.bin")
    again = pickle.loads(pickle.dumps(s))
    assert again.url == s.url and again.read_bytes("a/b.bin") == b"local"


def test_a_local_glob_skips_hidden_files_as_a_shell_does(tmp_path):
    """Local sources were always listed with Python's glob: ``*`` does not match a
    name starting with a dot (fsspec's glob would)."""
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / ".hidden.txt").write_text("h")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git/config.txt").write_text("c")
    assert Store(str(tmp_path)).glob("**/*.txt") == ["x.txt"]


@pytest.mark.parametrize("url, root_url, child", [
    ("/", "/", "/x"),
    ("memory://", "memory://", None),
    ("file:///", "file:///", "/x"),
    ("s3-like/relative/", "s3-like/relative", None),
])
def test_a_root_keeps_its_own_slash(url, root_url, child):
    s = Store(url)
    assert s.url == root_url
    if child is not None:
        assert s.path("x") == child


def test_the_work_dir_marks_a_task_done_only_by_its_marker(tmp_path):
    work = WorkDir(str(tmp_path / "w"))
    assert not work.is_done("curate", 3)
    work.mark_done("curate", 3, {"documents": 7})
    assert work.is_done("curate", 3) and not work.is_done("curate", 4)
    assert work.read_json(work.marker("curate", 3))["documents"] == 7
    assert (tmp_path / "w/markers/curate-00003.done").is_file()


# A completion marker vouches for the task's files (issue 32): after a power cut a
# marker could stand beside an empty or short parquet file, and the rerun trusted it
# and failed in pyarrow until the user cleared the work directory by hand.

def _one_task(work: WorkDir) -> None:
    """What a curate task leaves: a parquet table, a stats file, then its marker."""
    import pyarrow as pa

    work.write_table("tasks/00003/docs.parquet",
                     pa.table({"id": [f"d{i}" for i in range(3000)], "text": [f"text {i}" * 7 for i in range(3000)]}))
    work.write_json("tasks/00003/stats.json", {"documents": 3000})
    work.mark_done("curate", 3, {"documents": 3000})


def _damage(path, how: str) -> None:
    blob = path.read_bytes()
    if how == "gone":
        path.unlink()
    elif how == "empty":  # ext4's delayed allocation after a power cut
        path.write_bytes(b"")
    elif how == "cut":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "zeroed":  # the size kept, the blocks never written (XFS after a crash)
        path.write_bytes(b"\x00" * len(blob))
    elif how == "one byte more":
        path.write_bytes(blob + b"\x00")


@pytest.mark.parametrize("victim, how", [
    (victim, how) for victim in ("tasks/00003/docs.parquet", "tasks/00003/stats.json", "markers/curate-00003.done")
    for how in ("gone", "empty", "cut", "zeroed", "one byte more") if (victim, how) != ("markers/curate-00003.done", "gone")])
def test_a_marker_beside_a_damaged_file_is_not_trusted_and_is_reported(tmp_path, capsys, victim, how):
    import pyarrow.parquet as pq

    root = tmp_path / "w"
    _one_task(WorkDir(str(root)))
    size = (root / victim).stat().st_size
    assert pq.read_table(root / "tasks/00003/docs.parquet").num_rows == 3000  # pyarrow reads it back
    _damage(root / victim, how)
    rerun = WorkDir(str(root))
    capsys.readouterr()
    assert not rerun.is_done("curate", 3)
    [report] = rerun.redone
    why = {"gone": f"{victim} is missing", "empty": f"{victim} has 0 bytes, {size} when the task ended",
           "cut": f"{victim} has {size // 2} bytes, {size} when the task ended",
           "one byte more": f"{victim} has {size + 1} bytes, {size} when the task ended",
           "zeroed": f"{victim} cannot be read ("
                     + ("ArrowInvalid: " if victim.endswith(".parquet") else "JSONDecodeError: ")}[how]
    if victim.startswith("markers/"):
        why = "its marker is damaged or lists no files (written by an older fmforge)"
    assert report.startswith(f"curate task 3: {why}")
    warning = " ".join(capsys.readouterr().err.split())  # the console wraps at 80 columns
    assert warning.startswith(f"warning: data: curate task 3: {' '.join(why.split())}")
    assert warning.endswith("; the task is done again")
    assert not (root / "markers/curate-00003.done").exists()  # the task is redone
    assert not rerun.is_done("curate", 3) and len(rerun.redone) == 1  # counted once
    _one_task(rerun)  # redone: trusted again
    assert WorkDir(str(root)).is_done("curate", 3)


def test_an_intact_task_is_trusted_on_a_rerun_on_any_filesystem(store):
    work = WorkDir(store.url)
    _one_task(work)
    rerun = WorkDir(work.url)
    assert rerun.is_done("curate", 3) and rerun.redone == []
    assert rerun.read_json(rerun.marker("curate", 3))["documents"] == 3000  # the task's own info kept
    # the dedup buckets a task writes through a store of their own are vouched for too
    Store(work.url + "/dedup").write_bytes("buckets-00003.npy", b"\x93NUMPY" + b"\x00" * 100)
    work.mark_done("curate", 4)
    if store.is_url:
        fsspec.filesystem("memory").pipe_file(f"{work.root}/dedup/buckets-00003.npy", b"\x93NUMPY")
    else:
        with open(os.path.join(work.url, "dedup/buckets-00003.npy"), "wb") as f:
            f.write(b"\x93NUMPY")
    rerun = WorkDir(work.url)
    assert rerun.is_done("curate", 3) and not rerun.is_done("curate", 4)
    assert "dedup/buckets-00003.npy" in rerun.redone[0]


def test_a_marker_lists_the_files_its_thread_wrote_since_its_last_marker(tmp_path):
    import threading

    work = WorkDir(str(tmp_path / "w"))
    work.write_bytes("tasks/00001/a.bin", b"12345")
    work.write_bytes("tasks/00001/gone.bin", b"removed by the task itself")
    work.remove("tasks/00001/gone.bin")
    work.write_bytes("tasks/00001/scratch/x.bin", b"a directory the task removed")
    work.remove("tasks/00001/scratch")
    Store(str(tmp_path / "elsewhere")).write_bytes("b.bin", b"not in the work directory")
    other = threading.Thread(target=lambda: work.write_bytes("tasks/00009/c.bin", b"another task's"))
    other.start()
    other.join()
    work.mark_done("curate", 1, {"documents": 2})
    marker = work.read_json(work.marker("curate", 1))
    assert marker == {"documents": 2, "files": {"tasks/00001/a.bin": 5}}
    work.write_bytes("tasks/00002/d.bin", b"")
    work.mark_done("curate", 2)
    assert work.read_json(work.marker("curate", 2)) == {"files": {"tasks/00002/d.bin": 0}}  # not marker 1
    work.mark_done("curate", 3)
    assert work.read_json(work.marker("curate", 3)) == {"files": {}}
    rerun = WorkDir(work.url)
    assert all(rerun.is_done("curate", i) for i in (1, 2, 3)) and rerun.redone == []


def test_a_marker_of_an_older_fmforge_that_lists_no_files_is_redone(tmp_path):
    root = tmp_path / "w"
    (root / "markers").mkdir(parents=True)
    (root / "markers/gather-train-00000.done").write_text('{"chunks": 1}')
    work = WorkDir(str(root))
    assert not work.is_done("gather-train", 0)
    assert work.redone == ["gather-train task 0: its marker is damaged or lists no files (written by an older fmforge)"]


def test_the_data_is_on_disk_before_its_marker_is_written(tmp_path, monkeypatch):
    """fsync the file, and the directory that names it, before the marker exists: a
    power cut can then leave a marker only beside complete files."""
    root = tmp_path / "w"
    synced = []  # (inode, whether the marker existed at that moment)
    real_fsync = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append((st.st_ino, st.st_size, (root / "markers/curate-00003.done").exists()))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    _one_task(WorkDir(str(root)))
    before_marker = {ino: size for ino, size, marker in synced if not marker}
    for rel in ("tasks/00003/docs.parquet", "tasks/00003/stats.json"):  # every byte of them
        st = os.stat(root / rel)
        assert before_marker.get(st.st_ino) == st.st_size > 0, rel
    for rel in ("tasks/00003", "tasks", "."):  # the names: a new directory is an entry of its parent
        assert os.stat(root / rel).st_ino in before_marker, rel


def test_an_object_store_has_nothing_to_fsync(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    work = WorkDir(_memory_url())
    _one_task(work)
    assert calls == [] and WorkDir(work.url).is_done("curate", 3)
    work.remove()


# Modification times: the data stage's input fingerprint rests on them (a touched
# source file reruns the stage), so each filesystem's way of saying it must be read.

@pytest.mark.parametrize("info, ns", [
    ({"mtime": 1_700_000_000}, 1_700_000_000 * 10**9),  # an int of seconds, exactly
    ({"mtime": 1.5}, 1_500_000_000),  # the local filesystem: float seconds
    ({"LastModified": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)},
     1_704_164_645 * 10**9),  # s3fs: a datetime; 2024-01-02T03:04:05Z is 1704164645 s after the epoch
    ({"last_modified": "2024-01-02T03:04:05+00:00"}, 1_704_164_645 * 10**9),  # adlfs
    ({"updated": "2024-01-02T03:04:05Z"}, 1_704_164_645 * 10**9),  # gcsfs: ISO 8601 with a Z
    ({"created": 86_400.0}, 86_400 * 10**9),  # fsspec's memory filesystem, as a number here
    ({"updated": "not a date", "created": 2.0}, 2_000_000_000),  # an unreadable one is skipped
    ({"mtime": None, "created": 3}, 3_000_000_000),
    ({"mtime": 4, "created": 5}, 4_000_000_000),  # the first one found wins
    ({"size": 3}, 0),  # none: 0, the fingerprint then rests on the size
    ({"mtime": [1]}, 0),  # a shape not understood
])
def test_each_filesystems_modification_time_in_nanoseconds(info, ns):
    from fmforge.data.store import _mtime_ns

    assert _mtime_ns(info) == ns


def test_an_object_stores_sizes_and_times_are_what_fsspec_says(monkeypatch):
    """stat and tree_stat on a URL: fsspec's own info read back (the memory
    filesystem says ``created``, a datetime)."""
    s = Store(_memory_url())
    mem = fsspec.filesystem("memory")
    try:
        s.write_bytes("d/a.bin", b"12345")
        s.write_bytes("d/e/b.bin", b"123")
        infos = {rel: mem.info(f"{s.root}/{rel}") for rel in ("d/a.bin", "d/e/b.bin")}
        ns = {rel: int(i["created"].timestamp() * 10**9) for rel, i in infos.items()}
        assert all(v > 1_600_000_000 * 10**9 for v in ns.values())
        assert s.stat("d/a.bin") == (5, ns["d/a.bin"])
        assert s.tree_stat("d") == (8, max(ns.values()))
        s.write_bytes("d/empty.bin", b"")  # counts 0 bytes
        assert s.tree_stat("d")[0] == 8
        assert s.tree_stat("nowhere") == (0, 0)
    finally:
        s.remove()


def test_a_local_stores_times_are_the_nanosecond_mtimes(tmp_path):
    s = Store(str(tmp_path))
    s.write_bytes("d/a.bin", b"12345")
    s.write_bytes("d/e/b.bin", b"123")
    os.utime(tmp_path / "d/a.bin", ns=(1, 1_700_000_000_123_456_789))
    os.utime(tmp_path / "d/e/b.bin", ns=(1, 1_600_000_000_000_000_001))
    assert s.stat("d/a.bin") == (5, 1_700_000_000_123_456_789)
    assert s.tree_stat("d") == (8, 1_700_000_000_123_456_789)


def test_a_work_dir_table_reads_back_in_pyarrow_as_written(store):
    """A table written by the work directory is a parquet file pyarrow reads back
    whole; zstd, in row groups of 1,024 rows (the readers hold one at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = WorkDir(store.url)
    table = pa.table({"id": [f"d{i}" for i in range(2500)], "n": list(range(2500))})
    work.write_table("t/x.parquet", table)
    meta = pq.ParquetFile(work.open_read("t/x.parquet")).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1024, 1024, 452]
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_table(work.open_read("t/x.parquet")).equals(table)
    assert work.read_table("t/x.parquet").equals(table)
    assert work.read_table("t/x.parquet", columns=["n"]).equals(table.select(["n"]))


def test_makedirs_is_idempotent_and_an_empty_tree_has_no_size_or_time(store):
    store.makedirs("a/b")
    store.makedirs("a/b")  # again: no error
    store.makedirs()  # the root itself
    assert store.isdir("a/b") and store.list("a") == ["b"] and store.list("") == ["a"]
    fresh = Store(store.url + "/fresh")
    fresh.makedirs()
    assert store.isdir("fresh") and fresh.list("") == []
    assert store.tree_stat("a") == (0, 0)


@pytest.mark.parametrize("name", ["dataX", "data ", "X"])
def test_a_name_ending_in_any_character_but_a_slash_is_kept(tmp_path, name):
    """Only slashes are trimmed from a URL or a listed name ("dataX" stays, as does a
    folder whose name ends in a space)."""
    local = Store(str(tmp_path / name) + "/")
    assert local.url == str(tmp_path / name) and local.root == str(tmp_path / name)
    local.write_bytes(f"{name}/{name}", b"1")
    assert (tmp_path / name / name / name).read_bytes() == b"1"
    assert local.list("") == [name] and local.list(name) == [name]
    mem = Store(f"memory://fmforge-{uuid.uuid4().hex}/{name}/")
    try:
        assert mem.url.endswith(f"/{name}") and mem.root.endswith(f"/{name}")
        mem.write_bytes(f"{name}/{name}", b"1")
        assert mem.list(name) == [name]
        assert fsspec.filesystem("memory").cat_file(f"{mem.root}/{name}/{name}") == b"1"
    finally:
        mem.remove()


def test_the_root_itself_is_empty_or_dot_relative_to_it(store):
    assert store.path("") == store.path(".") == store.root
    root_url = fsspec.filesystem("memory").unstrip_protocol(store.root) if store.is_url else store.url
    assert store.url_of("") == store.url_of(".") == root_url  # not root + "/"
    assert store.rel(store.root) == "."
    assert store.rel(store.path("a/b")) == "a/b"
    store.write_bytes("zero.bin", b"")
    assert store.stat("zero.bin")[0] == 0  # an empty object is 0 bytes, not "unknown"


def test_a_doubled_root_slash_is_the_root():
    s = Store("//")
    assert s.url == "/" and s.path("x") == "/x"


def test_open_binary_reads_a_listed_local_path_or_url(tmp_path):
    """What the readers open a listed source file with: its bytes, read back by os
    or fsspec, whether the listing gave a path or a URL."""
    from fmforge.data.store import is_url, open_binary

    (tmp_path / "a.txt").write_bytes(b"local \xc3\xa9")
    name = f"/fmforge-store-{uuid.uuid4().hex}/b.txt"
    fsspec.filesystem("memory").pipe_file(name, b"remote")
    try:
        assert not is_url(str(tmp_path / "a.txt")) and is_url(f"memory://{name}")
        with open_binary(str(tmp_path / "a.txt")) as f:
            assert f.read() == b"local \xc3\xa9"
        with open_binary(f"memory://{name}") as f:
            assert f.read() == b"remote"
    finally:
        fsspec.filesystem("memory").rm(name)
