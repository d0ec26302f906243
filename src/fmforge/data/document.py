"""The unit that flows through the data stage: one document with its origin.

Readers make them from files; cleaning steps may rewrite ``text``; filters drop
them with a reason; the assembled shards keep ``id``, ``text``, ``source``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """``id`` is stable across machines and runs: ``SOURCE/REL`` for a whole
    file, ``SOURCE/REL:LINE`` for a line of a JSONL or CSV file (1-based),
    ``SOURCE/REL#RECORD`` for a record of a Parquet file, web archive or saved
    dataset (0-based). ``metadata`` holds ``path`` (the file, or URL), ``line``
    or ``record``, ``url`` where a web page has one, and what steps add
    (``language``, ``language_score``)."""

    id: str
    text: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
