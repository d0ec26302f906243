"""The data stage's files, on any filesystem fsspec reaches: a local path, an NFS
mount, or a URL (``s3://bucket/prefix``, ``file:///data``, ``memory://x``).

A ``Store`` is one directory: every path it is given is relative to its root,
and it travels to other processes (Ray workers) as its URL alone. Three users:

* the source listing (``listing.py``) globs and stats a source's files under the
  source's root;
* the stage's work directory (``WorkDir``): what each task writes, and the
  completion marker it writes last, so a marker means the task's files are
  complete and a rerun after a kill skips the tasks that have one;
* dedup's bucket files (``dedup.py``).

Every write is atomic in the one way every filesystem fsspec reaches allows: the
bytes go to a temporary name beside the final one (``.tmp-HEX``, which readers
of a directory skip), then move to the final name: a rename on a local disk or
NFS; a copy on an object store, where the final object appears whole or not at
all. An error while writing removes the temporary file, so no half-written file
ever stands under a final name.

On a local disk (or an NFS mount) each file is also fsynced before it is moved
into place, and a task's completion marker is written only after the directories
that name its files are fsynced too: a power cut can leave a marker only beside
complete files. An object store has nothing to fsync: an object is durable once
its upload returns. The run directory itself (``runs/NAME/``, always local) is
written by ``fmforge.rundir``'s atomic helpers.

A marker lists the files its task wrote (every file written through a ``Store``
under the work directory by the same thread since its previous marker there: a
task writes its files and then its marker on one thread) with their sizes. A
rerun trusts a marker only when those files are there at those sizes, a parquet
file with its footer and a JSON file parsing; otherwise (a marker of an older
fmforge, written before markers were fsynced after their data, or a disk that
lied) the marker is removed, the task is redone and ``WorkDir.redone`` says why.

Local paths (not URLs) keep Python's own semantics where fsspec's differ: glob
(``*`` does not match a hidden file, as in a shell), the nanosecond mtime (the
stage's input fingerprint), and a 1 MiB read buffer for the readers. The
listing's ``isfile`` and ``stat`` ask ``os`` too: half the time of fsspec's local
filesystem per file, which counts on a corpus of many small files.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import posixpath
import re
import threading
import uuid
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from fmforge.progress import log

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
READ_BUFFER = 1 << 20
TMP_PREFIX = ".tmp-"
MARKER_FILES = "files"  # the key of a marker that lists the files it vouches for

# Per thread: the files written through a Store since that thread's last marker,
# as {(filesystem class, path): size} (see the module docstring).
_pending = threading.local()


def _written() -> dict[tuple[type, str], int]:
    if not hasattr(_pending, "files"):
        _pending.files = {}
    return _pending.files


def _fsync_path(path: str) -> None:
    """fsync a local file or directory by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_url(path: str) -> bool:
    return bool(_URL.match(path))


def open_binary(path: str) -> BinaryIO:
    """Open a listed file (``SourceFile.path``: a local path or a URL) to read bytes."""
    if is_url(path):
        return fsspec.open(path, "rb").open()
    return open(path, "rb", buffering=READ_BUFFER)


def locate(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a local path or URL, and the path on it (no protocol)."""
    return url_to_fs(url)


class Store:
    """A directory at ``url`` (a local path or an fsspec URL); paths are relative to it."""

    def __init__(self, url: str):
        protocol = _URL.match(url)
        head = protocol.group(0) if protocol else ""
        rest = url[len(head):]
        # a trailing slash is dropped, but not the root's own ("/", "file:///", "memory://")
        self.url = head + (rest.rstrip("/") or rest[:1])
        self.is_url = bool(head)
        self.fs, root = locate(self.url)
        # a local path or file:// URL: a disk, where a write is durable only once fsynced
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/") or ("/" if root.startswith("/") else "")
        self._prefix = self.root if self.root in ("", "/") else self.root + "/"

    def __getstate__(self) -> dict[str, Any]:  # travel to workers as the URL alone
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])

    # paths ------------------------------------------------------------------

    def path(self, rel: str) -> str:
        """``rel`` on the filesystem (no protocol)."""
        return self._prefix + rel if rel not in ("", ".") else self.root

    def rel(self, path: str) -> str:
        """A path on the filesystem, relative to the root (``.`` for the root)."""
        if path.startswith(self._prefix):
            return path[len(self._prefix):]
        return posixpath.relpath(path, self.root)

    def url_of(self, rel: str) -> str:
        """What a user sees for ``rel``: a local path, or a URL with its protocol."""
        path = self.path(rel)
        return self.fs.unstrip_protocol(path) if self.is_url else path

    # reading ------------------------------------------------------------------

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def isfile(self, rel: str) -> bool:
        path = self.path(rel)
        return self.fs.isfile(path) if self.is_url else os.path.isfile(path)

    def isdir(self, rel: str) -> bool:
        path = self.path(rel)
        return self.fs.isdir(path) if self.is_url else os.path.isdir(path)

    def list(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path(rel), detail=False)]
        except FileNotFoundError:
            return []

    def glob(self, pattern: str) -> list[str]:
        """Paths matching ``pattern`` (``**`` recurses), relative to the root, sorted."""
        if self.is_url:
            hits = self.fs.glob(self.path(pattern))
        else:
            hits = [os.path.normpath(h).replace(os.sep, "/")
                    for h in glob.glob(self.path(pattern), recursive=True)]
        return sorted(self.rel(h) for h in hits)

    def stat(self, rel: str) -> tuple[int, int]:
        """Size in bytes and modification time in ns (0 where the filesystem has none)."""
        if not self.is_url:
            st = os.stat(self.path(rel))
            return st.st_size, st.st_mtime_ns
        info = self.fs.info(self.path(rel))
        return int(info.get("size") or 0), _mtime_ns(info)

    def tree_stat(self, rel: str) -> tuple[int, int]:
        """Total size and newest mtime of the files under a directory."""
        if not self.is_url:
            size, mtime = 0, 0
            for here, _, names in os.walk(self.path(rel)):
                for name in names:
                    st = os.stat(os.path.join(here, name))
                    size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
            return size, mtime
        infos = self.fs.find(self.path(rel), detail=True).values()
        return sum(int(i.get("size") or 0) for i in infos), max((_mtime_ns(i) for i in infos), default=0)

    def open_read(self, rel: str) -> BinaryIO:
        return self.fs.open(self.path(rel), "rb")

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; ``FileNotFoundError`` when it does not exist."""
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel).decode("utf-8"))

    # writing ------------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    @contextmanager
    def open_write(self, rel: str) -> Iterator[BinaryIO]:
        """A file to stream into; it appears at ``rel`` only when the block ends
        without an error (see the module docstring)."""
        final = self.path(rel)
        parent = posixpath.dirname(final)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
                size = f.tell()
                if self.is_local:  # on disk before it has its final name (module docstring)
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        self.fs.mv(tmp, final)
        _written()[type(self.fs), final] = size

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_write(rel) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    def remove(self, rel: str = "") -> None:
        """Remove ``rel`` (the whole directory by default) and all under it."""
        path = self.path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        written = _written()
        for key in [k for k in written if k[0] is type(self.fs) and (k[1] == path or k[1].startswith(path + "/"))]:
            del written[key]


