"""What folders of a user's files hold: which source type reads each file, the
JSONL field or table column with the text, and the files no source can read.

The extension decides when it is one the data stage knows (``.txt``, ``.py``,
``.jsonl``, ``.parquet``, ``.csv``, ``.html``, ``.warc.gz`` ...); otherwise the
first bytes do (NUL bytes: binary; ``WARC/``: an archive; lines of JSON objects:
JSONL; ``<html``: a page; a ``#!`` line: code; UTF-8: text). Hidden files and
folders are skipped, as the data stage's globs skip them; symlinked folders are
followed, as ``**`` follows them, and a file reached under several names is read
and counted once (under the first name walked), as the data stage lists it once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fmforge.errors import UserError

SAMPLE_BYTES = 65_536  # read from each file to decide what it holds
SAMPLE_LINES = 200  # JSONL lines / CSV rows a text field is guessed from
BINARY_SNIFF = 8192  # NUL bytes here mark a binary file (as the text reader decides)

PROSE_EXT = {".txt", ".md", ".markdown", ".rst", ".tex", ".org", ".adoc", ".asciidoc", ".text", ".me"}
CODE_EXT = {".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".js", ".mjs", ".ts", ".tsx",
            ".jsx", ".java", ".kt", ".scala", ".go", ".rs", ".rb", ".pl", ".pm", ".php", ".cs", ".swift",
            ".m", ".mm", ".lua", ".r", ".jl", ".sh", ".bash", ".zsh", ".sql", ".hs", ".ml", ".ex", ".exs",
            ".erl", ".clj", ".el", ".vim", ".f90", ".cu", ".css", ".scss", ".toml", ".ini", ".cfg",
            ".yaml", ".yml", ".cmake", ".mk", ".dockerfile", ".proto", ".tcl", ".awk", ".sed"}
# (suffix, source type): compound suffixes first
TYPED_EXT = ((".warc.wet.gz", "wet"), (".wet.gz", "wet"), (".wet", "wet"), (".warc.gz", "warc"),
             (".warc", "warc"), (".jsonl.gz", "jsonl"), (".jsonl.zst", "jsonl"), (".jsonl", "jsonl"),
             (".ndjson", "jsonl"), (".parquet", "parquet"), (".csv", "csv"), (".html", "html"),
             (".htm", "html"), (".xhtml", "html"))
TEXT_FIELD_NAMES = ("text", "content", "body", "document", "article", "story", "message", "completion")


class ScanError(UserError, ValueError):
    """The folders cannot make a corpus; the message names the folder and what to do."""


@dataclass
class Group:
    """Files one source will read: a source type, a filter preset and, for JSONL
    and tables, where the text is."""

    kind: str  # "prose" | "code" | a source type
    type: str
    filters: str
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    text_field: str | None = None  # jsonl
    text_column: str | None = None  # parquet, csv
    guessed_from: str | None = None  # how the field or column was guessed

    @property
    def name(self) -> str:
        where = self.text_field or self.text_column
        return self.kind if where in (None, "text") else f"{self.kind}-{where.replace('.', '-')}"


@dataclass
class Problem:
    path: Path
    why: str


@dataclass
class Scan:
    dirs: list[Path]
    groups: dict[str, Group] = field(default_factory=dict)
    unreadable: list[Problem] = field(default_factory=list)
    empty: list[Path] = field(default_factory=list)
    unknown: list[Problem] = field(default_factory=list)  # formats no source reads
    not_utf8: list[Problem] = field(default_factory=list)  # kept; the data stage replaces bad bytes
    files_seen: int = 0
    # every file considered: (path, the group it went to or None)
    placed: dict[Path, str | None] = field(default_factory=dict)
    # a second name of a file (through a symlinked folder or a symlink): its first name
    alias_of: dict[Path, Path] = field(default_factory=dict)
    loops: list[Path] = field(default_factory=list)  # symlinked folders that lead back up
    # names starting with a dot, skipped as glob's ** skips them: (path, files under it)
    hidden: list[tuple[Path, int]] = field(default_factory=list)
    # readable files left out with a folder of files no source reads (set by init.sources)
    left_out: list[Path] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(g.bytes for g in self.groups.values())


def typed_suffix(name: str) -> tuple[str, str] | None:
    lower = name.lower()
    for suffix, kind in TYPED_EXT:
        if lower.endswith(suffix):
            return suffix, kind
    return None


def _decode_error(sample: bytes, whole: bool) -> str | None:
    """Where ``sample`` stops being UTF-8 (None if it is), ignoring a character cut
    at the end of a partial read."""
    try:
        sample.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        if not whole and e.start >= len(sample) - 3 and e.reason == "unexpected end of data":
            return None
        line = sample.count(b"\n", 0, e.start) + 1
        return f"not UTF-8: byte 0x{sample[e.start]:02x} on line {line}"


def _is_gzip_or_zstd(sample: bytes) -> bool:
    return sample[:2] == b"\x1f\x8b" or sample[:4] == b"\x28\xb5\x2f\xfd"


def _flatten(obj: object, prefix: str = "") -> dict[str, str]:
    """String values of a JSON object by dotted path (one level of nesting)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, str):
                out[key] = v
            elif isinstance(v, dict) and not prefix:
                out.update(_flatten(v, key + "."))
    return out


