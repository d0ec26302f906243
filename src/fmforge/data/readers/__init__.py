"""Source readers: how the files of one source become ``Document`` objects.

A reader is chosen by the source's ``type`` (``READERS``); each family of
formats lives in its own module of this package, and what they share (the
``Document`` they make) in ``base.py``. Readers yield the *raw* text (the
stage's cleaning step normalises it), report what they cannot read to the
source's ``InputProblems`` with the file and line or record, and keep counters
(bytes, documents, skipped records...) for the data card. Adding a format means
one reader class and one line here; listing, filtering, dedup, splitting, mixing
and sharding stay as they are.
"""

from __future__ import annotations

import importlib
from typing import Iterator, Protocol

from fmforge.config import SourceConfig
from fmforge.data.listing import SourceFile
from fmforge.data.problems import InputProblems, UnknownSourceTypeError
from fmforge.data.readers.base import Document


class SourceReader(Protocol):
    def read_file(self, file: SourceFile) -> Iterator[Document]:
        """The documents of one listed file, raw text (not normalised)."""
        ...

    def counters(self) -> dict[str, int]:
        """Reader-specific counts for the data card (all ints, summed over files)."""
        ...


# type -> "module:class" in this package; imported on use, so a source type's
# optional dependencies load only when a config uses that type.
READERS: dict[str, str] = {
    "text": "text:TextReader",
    "jsonl": "jsonl:JsonlReader",
    "parquet": "tabular:ParquetReader",
    "csv": "tabular:CsvReader",
    "html": "web:HtmlReader",
    "warc": "web:WebArchiveReader",
    "wet": "web:WebArchiveReader",
    "hf_disk": "hf_disk:HfDiskReader",
}


def open_reader(spec: SourceConfig, problems: InputProblems | None = None) -> SourceReader:
    """The reader for ``spec.type``; an unknown type names the ones available.

    ``problems`` collects what the reader cannot read (by default a fresh,
    non-strict ``InputProblems`` for the source)."""
    try:
        module, cls = READERS[spec.type].split(":")
    except KeyError:
        raise UnknownSourceTypeError(
            f"source {spec.name!r}: type {spec.type!r} has no reader; available: {sorted(READERS)}"
        ) from None
    factory = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    return factory(spec, problems if problems is not None else InputProblems(spec.name))
