"""What every reader shares: the ``Document`` it makes, its source, where it
reports problems, its counters, and how a document's id and metadata are formed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterable, Iterator

from fmforge.config import SourceConfig
from fmforge.data.listing import SourceFile
from fmforge.data.problems import InputProblems
from fmforge.errors import MissingDependencyError


@dataclass(slots=True)
class Document:
    """The unit that flows through the data stage: one document with its origin.
    Readers make them from files; cleaning steps may rewrite ``text``; filters
    drop them with a reason; the assembled shards keep ``id``, ``text``, ``source``.

    ``id`` is stable across machines and runs: ``SOURCE/REL`` for a whole
    file, ``SOURCE/REL:LINE`` for a line of a JSONL or CSV file (1-based),
    ``SOURCE/REL#RECORD`` for a record of a Parquet file, web archive or saved
    dataset (0-based). ``metadata`` holds ``path`` (the file, or URL), ``line``
    or ``record``, ``url`` where a web page has one, and what steps add
    (``language``, ``language_score``)."""

    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


def require(module: str, source_type: str) -> ModuleType:
    """Import an optional dependency when a reader first needs it, so
    ``import fmforge`` stays fast and a missing extra is named, not a traceback."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"source type {source_type!r} needs the {module.split('.')[0]} package, which is not "
            "installed: pip install 'fmforge[data]'"
        ) from None


class ReaderBase:
    """Counters start at zero for every key in ``COUNTERS`` so the data card shows
    the same keys for every source of a type; other keys appear when counted."""

    COUNTERS: tuple[str, ...] = ("files", "raw_bytes", "documents")

    def __init__(self, spec: SourceConfig, problems: InputProblems):
        self.spec = spec
        self.name = spec.name
        self.problems = problems
        self._counts: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.row = 0  # see column_documents

    def count(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def start_file(self, file: SourceFile) -> None:
        self.count("files")
        self.count("raw_bytes", file.size)  # bytes as stored (compressed, if it is)

    def report(self, kind: str, where: str, detail: str, *, warn: bool = True) -> None:
        self.problems.report(kind, where, detail, warn=warn)

    def document(
        self,
        file: SourceFile,
        text: str,
        *,
        line: int | None = None,
        record: int | None = None,
        source: str | None = None,
        **extra: Any,
    ) -> Document:
        """``SOURCE/REL`` for a whole file, ``SOURCE/REL:LINE`` (1-based) or ``SOURCE/REL#RECORD``
        (0-based); ``extra`` (``url``) goes into the metadata when it is not None. ``source``:
        a group's sub-source (``group_by``), else the reader's source; the id keeps the
        source's own name, since it says where the document was read."""
        doc_id = f"{self.name}/{file.rel}"
        metadata: dict[str, Any] = {"path": file.path}
        if line is not None:
            doc_id += f":{line}"
            metadata["line"] = line
        if record is not None:
            doc_id += f"#{record}"
            metadata["record"] = record
        metadata.update((k, v) for k, v in extra.items() if v is not None)
        self.count("documents")
        return Document(id=doc_id, text=text, source=source or self.name, metadata=metadata)

    def column_documents(self, file: SourceFile, column: str, batches: Iterable[list[Any]]) -> Iterator[Document]:
        """One document per row of a text column read in batches (Parquet, saved
        datasets): a null is reported with its record, not kept. ``self.row`` is
        the record about to be read, for a reader that must say where it broke."""
        self.row = 0
        for values in batches:
            for value in values:
                self.count("rows")
                if value is None:
                    self.report("null_text", f"{file.path}#{self.row}", f"{column!r} is null")
                else:
                    yield self.document(file, value, record=self.row)
                self.row += 1

