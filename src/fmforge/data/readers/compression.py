"""Transparent gzip / zstd decompression that *says* when an archive is damaged.

Formats are recognised by their magic bytes, not the file name, so a
``.jsonl`` that is really gzip still reads. A cut or corrupt stream ends like a
normal one (EOF), and ``damage(stream)`` then says what went wrong. Raising
instead would lose data: ``BufferedReader.read(n)`` drops the bytes it already
gathered when the next raw read raises, and warcio takes ``EOFError`` (gzip's
signal for a cut) as the normal end of an archive, while zstandard's own
``stream_reader`` stops silently at a cut. Readers check ``damage`` after the
last record and report it, keeping everything read before it.
"""

from __future__ import annotations

import gzip
import io
import zlib
from abc import abstractmethod
from dataclasses import dataclass
from typing import BinaryIO

from fmforge.errors import MissingDependencyError

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Damage:
    kind: str  # truncated_archive | damaged_archive
    message: str


def open_decompressed(raw: BinaryIO) -> BinaryIO:
    """``raw`` itself when it is not compressed, else a buffered reader of its
    decompressed bytes (``raw`` must be seekable: local files and fsspec files are)."""
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP):
        return io.BufferedReader(_GzipRaw(raw), buffer_size=1 << 20)
    if magic == _ZSTD:
        return io.BufferedReader(_ZstdRaw(raw), buffer_size=1 << 20)
    return raw


def damage(stream: BinaryIO) -> Damage | None:
    """What cut a stream from ``open_decompressed`` short (None: it ended whole)."""
    return getattr(getattr(stream, "raw", None), "damage", None)


_CUT = "the {} stream ends before its end marker: the file was cut short (an interrupted download or copy?)"


class _DecompressingRaw(io.RawIOBase):
    """Counts the decompressed position (warcio calls ``tell``) and turns damage into EOF."""

    def __init__(self) -> None:
        self.damage: Damage | None = None
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        if self.damage is not None:
            return 0
        data = self._read(len(b))
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    @abstractmethod  # io.RawIOBase's metaclass is ABCMeta: only gzip/zstd subclasses are made
    def _read(self, n: int) -> bytes:
        """At most ``n`` decompressed bytes; b"" at the end or on damage (set ``self.damage``)."""


class _GzipRaw(_DecompressingRaw):
    """gzip, all members of a multi-member file (warcio writes one per record)."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")

    def _read(self, n: int) -> bytes:
        try:
            return self._gz.read1(n)  # read1: one step, so bytes before a cut come out first
        except EOFError:
            self.damage = Damage("truncated_archive", _CUT.format("gzip"))
        except (zlib.error, gzip.BadGzipFile) as e:
            self.damage = Damage("damaged_archive", f"corrupt gzip data ({e})")
        return b""


class _ZstdRaw(_DecompressingRaw):
    """zstd, frame after frame; input that ends inside a frame is a cut."""

    def __init__(self, raw: BinaryIO):
        super().__init__()
        try:
            import zstandard
        except ImportError:
            raise MissingDependencyError("reading .zst files needs zstandard: pip install 'fmforge[data]'") from None
        self._zstd = zstandard
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = None  # decompressor of the current frame
        self._unused = b""  # input after the end of the last frame
        self._out = memoryview(b"")

    def _read(self, n: int) -> bytes:
        while not self._out:
            if not self._decompress_more():
                return b""
        data, self._out = self._out[:n].tobytes(), self._out[n:]
        return data

    def _decompress_more(self) -> bool:
        chunk, self._unused = self._unused or self._raw.read(_CHUNK), b""
        if not chunk:
            if self._obj is not None and not self._obj.eof:
                self.damage = Damage("truncated_archive", _CUT.format("zstd"))
            return False
        if self._obj is None or self._obj.eof:
            self._obj = self._dctx.decompressobj()
        try:
            out = self._obj.decompress(chunk)
        except self._zstd.ZstdError as e:
            self.damage = Damage("damaged_archive", f"corrupt zstd data ({e})")
            return False
        if self._obj.eof:
            self._unused = self._obj.unused_data
        self._out = memoryview(out)
        return True
