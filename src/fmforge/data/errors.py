"""Errors of the data stage.

Each is a ``ValueError`` subclass whose message says what was wrong, where
(which source, which pattern, which filter) and what to do, so the CLI can print
it as-is instead of a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
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
