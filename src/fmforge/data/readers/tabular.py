"""``type: parquet`` and ``type: csv``: one document per row, the text in
``text_column``.

Parquet is read one record batch at a time (only the text column), so a file
of any size streams. CSV uses the stdlib parser with its field size limit
raised (its 128 KiB default would refuse a long document) and, like JSONL, may
be gzip or zstd compressed; its ids carry the line a row starts on.
"""

from __future__ import annotations

import csv
import sys
from typing import Iterator

from fmforge.data.listing import SourceFile
from fmforge.data.normalize import decode_utf8
from fmforge.data.readers.base import Document, ReaderBase
from fmforge.data.readers.compression import damage, open_decompressed
from fmforge.data.store import open_binary

BATCH_ROWS = 1024


def _raise_csv_field_limit() -> None:
    limit = sys.maxsize
    while True:  # the limit is a C long: 32 bits on Windows
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


_raise_csv_field_limit()


class ParquetReader(ReaderBase):
    COUNTERS = ReaderBase.COUNTERS + ("rows",)

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.start_file(file)
        column = self.spec.text_column
        with open_binary(file.path) as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                self.report("unreadable_file", file.path, f"not a readable Parquet file ({e})")
                return
            schema = pf.schema_arrow
            if column not in schema.names:
                self.report("missing_column", file.path, f"no column {column!r} (it has "
                            f"{', '.join(map(repr, schema.names))}); set the source's text_column")
                return
            ftype = schema.field(column).type
            if str(ftype) not in ("string", "large_string", "string_view"):
                self.report("not_string", file.path, f"column {column!r} holds {ftype}, not strings")
                return
            batches = (b.column(0).to_pylist() for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=[column]))
            try:
                yield from self.column_documents(file, column, batches)
            except (pa.ArrowException, OSError) as e:
                self.report("damaged_file", f"{file.path}#{self.row}",
                            f"unreadable from row {self.row} on ({e}); the rows before it were read")


class CsvReader(ReaderBase):
    COUNTERS = ReaderBase.COUNTERS + ("rows", "blank_lines", "decode_error_lines", "replaced_bytes")

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        self.start_file(file)
        with open_binary(file.path) as raw, open_decompressed(raw) as stream:
            rows = csv.reader(self._lines(file, stream))
            try:
                # one row behind: at a cut, the last row may be a quoted field cut in two
                pending = None
                for doc in self._documents(file, rows, stream):
                    if pending is not None:
                        yield pending
                    pending = doc
                cut = damage(stream)
                if pending is not None and not cut:
                    yield pending
                elif pending is not None:
                    self.count("documents", -1)  # made, but not kept
            except csv.Error as e:
                self.report("not_csv", f"{file.path}:{rows.line_num}",
                            f"unparseable CSV ({e}); the rest of the file was skipped")
                return
        if cut:
            self.report(cut.kind, f"{file.path}:{rows.line_num + 1}",
                        f"{cut.message}; the rows before line {rows.line_num + 1} were read")

    def _documents(self, file: SourceFile, rows, stream) -> Iterator[Document]:
        column = self.spec.text_column
        header = next(rows, None)
        if header is None:
            if not damage(stream):
                self.report("empty_file", file.path, "the file is empty (not even a header row)")
            return
        if header and header[0].startswith("\ufeff"):  # a BOM (spreadsheet exports)
            header[0] = header[0][1:]
        if column not in header:
            self.report("missing_column", f"{file.path}:1", f"the header has no column {column!r} "
                        f"(it has {', '.join(map(repr, header))}); set the source's text_column")
            return
        index = header.index(column)
        end = rows.line_num
        for row in rows:
            line, end = end + 1, rows.line_num  # a quoted field may span lines
            if not row:
                self.count("blank_lines")
                continue
            self.count("rows")
            if index >= len(row):
                self.report("missing_field", f"{file.path}:{line}", f"the row has {len(row)} "
                            f"field(s), the header {len(header)}: no {column!r} value")
                continue
            yield self.document(file, row[index], line=line)

    def _lines(self, file: SourceFile, stream) -> Iterator[str]:
        """Decoded lines for the csv parser, each bad UTF-8 line reported."""
        for line_no, line in enumerate(stream, 1):
            if not line.endswith(b"\n") and damage(stream):
                return  # the partial line at a cut (read_file reports the cut)
            text, replaced = decode_utf8(line)
            if replaced:
                self.count("decode_error_lines")
                self.count("replaced_bytes", replaced)
                self.report("not_utf8", f"{file.path}:{line_no}",
                            f"{replaced} byte(s) are not valid UTF-8; kept as U+FFFD")
            yield text
