"""``type: jsonl``: one JSON object per line, the text under ``text_field``.

Plain, gzip or zstd (recognised by content, so ``.jsonl``, ``.jsonl.gz``,
``.jsonl.zst`` and ``.json`` lines all read). Lines are streamed: memory holds
one line, however long, never the file. Every line that yields no document is
reported with ``path:line``; a damaged archive keeps the lines before the damage.

With ``group_by`` (The Pile's ``meta.pile_set_name``) a record's document
belongs to the sub-source ``NAME/VALUE``; a record without the field (absent,
null or empty) or with a value that is not a string is reported (``missing_group``,
``group_not_string``) and not kept.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from fmforge.data.listing import SourceFile
from fmforge.data.normalize import decode_utf8
from fmforge.data.readers.base import Document, ReaderBase
from fmforge.data.readers.compression import damage, open_decompressed
from fmforge.data.store import open_binary

_MISSING = object()


def lookup(obj: dict[str, Any], field: str) -> Any:
    """``obj[field]``; a dotted field (``meta.body``) walks nested objects, unless
    the dotted name itself is a key."""
    if field in obj:
        return obj[field]
    cur: Any = obj
    for part in field.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


class JsonlReader(ReaderBase):
    COUNTERS = ReaderBase.COUNTERS + ("lines", "blank_lines", "decode_error_lines", "replaced_bytes")

    def read_file(self, file: SourceFile) -> Iterator[Document]:
        self.start_file(file)
        complete = 0  # lines read whole, so the line after them is where a cut falls
        nonblank = 0
        with open_binary(file.path) as raw, open_decompressed(raw) as stream:
            for line_no, line in enumerate(stream, 1):
                if not line.endswith(b"\n") and damage(stream):
                    break  # the partial line at a cut
                complete = line_no
                self.count("lines")
                if line.isspace():  # isspace, not strip: no copy of a 50 MB line
                    self.count("blank_lines")
                    continue
                nonblank += 1
                doc = self._parse(file, line_no, line, first=nonblank == 1)
                if doc is False:
                    return
                if doc is not None:
                    yield doc
            cut = damage(stream)
        if cut:
            self.report(cut.kind, f"{file.path}:{complete + 1}",
                        f"{cut.message}; the {complete} line(s) before line {complete + 1} were read")
        elif nonblank == 0:
            self.report("empty_file", file.path, "no JSON lines in the file")

    def _parse(self, file: SourceFile, line_no: int, line: bytes, *, first: bool) -> Document | None | bool:
        """The line's document, None when it is reported, False to give up on the file."""
        where = f"{file.path}:{line_no}"
        text, replaced = decode_utf8(line)
        if replaced:
            self.count("decode_error_lines")
            self.count("replaced_bytes", replaced)
            self.report("not_utf8", where, f"{replaced} byte(s) are not valid UTF-8; kept as U+FFFD")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if first and text.lstrip().startswith("["):
                self.report("not_jsonl", file.path,
                            "the file is a JSON array, not JSON Lines (one object per line): skipped; "
                            "convert it with `jq -c '.[]' in.json > out.jsonl`")
                return False
            self.report("not_json", where, f"not JSON ({e.msg} at column {e.colno})")
            return None
        if not isinstance(obj, dict):
            self.report("not_object", where, f"a JSON {json_kind(obj)}, not an object with a "
                        f"{self.spec.text_field!r} key")
            return None
        value = lookup(obj, self.spec.text_field)
        if value is _MISSING:
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            self.report("missing_field", where, f"no {self.spec.text_field!r} field (the object has "
                        f"{keys or 'no keys'}); set the source's text_field to the one holding the text")
            return None
        if not isinstance(value, str):
            kind = "null_text" if value is None else "not_string"
            self.report(kind, where, f"{self.spec.text_field!r} is a JSON {json_kind(value)}, not a string")
            return None
        source = None
        if self.spec.group_by is not None:
            source = self._group_source(obj, where)
            if source is None:
                return None
        url = obj.get("url")
        return self.document(file, value, line=line_no, url=url if isinstance(url, str) else None,
                             source=source)

    def _group_source(self, obj: dict[str, Any], where: str) -> str | None:
        """The sub-source (``NAME/GROUP``) of a record of a grouped source; None when
        the record has no group, reported as a problem (the document is not kept:
        a group of unlabelled records would hide a mislabelled corpus)."""
        field = self.spec.group_by
        group = lookup(obj, field)
        if group is _MISSING or group is None or (isinstance(group, str) and not group.strip()):
            what = "no" if group is _MISSING else ("a null" if group is None else "an empty")
            self.report("missing_group", where, f"{what} {field!r} field, so no group (group_by); "
                        "the record is not kept")
            return None
        if not isinstance(group, str):
            self.report("group_not_string", where, f"{field!r} is a JSON {json_kind(group)}, not a string "
                        "naming the record's group (group_by); the record is not kept")
            return None
        return self.spec.group_source(group)