class WorkDir(Store):
    """The data stage's work directory: the files its tasks write (parquet tables
    among them) and their completion markers. It is keyed by the fingerprint of
    the stage's inputs (files and config), so a changed input never reuses a
    stale task's output."""

    def __init__(self, url: str):
        super().__init__(url)
        self.redone: list[str] = []  # why each task whose marker was not trusted is done again

    def write_table(self, rel: str, table: Any) -> None:
        """A pyarrow table as a parquet file, atomically."""
        import pyarrow.parquet as pq

        with self.open_write(rel) as f:
            pq.write_table(table, f, compression="zstd", row_group_size=1024)

    def read_table(self, rel: str, columns: list[str] | None = None) -> Any:
        from fmforge.data.arrow import read_parquet  # not pq.read_table: it imports pandas (arrow.py)

        with self.open_read(rel) as f:
            return read_parquet(f, columns=columns, use_threads=False)

    def marker(self, phase: str, index: int) -> str:
        return f"markers/{phase}-{index:05d}.done"

    def is_done(self, phase: str, index: int) -> bool:
        """True when the task's marker is there and its files are as it listed them
        (module docstring); a marker that is not is removed, and counted in ``redone``."""
        rel = self.marker(phase, index)
        try:
            raw = self.read_bytes(rel)
        except FileNotFoundError:
            return False
        problem = self._damage(raw)
        if problem is None:
            return True
        self.redone.append(f"{phase} task {index}: {problem}")
        log(f"[yellow]warning:[/] data: {self.redone[-1]}; the task is done again")
        self.remove(rel)
        return False

    def _damage(self, raw: bytes) -> str | None:
        """What is wrong with a task whose marker holds ``raw`` (None: nothing)."""
        try:
            marker = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            marker = None
        files = marker.get(MARKER_FILES) if isinstance(marker, dict) else None
        if not isinstance(files, dict):
            return "its marker is damaged or lists no files (written by an older fmforge)"
        for rel, size in files.items():
            try:
                found = self.stat(rel)[0]
            except FileNotFoundError:
                return f"{rel} is missing"
            if found != size:
                return f"{rel} has {found} bytes, {size} when the task ended"
            bad = self._unreadable(rel)
            if bad:
                return f"{rel} cannot be read ({bad})"
        return None

    def _unreadable(self, rel: str) -> str | None:
        """A parquet file without its footer or a JSON file that does not parse:
        what a disk that kept the size but not the blocks leaves."""
        try:
            if rel.endswith(".parquet"):
                import pyarrow.parquet as pq

                with self.open_read(rel) as f:
                    pq.ParquetFile(f).metadata  # noqa: B018  (reads and checks the footer)
            elif rel.endswith(".json"):
                json.loads(self.read_bytes(rel).decode("utf-8"))
        except Exception as e:  # pyarrow's errors, UnicodeDecodeError, JSONDecodeError
            return f"{type(e).__name__}: {e}"
        return None

    def mark_done(self, phase: str, index: int, info: dict[str, Any] | None = None) -> None:
        """The task is complete: its files (written by this thread since its last
        marker here) are made durable, then listed in its marker."""
        written = _written()
        mine = {key: size for key, size in written.items()
                if key[0] is type(self.fs) and key[1].startswith(self._prefix)}
        for key in mine:
            del written[key]
        if self.is_local:
            # the directories that name the files, and those above them up to the root
            # (a new directory is an entry of its parent)
            dirs = set()
            for _, path in mine:
                while path != self.root:  # every path in ``mine`` is under the root
                    path = posixpath.dirname(path)
                    dirs.add(path)
            for path in dirs:
                _fsync_path(path)
        files = {self.rel(path): size for (_, path), size in mine.items()}
        self.write_json(self.marker(phase, index), {**(info or {}), MARKER_FILES: files})
        del written[type(self.fs), self.path(self.marker(phase, index))]  # not the next marker's


def _mtime_ns(info: dict) -> int:
    """Modification time from an fsspec info dict; filesystems name it differently
    (0 when unknown: the inputs fingerprint then rests on the size alone)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, str):
            try:
                v = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(v, datetime.datetime):
            v = v.timestamp()
        if isinstance(v, (int, float)):
            return int(v * 1_000_000_000)
    return 0
