"""Bytes to clean text: UTF-8 decoding that counts what it replaces, and the one
normal form every document is stored in.

Normalising before filtering and hashing matters: a file saved with a BOM or
Windows line endings is the same document as its LF twin, and exact dedup
should say so. Undecodable bytes are replaced (U+FFFD) and *counted*, never
dropped silently, so the data card shows how dirty a source was.
"""

from __future__ import annotations

import codecs
import re
import threading
import unicodedata

_ERROR_HANDLER = "fmforge.count_replace"
_counter = threading.local()


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _counter.replaced = getattr(_counter, "replaced", 0) + (exc.end - exc.start)
    return "\ufffd", exc.end


codecs.register_error(_ERROR_HANDLER, _count_and_replace)


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8; return the text and how many bytes were undecodable.

    Undecodable byte sequences become U+FFFD exactly as ``errors="replace"``
    would make them.
    """
    try:
        return data.decode("utf-8"), 0  # the common case, at C speed
    except UnicodeDecodeError:
        return _decode_counting_replacements(data)


def _decode_counting_replacements(data: bytes) -> tuple[str, int]:
    _counter.replaced = 0
    text = data.decode("utf-8", errors=_ERROR_HANDLER)
    return text, _counter.replaced


def normalize_text(text: str) -> str:
    """Strip a leading BOM, turn CRLF and lone CR into LF, compose to Unicode NFC."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> tuple[str, int]:
    """Replace lone UTF-16 surrogates (a JSON ``"\\ud800"`` escape decodes to one)
    by U+FFFD; they cannot be written as UTF-8. Returns the text and how many."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        return _SURROGATE.subn("\ufffd", text)
