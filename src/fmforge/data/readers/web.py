"""``type: html``, ``warc`` and ``wet``: web pages to text.

Main-text extraction is trafilatura's, with the settings FineWeb uses
(datatrove's ``Trafilatura`` extractor): ``favor_precision`` and no comments.
For pretraining, a page's navigation, cookie banners and comment threads are
noise that quality filters would have to remove later; precision drops most of
it here, at the cost of an occasional borderline paragraph. ``deduplicate`` stays
off: trafilatura's dedup cache depends on the order pages are seen in, which
would make a document's text depend on how files are split across workers.
Nothing is ever fetched: trafilatura is given bytes, never a URL to download.

A WARC's ``response`` (and ``resource``) records with HTML go through that
extraction; a WET's ``conversion`` records are text already. Request, metadata,
warcinfo and revisit records are not documents: skipped, counted by type. A
response that is not HTML or not a success (2xx) is counted and skipped too.
"""

from __future__ import annotations

from typing import Iterator

from fmforge.data.listing import SourceFile
from fmforge.data.normalize import decode_utf8
from fmforge.data.readers.base import Document, ReaderBase, require
from fmforge.data.readers.compression import damage, open_decompressed
from fmforge.data.store import open_binary

_HTML_TYPES = ("text/html", "application/xhtml+xml")


def extract_main_text(html: bytes, source_type: str, *, want_url: bool = False) -> tuple[str | None, str | None]:
    """The main text of a page (None when it has none) and, when asked, its
    canonical URL from the page's own metadata."""
    trafilatura = require("trafilatura", source_type)
    result = trafilatura.bare_extraction(
        html,
        favor_precision=True,
        include_comments=False,
        deduplicate=False,
        with_metadata=want_url,
    )
    if result is None or not (result.text or "").strip():
        return None, None
    return result.text, (result.url if want_url else None)


def looks_like_html(payload: bytes) -> bool:
    head = payload[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


class HtmlReader(ReaderBase):
    """``type: html``: each file is one page."""

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        self.start_file(file)
        with open_binary(file.path) as f:
            data = f.read()
        if not data.strip():
            self.report("empty_file", file.path, "the file is empty")
            return
        text, url = extract_main_text(data, "html", want_url=True)
        if text is None:
            self.count("no_text_pages")
            self.report("no_text", file.path, "no main text found (only navigation, scripts or "
                        "markup?); the page was skipped")
            return
        yield self.document(file, text, url=url)


class WebArchiveReader(ReaderBase):
    """``type: warc`` and ``type: wet``: one document per page record."""

    COUNTERS = ReaderBase.COUNTERS + ("records",)

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        warc = require("warcio.archiveiterator", self.spec.type)
        self.start_file(file)
        record = -1
        with open_binary(file.path) as raw, open_decompressed(raw) as stream:
            archive = warc.ArchiveIterator(stream)
            records = iter(archive)
            while True:
                try:
                    rec = next(records)
                except StopIteration:
                    break
                except Exception as e:  # warcio fails in assorted ways on a damaged record
                    self._damaged(file, record + 1, stream, f"unparseable record ({type(e).__name__}: {e})",
                                 unparseable=True)
                    return
                record += 1
                if rec.format.startswith("warc") and rec.rec_headers.get_header("Content-Length") is None:
                    # a mandatory header: a record stopped inside its headers
                    self._damaged(file, record, stream, "a record's headers are incomplete")
                    return
                self.count("records")
                self.count(f"records_{rec.rec_type}")
                doc = self._document(file, record, rec)
                if _cut_short(rec):
                    self._damaged(file, record, stream, "a record's block is shorter than its Content-Length")
                    return
                if doc is not None:
                    yield doc
            # warcio ends quietly when the input stops inside a record's headers:
            # bytes after the last whole record mean one was cut there
            if damage(stream) or stream.tell() > archive.offset:
                self._damaged(file, record + 1, stream, "the input ends inside a record's headers")
                return
        if record < 0:
            self.report("empty_file", file.path, "no WARC records in the file")

    def _damaged(self, file: SourceFile, record: int, stream, why: str, unparseable: bool = False) -> None:
        """Report where an archive broke; a decompressor's own finding comes first."""
        cut = damage(stream)
        if cut is not None:
            kind, why = cut.kind, cut.message
        elif record == 0 and unparseable:
            kind, why = "not_warc", f"not a WARC file: {why}"
        elif stream.read(1):  # more bytes after the bad record: not a cut, bad data
            kind = "damaged_archive"
        else:
            kind, why = "truncated_archive", f"the archive is cut short: {why} (an interrupted download or copy?)"
        self.report(kind, f"{file.path}#{record}",
                    f"{why}; the {record} record(s) before it were read, the rest skipped")

    def _document(self, file: SourceFile, record: int, rec) -> Document | None:
        url = rec.rec_headers.get_header("WARC-Target-URI")
        if rec.rec_type == "conversion":  # WET: text already
            text, replaced = decode_utf8(rec.content_stream().read())
            if replaced:
                self.count("replaced_bytes", replaced)
                self.report("not_utf8", f"{file.path}#{record}", f"{replaced} byte(s) of {url} are not "
                            "valid UTF-8; kept as U+FFFD")
            return self.document(file, text, record=record, url=url)
        if rec.rec_type not in ("response", "resource"):
            return None
        if rec.rec_type == "response":
            if rec.http_headers is None:  # dns:, whois: ... responses
                self.count("skipped_not_http")
                return None
            status = rec.http_headers.get_statuscode() or ""
            if not status.startswith("2"):
                self.count("skipped_status")
                return None
            ctype = rec.http_headers.get_header("Content-Type")
        else:
            ctype = rec.rec_headers.get_header("Content-Type")
        payload = rec.content_stream().read()
        is_html = ctype.split(";")[0].strip().lower() in _HTML_TYPES if ctype else looks_like_html(payload)
        if not is_html:
            self.count("skipped_not_html")
            return None
        text, _ = extract_main_text(payload, self.spec.type)
        if text is None:
            self.count("no_text_pages")
            self.report("no_text", f"{file.path}#{record}", f"no main text found in {url}; the page was skipped")
            return None
        return self.document(file, text, record=record, url=url)


def _cut_short(rec) -> bool:
    """Whether a record's block ended before its Content-Length (warcio does not say)."""
    stream = rec.raw_stream
    while stream.read(1 << 16):  # drain what is left of the block; only the remaining limit matters
        continue
    return getattr(stream, "limit", 0) > 0