def best_text_key(rows: list[dict[str, str]]) -> str | None:
    """The key holding the text: among keys with a string in at least 90% of the
    rows, the one with the longest median string (a conventional name wins a tie
    within 10%)."""
    if not rows:
        return None
    present = Counter(k for r in rows for k in r)
    keys = [k for k, n in present.items() if n >= 0.9 * len(rows)]
    if not keys:
        return None
    length = {k: statistics.median(len(r.get(k, "")) for r in rows) for k in keys}
    top = max(length.values())
    if top == 0:
        return None
    close = [k for k in keys if length[k] >= 0.9 * top]
    named = [k for k in close if k.split(".")[-1].lower() in TEXT_FIELD_NAMES]
    return (named or sorted(close, key=lambda k: -length[k]))[0]


def _jsonl_rows(data: bytes, whole: bool) -> list[dict[str, str]] | None:
    """The string fields of the sample's lines, or None if it is not JSON lines."""
    lines = data.split(b"\n")
    if not whole:
        lines = lines[:-1]  # the last line may be cut
    rows, bad = [], 0
    for line in lines[:SAMPLE_LINES]:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            return None
        rows.append(_flatten(obj))
    return rows if rows and bad <= len(rows) // 10 else None


def _csv_column(path: Path) -> str | None:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(io.StringIO(f.read(SAMPLE_BYTES * 4)))
        rows: list[dict[str, str]] = []
        # The sample is cut mid-file, so the last row read may be torn (csv.Error):
        # the rows before it are kept.
        with contextlib.suppress(csv.Error):
            for i, row in enumerate(reader):
                if i >= SAMPLE_LINES:
                    break
                rows.append({k: v for k, v in row.items() if isinstance(k, str) and isinstance(v, str)})
    return best_text_key(rows)


