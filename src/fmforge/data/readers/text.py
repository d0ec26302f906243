"""``type: text``: each file is one document.

Corpora globbed from disk often hold a stray binary (an image, a .pyc, a
UTF-16 export) or a file in a legacy encoding. A binary file is reported and
skipped rather than fed to the tokenizer as garbage; text that is only partly
valid UTF-8 is kept with U+FFFD in place of the bad bytes, and reported with the
line of the first one so the user can find and convert it.
"""

from __future__ import annotations

from typing import Iterator

from fmforge.data.listing import SourceFile
from fmforge.data.normalize import decode_utf8
from fmforge.data.readers.base import Document, ReaderBase
from fmforge.data.store import open_binary

SNIFF_BYTES = 8192  # where a NUL byte marks a binary file (git and grep look at 8000)
# Above this share of undecodable bytes a file is not text worth keeping: binary,
# or text in an 8-bit encoding that must be converted before it can be read.
MAX_UNDECODABLE = 0.30


def first_bad_byte(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return -1


def line_of(data: bytes, offset: int) -> int:
    """1-based line number of a byte offset."""
    return data.count(b"\n", 0, offset) + 1


class TextReader(ReaderBase):
    COUNTERS = ReaderBase.COUNTERS + ("binary_files", "decode_error_files", "replaced_bytes")

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        self.start_file(file)
        with open_binary(file.path) as f:
            data = f.read()
        if not data:
            # Counted, not warned about: a source tree is full of empty
            # __init__.py files, and a warning each is noise.
            self.report("empty_file", file.path, "the file is empty", warn=False)
            return
        if b"\0" in data[:SNIFF_BYTES]:
            self._binary(file, "NUL bytes in its first 8 KB")
            return
        text, replaced = decode_utf8(data)
        if replaced:
            if replaced > MAX_UNDECODABLE * len(data):
                self._binary(file, f"{replaced} of its {len(data)} bytes are not valid UTF-8")
                return
            self.count("decode_error_files")
            self.count("replaced_bytes", replaced)
            line = line_of(data, first_bad_byte(data))
            self.report(
                "not_utf8",
                f"{file.path}:{line}",
                f"{replaced} byte(s) are not valid UTF-8 (the first on line {line}); kept as U+FFFD. "
                "Convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) to keep those characters",
            )
        yield self.document(file, text)

    def _binary(self, file: SourceFile, why: str) -> None:
        self.count("binary_files")
        self.report(
            "binary_file",
            file.path,
            f"not a text file ({why}): skipped. If it is text in UTF-16 or a legacy encoding, "
            "convert it to UTF-8; else exclude it with the source's `exclude` patterns",
        )
