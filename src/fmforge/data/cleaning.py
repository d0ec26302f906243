"""The ``clean`` step: the first of every chain, it rewrites and never drops.

1. :func:`fmforge.data.normalize.normalize_text` (BOM, CRLF, NFC), always;
   readers already normalise, so this is a cheap no-op for their documents
   and a guarantee for anything else that builds a ``Document``;
2. mojibake repair with ftfy (``data.cleaning.fix_mojibake``, off by
   default): UTF-8 that was once decoded as Latin-1 or Windows-1252
   ("cafÃ©" -> "café"). Only ftfy's *encoding* fixes run: its other defaults
   (straightening curly quotes, full-width to half-width, ligatures, HTML
   entities) would change correct text, which is not this step's business.
   It runs before control characters go, because the C1 controls are part of
   what ftfy reads to recognise some mojibake;
3. control characters removed (``data.cleaning.remove_control_characters``,
   on by default): Unicode category Cc except tab and newline -- NUL, bell,
   escape, DEL, the C1 range. Format characters (Cf: zero-width joiner, soft
   hyphen) stay; emoji sequences and Indic and Arabic text need them.

Counters: ``control_characters_removed`` (characters),
``mojibake_fixed_documents`` (documents ftfy changed).
"""

from __future__ import annotations

import re
from typing import Any

from fmforge.config import CleaningConfig
from fmforge.data.normalize import normalize_text
from fmforge.data.readers.base import Document
from fmforge.errors import MissingDependencyError

# Cc is U+0000-U+001F and U+007F-U+009F; tab and newline are text.
# (CR is gone already: normalize_text made every line end LF.)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _ftfy_fixer() -> Any:
    try:
        import ftfy
    except ImportError as e:  # the `data` extra
        raise MissingDependencyError(
            "data.cleaning.fix_mojibake needs ftfy: pip install 'fmforge[data]' "
            "(or set data.cleaning.fix_mojibake: false)") from e
    config = ftfy.TextFixerConfig(
        unescape_html=False, remove_terminal_escapes=False, fix_encoding=True,
        restore_byte_a0=True, replace_lossy_sequences=True, decode_inconsistent_utf8=True,
        fix_c1_controls=True, fix_latin_ligatures=False, fix_character_width=False,
        uncurl_quotes=False, fix_line_breaks=False, fix_surrogates=True,
        remove_control_chars=False, normalization="NFC", explain=False)

    def fix(text: str) -> str:
        return ftfy.fix_text(text, config)
    return fix


class Clean:
    name = "clean"
    reasons: tuple[str, ...] = ()  # it never drops

    def __init__(self, cfg: CleaningConfig) -> None:
        self.cfg = cfg
        self._fix = _ftfy_fixer() if cfg.fix_mojibake else None
        self._controls = 0
        self._mojibake = 0

    def counters(self) -> dict[str, int]:
        return {"control_characters_removed": self._controls,
                "mojibake_fixed_documents": self._mojibake}

    def __call__(self, doc: Document) -> str | None:
        text = normalize_text(doc.text)
        # Mojibake is made of non-ASCII characters: pure ASCII needs no look.
        if self._fix is not None and not text.isascii():
            fixed = self._fix(text)
            if fixed != text:
                self._mojibake += 1
                text = fixed
        if self.cfg.remove_control_characters:
            text, n = _CONTROL_RE.subn("", text)
            self._controls += n
        doc.text = text
        return None