def _parquet_column(path: Path) -> str | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = [f.name for f in pf.schema_arrow if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if not names or pf.metadata.num_row_groups == 0:
        return None
    table = pf.read_row_group(0, columns=names).slice(0, SAMPLE_LINES)
    rows = [{k: v for k, v in r.items() if isinstance(v, str)} for r in table.to_pylist()]
    return best_text_key(rows)


def _looks_like_code(text: str) -> bool:
    return text.startswith("#!") or "-*- coding" in text[:200]


def _count_files(path: Path) -> int:
    """Files under ``path`` (1 for a file), without following links; 0 if unlistable."""
    if not path.is_dir() or path.is_symlink():
        return 1
    n = 0
    for _, _, files in os.walk(path):
        n += len(files)
    return n


def _walk(root: Path, scan: Scan):
    """Every file under ``root`` in sorted order, files before folders, as glob's ``**``
    sees them: hidden names skipped, symlinked folders followed (not one that leads
    back to a folder above it). Broken symlinks are yielded (they cannot be read)."""

    def visit(folder: Path, above: frozenset[str]):
        try:
            with os.scandir(folder) as it:
                every = sorted(it, key=lambda e: e.name)
            entries = [e for e in every if not e.name.startswith(".")]
            scan.hidden += [(folder / e.name, _count_files(folder / e.name)) for e in every if e.name.startswith(".")]
        except OSError as err:
            scan.unreadable.append(Problem(folder, f"cannot list it ({err.strerror or err})"))
            return
        folders = []
        for e in entries:
            try:
                is_dir, is_file = e.is_dir(), e.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                folders.append(e.name)
            elif is_file or e.is_symlink():  # not fifos, sockets or devices
                yield folder / e.name
        for name in folders:
            real = os.path.realpath(folder / name)
            if real in above:
                scan.loops.append(folder / name)
                continue
            yield from visit(folder / name, above | {real})

    yield from visit(root, frozenset({os.path.realpath(root)}))


def scan_folders(dirs: list[str | Path]) -> Scan:
    """Look at every file under ``dirs``; raise ScanError when nothing is usable."""
    roots = []
    for d in dirs:
        p = Path(d).expanduser()
        if not p.exists():
            raise ScanError(f"{d}: no such folder; check the path")
        if not p.is_dir():
            raise ScanError(f"{d}: not a folder; give the folder that holds your files")
        if not os.access(p, os.R_OK | os.X_OK):
            raise ScanError(f"{d}: cannot read this folder (permission denied); "
                            f"fix its permissions (chmod u+rx) or run as a user who can read it")
        roots.append(p.resolve())
    scan = Scan(dirs=roots)
    first_name: dict[str, Path] = {}  # real path -> the name it was read under
    for root in roots:
        before = scan.files_seen
        for path in _walk(root, scan):
            scan.files_seen += 1
            real = os.path.realpath(path)
            if real in first_name:
                if first_name[real] != path:  # (one folder given twice, or inside another)
                    scan.alias_of[path] = first_name[real]
                scan.placed[path] = scan.placed[first_name[real]]
                continue
            first_name[real] = path
            _place(path, scan)
        if scan.files_seen == before and not any(u.path == root for u in scan.unreadable):
            raise ScanError(f"{root}: the folder is empty (hidden files are not read); "
                            "point init at the folder that holds your documents")
    if not scan.groups:
        lines = [f"no file under {', '.join(map(str, roots))} can be read as training text:"]
        lines += [f"  {p.path}: {p.why}" for p in (scan.unreadable + scan.unknown)[:10]]
        lines += [f"  {p}: empty" for p in scan.empty[:10]]
        lines.append("give folders of text, code, JSONL, Parquet, CSV, HTML or WARC files")
        raise ScanError("\n".join(lines))
    return scan


def _add(scan: Scan, path: Path, size: int, kind: str, type_: str, filters: str, **where: str | None) -> None:
    key = f"{kind}:{where.get('text_field') or where.get('text_column') or ''}"
    group = scan.groups.get(key)
    if group is None:
        group = scan.groups[key] = Group(kind=kind, type=type_, filters=filters, **where)
    group.files.append(path)
    group.bytes += size
    scan.placed[path] = key


def _place(path: Path, scan: Scan) -> None:
    scan.placed[path] = None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            sample = f.read(SAMPLE_BYTES)
    except OSError as e:
        scan.unreadable.append(Problem(path, f"cannot read it ({e.strerror or e})"))
        return
    if size == 0:
        scan.empty.append(path)
        return
    whole = size <= len(sample)
    typed = typed_suffix(path.name)
    if typed is not None:
        _place_typed(path, size, typed[1], sample, whole, scan)
        return
    ext = path.suffix.lower()
    if _is_gzip_or_zstd(sample):
        scan.unknown.append(Problem(path, "compressed, and only .jsonl and WARC archives are read compressed: "
                                          "decompress it (gunzip -k) to include it"))
        return
    if b"\0" in sample[:BINARY_SNIFF]:
        scan.unknown.append(Problem(path, f"binary ({ext or 'no extension'}): not text fmforge can read"))
        return
    if ext not in PROSE_EXT and ext not in CODE_EXT:
        head = sample.lstrip()[:512].lower()
        if head.startswith(b"warc/"):
            _place_typed(path, size, "warc", sample, whole, scan)
            return
        if head.startswith(b"{") and _jsonl_rows(sample, whole):
            _place_typed(path, size, "jsonl", sample, whole, scan)
            return
        if head.startswith((b"<!doctype html", b"<html")):
            _place_typed(path, size, "html", sample, whole, scan)
            return
        if ext == ".json":
            scan.unknown.append(Problem(path, "a JSON document, not JSON lines: write one object per line "
                                              "(.jsonl) to include it"))
            return
    bad = _decode_error(sample, whole)
    if bad is not None:
        scan.not_utf8.append(Problem(path, bad))
    text = sample.decode("utf-8", errors="replace")
    if ext in CODE_EXT or (ext not in PROSE_EXT and _looks_like_code(text)):
        _add(scan, path, size, "code", "text", "code")
    else:
        _add(scan, path, size, "text", "text", "prose")


def _place_typed(path: Path, size: int, type_: str, sample: bytes, whole: bool, scan: Scan) -> None:
    if type_ == "jsonl":
        if _is_gzip_or_zstd(sample):
            _add(scan, path, size, "jsonl", "jsonl", "prose", text_field="text",
                 guessed_from="compressed: not sampled, assumed `text`")
            return
        rows = _jsonl_rows(sample, whole)
        if rows is None:
            bad = _decode_error(sample, whole)
            scan.unknown.append(Problem(path, bad or "not JSON lines: the first lines are not JSON objects"))
            return
        key = best_text_key(rows)
        if key is None:
            scan.unknown.append(Problem(path, "JSON lines without a string field in most lines: no text to train on"))
            return
        _add(scan, path, size, "jsonl", "jsonl", "prose", text_field=key,
             guessed_from=f"{len(rows)} lines of {path.name}")
    elif type_ in ("parquet", "csv"):
        try:
            column = _parquet_column(path) if type_ == "parquet" else _csv_column(path)
        except Exception as e:  # pyarrow raises assorted errors on a damaged file
            scan.unreadable.append(Problem(path, f"cannot read it as {type_} ({type(e).__name__}: {e})"))
            return
        if column is None:
            scan.unknown.append(Problem(path, f"a {type_} table without a text column"))
            return
        _add(scan, path, size, type_, type_, "prose", text_column=column,
             guessed_from=f"the first rows of {path.name}")
    elif type_ == "html":
        _add(scan, path, size, "html", "html", "web")
    else:  # warc, wet
        _add(scan, path, size, type_, type_, "web")


def summary_by_extension(files: list[Path]) -> str:
    counts = Counter((p.suffix.lower() or p.name) for p in files)
    shown = ", ".join(f"{k} ({n})" for k, n in counts.most_common(6))
    return shown + (f" and {len(counts) - 6} more" if len(counts) > 6 else "")


def problems_by_reason(problems: list[Problem]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = defaultdict(list)
    for p in problems:
        out[p.why].append(p.path)
    return out
