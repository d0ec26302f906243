"""The data stage's work directory: the files its tasks write and their
completion markers, on any filesystem fsspec reaches.

Tasks may run in other processes or on other machines (Ray), so they share
nothing but this directory: a local path, an NFS mount, or an fsspec URL
(``s3://bucket/prefix``). Every file is written under a temporary name and
renamed, and a task's marker is written last, so a marker means the task's
files are complete; a rerun after a kill skips the tasks that have one.

The directory is keyed by the fingerprint of the stage's inputs (files and
config), so a changed input never reuses a stale task's output.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from typing import Any, BinaryIO, Iterator

import fsspec


class WorkDir:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")

    def __getstate__(self) -> dict[str, Any]:  # travel to workers as the URL alone
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"])

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def makedirs(self, rel: str) -> None:
        self.fs.makedirs(self.path(rel), exist_ok=True)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def open_read(self, rel: str) -> BinaryIO:
        return self.fs.open(self.path(rel), "rb")

    @contextmanager
    def open_write(self, rel: str) -> Iterator[BinaryIO]:
        """A file to stream into; it appears at ``rel`` only when the block ends
        without an error."""
        final = self.path(rel)
        parent = final.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                yield f
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise
        self.fs.mv(tmp, final)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically (temporary name, then rename)."""
        with self.open_write(rel) as f:
            f.write(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    def read_json(self, rel: str) -> Any:
        with self.open_read(rel) as f:
            return json.loads(f.read().decode("utf-8"))

    def write_table(self, rel: str, table: Any) -> None:
        """A pyarrow table as a parquet file, atomically."""
        import pyarrow.parquet as pq

        with self.open_write(rel) as f:
            pq.write_table(table, f, compression="zstd", row_group_size=1024)

    def read_table(self, rel: str, columns: list[str] | None = None) -> Any:
        import pyarrow.parquet as pq

        with self.open_read(rel) as f:
            return pq.read_table(f, columns=columns)

    # completion markers -------------------------------------------------

    def marker(self, phase: str, index: int) -> str:
        return f"markers/{phase}-{index:05d}.done"

    def is_done(self, phase: str, index: int) -> bool:
        return self.exists(self.marker(phase, index))

    def mark_done(self, phase: str, index: int, info: dict[str, Any] | None = None) -> None:
        self.write_json(self.marker(phase, index), info or {})

    def remove(self) -> None:
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
