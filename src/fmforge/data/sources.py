"""Source readers: how the files of one source become ``Document`` objects.

A reader is chosen by the source's ``type``. Adding a format (JSONL, Parquet,
WARC) means writing one class with ``read_file`` and registering it in
``READERS``; listing, filtering, dedup, splitting, mixing and sharding stay as
they are. A reader also keeps its own counters (decode problems, bad lines...),
which the data card reports per source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from fmforge.config import SourceConfig
from fmforge.data.errors import UnknownSourceTypeError
from fmforge.data.listing import SourceFile
from fmforge.data.normalize import decode_utf8, normalize_text


@dataclass(frozen=True, slots=True)
class Document:
    """One normalised document. ``id`` is stable across machines and runs."""

    id: str
    text: str
    source: str
    path: str


class SourceReader(Protocol):
    def read_file(self, file: SourceFile) -> Iterator[Document]:
        """The documents of one listed file, normalised."""
        ...

    def counters(self) -> dict[str, int]:
        """Reader-specific counts for the data card (all ints, summed over files)."""
        ...


class TextFileReader:
    """``type: text``: each file is one document, decoded as UTF-8."""

    def __init__(self, spec: SourceConfig):
        self.name = spec.name
        self.raw_bytes = 0
        self.decode_error_files = 0
        self.replaced_bytes = 0

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        with open(file.path, "rb") as f:
            data = f.read()
        self.raw_bytes += len(data)
        text, replaced = decode_utf8(data)
        if replaced:
            self.decode_error_files += 1
            self.replaced_bytes += replaced
        yield Document(
            id=f"{self.name}/{file.rel}",
            text=normalize_text(text),
            source=self.name,
            path=file.path,
        )

    def counters(self) -> dict[str, int]:
        return {
            "raw_bytes": self.raw_bytes,
            "decode_error_files": self.decode_error_files,
            "replaced_bytes": self.replaced_bytes,
        }


READERS: dict[str, Callable[[SourceConfig], SourceReader]] = {
    "text": TextFileReader,
}


def open_reader(spec: SourceConfig) -> SourceReader:
    """The reader for ``spec.type``; an unknown type names the ones available."""
    try:
        factory = READERS[spec.type]
    except KeyError:
        raise UnknownSourceTypeError(
            f"source {spec.name!r}: type {spec.type!r} has no reader; "
            f"available: {sorted(READERS)}"
        ) from None
    return factory(spec)
