"""What can go wrong with the data stage's input: errors that stop the stage,
and bad input counted and reported, never lost silently.

Each error is a ``UserError`` (and a ``ValueError``) subclass whose message says what was wrong, where
(which source, which pattern, which filter) and what to do, so the CLI can print
it as-is instead of a traceback.

Every reader reports what it could not read (a line that is not JSON, a file
that is not UTF-8, a truncated archive...) to an ``InputProblems`` with the file
and line or record. By default the stage goes on and the data card lists the
counts per kind and the first examples; with ``data.strict: true`` the first
problem stops the stage with the same message.
"""

from __future__ import annotations

from typing import Any

from fmforge.errors import UserError
from fmforge.progress import log

MAX_EXAMPLES = 20  # per source, kept in the data card
MAX_WARNINGS = 5  # per source and task, printed as they happen


class DataError(UserError, ValueError):
    """A data-stage problem a user can fix by changing the config or the files."""


class UnknownPlaceholderError(DataError):
    """A ``{name}`` in a source path that fmforge does not know."""


class NoFilesMatchedError(DataError):
    """A source pattern (or a whole source, after excludes) matched no files."""


class EmptyCorpusError(DataError):
    """Filtering, dedup or mixing left nothing to train on."""


class UnknownSourceTypeError(DataError):
    """A ``type:`` with no registered reader."""


class BadInputError(DataError):
    """With ``data.strict: true``: the first unreadable file, line or record."""


class InputProblems:
    """The problems of one source (within one task); mergeable across tasks."""

    def __init__(self, source: str, strict: bool = False, *, quiet: bool = False):
        self.source = source
        self.strict = strict
        self.quiet = quiet
        self.counts: dict[str, int] = {}
        self.examples: list[dict[str, str]] = []

    def report(self, kind: str, where: str, detail: str, *, warn: bool = True) -> None:
        """Record one problem. ``kind`` is a short key (``not_json``,
        ``missing_field``, ``not_utf8``, ...), ``where`` is ``path:line``,
        ``path#record`` or ``path``, ``detail`` says what was wrong and, where
        useful, what to do. ``warn=False`` counts it (data card, summary line)
        without printing a warning: for what is normal in some corpora, such as
        the empty ``__init__.py`` files of a source tree."""
        message = f"source {self.source!r}: {where}: {detail}"
        if self.strict:
            raise BadInputError(message + " (data.strict is on; set it to false to count and skip)")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, "where": where, "detail": detail})
        if warn and not self.quiet and self.total <= MAX_WARNINGS:
            log(f"[yellow]warning:[/] {message}; counted in the data card")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: InputProblems | dict[str, Any]) -> None:
        d = other.to_dict() if isinstance(other, InputProblems) else other
        for k, v in d.get("counts", {}).items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        room = MAX_EXAMPLES - len(self.examples)
        if room > 0:
            self.examples.extend(d.get("examples", [])[:room])

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(sorted(self.counts.items())), "examples": list(self.examples)}
