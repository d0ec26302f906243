"""Which files a source reads: glob expansion, excludes, a deterministic order.

Every source type starts from the same listing, so the rules live in one place:

* ``paths`` are glob patterns (``**`` recurses); placeholders are resolved and
  relative patterns are taken relative to the config's directory. A pattern may
  also be an fsspec URL (``s3://bucket/crawl/*.warc.gz``, ``file:///data/*.jsonl``);
  its files keep their URL as ``path`` and are opened through fsspec
  (``open_binary``). One source uses one filesystem: all local paths, or all
  URLs of one kind.
* ``type: hf_disk`` lists directories written by ``datasets``' ``save_to_disk``
  (one ``SourceFile`` each, its size the total of the files inside), not the
  Arrow files in them.
* A pattern that matches no file at all is an error: a typo would otherwise give
  an empty corpus without a word.
* ``exclude`` patterns use fnmatch semantics (``*`` also crosses ``/``), and a
  ``**/`` may also match no directory at all, so ``**/test/**`` drops every file
  under any ``test`` directory. An absolute exclude pattern (after placeholders)
  is matched against the file's full path; a relative one against the path
  relative to the source root, so directories *above* the corpus (say a home
  directory called ``test``) never exclude it by accident.
* The source root is the deepest directory common to the non-glob prefixes of
  all the source's patterns; ids and the order of files use the path relative
  to it, so they are the same on every machine.
"""

from __future__ import annotations

import datetime
import glob
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import BinaryIO

from fmforge.config import SourceConfig
from fmforge.data.errors import DataError, NoFilesMatchedError
from fmforge.data.placeholders import resolve_pattern, substitute_placeholders

_MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # absolute, forward slashes; or an fsspec URL
    rel: str  # relative to the source root, forward slashes
    size: int
    mtime_ns: int


@dataclass
class FileListing:
    source: str
    root: str
    patterns: list[str]  # resolved include patterns
    excludes: list[str]  # exclude patterns after placeholder substitution
    files: list[SourceFile]
    matched: int  # distinct files matched by the include patterns
    excluded: int  # of which removed by an exclude pattern
    per_pattern: dict[str, int] = field(default_factory=dict)  # files matched per pattern
    # patterns that matched nothing, when listed with strict=False: {"pattern", "message"}
    missing: list[dict[str, str]] = field(default_factory=list)


def glob_root(pattern: str) -> str:
    """The longest leading directory of ``pattern`` without glob magic."""
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    root = "/".join(fixed)
    return root or "/"


def translate_exclude(pattern: str) -> re.Pattern[str]:
    """fnmatch semantics (``*`` and ``**`` cross ``/``) plus: ``**/`` may match nothing."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            if j - i >= 2 and j < n and pattern[j] == "/":
                out.append("(?:.*/)?")
                j += 1
            else:
                out.append(".*")
            i = j
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] in "!]" else i + 1)
            if j == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : j].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


class ExcludeMatcher:
    """Decides whether a listed file is excluded (see the module docstring)."""

    def __init__(self, patterns: list[str]):
        absolute = [p.startswith("/") or is_url(p) for p in patterns]
        self.absolute = [translate_exclude(p) for p, a in zip(patterns, absolute) if a]
        self.relative = [translate_exclude(p) for p, a in zip(patterns, absolute) if not a]

    def __call__(self, path: str, rel: str) -> bool:
        return any(r.fullmatch(path) for r in self.absolute) or any(
            r.fullmatch(rel) for r in self.relative
        )


def _as_posix(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# What save_to_disk writes: a Dataset directory, or a DatasetDict directory.
_DATASET_MARKERS = (("dataset_info.json", "state.json"), ("dataset_dict.json",))


def is_url(path: str) -> bool:
    return bool(_URL.match(path))


def _fsspec():
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:
        raise ImportError("reading URLs needs fsspec: pip install 'fmforge[data]'") from None
    return fsspec, url_to_fs


def open_binary(path: str) -> BinaryIO:
    """Open a listed file for reading bytes: a local path, or an fsspec URL."""
    if is_url(path):
        fsspec, _ = _fsspec()
        return fsspec.open(path, "rb").open()
    return open(path, "rb", buffering=1 << 20)


class _LocalFS:
    """Local files through glob and os.stat (no fsspec needed)."""

    def glob(self, pattern: str) -> list[str]:
        return [_as_posix(os.path.normpath(h)) for h in glob.glob(pattern, recursive=True)]

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def stat(self, path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def tree_stat(self, path: str) -> tuple[int, int]:
        """Total size and newest mtime of the files under a directory."""
        size, mtime = 0, 0
        for dirpath, _, names in os.walk(path):
            for n in names:
                st = os.stat(os.path.join(dirpath, n))
                size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
        return size, mtime

    def url(self, path: str) -> str:
        return path

    def missing_hint(self, pattern: str) -> str:
        proot = glob_root(pattern)
        if not os.path.isdir(proot):
            return f"directory {proot} does not exist"
        return "check the spelling and the glob (use ** to recurse into directories)"


class _FsspecFS:
    """Files behind one fsspec filesystem; paths are kept without the protocol
    (as fsspec globs them) and turned back into URLs for ``SourceFile.path``."""

    def __init__(self, fs):
        self.fs = fs

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.fs.glob(pattern))

    def isfile(self, path: str) -> bool:
        return self.fs.isfile(path)

    def isdir(self, path: str) -> bool:
        return self.fs.isdir(path)

    def stat(self, path: str) -> tuple[int, int]:
        info = self.fs.info(path)
        return int(info.get("size") or 0), _mtime_ns(info)

    def tree_stat(self, path: str) -> tuple[int, int]:
        infos = self.fs.find(path, detail=True).values()
        return sum(int(i.get("size") or 0) for i in infos), max((_mtime_ns(i) for i in infos), default=0)

    def url(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def missing_hint(self, pattern: str) -> str:
        return "check the URL, the glob (use ** to recurse) and that your credentials can list it"


def _mtime_ns(info: dict) -> int:
    """Modification time from an fsspec info dict; filesystems name it differently
    (0 when unknown: the inputs fingerprint then rests on the size alone)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(key)
        if v is None:
            continue
        if isinstance(v, str):
            try:
                v = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(v, datetime.datetime):
            v = v.timestamp()
        if isinstance(v, (int, float)):
            return int(v * 1_000_000_000)
    return 0


def _resolve(spec: SourceConfig, config_dir: str | None) -> tuple[object, list[str]]:
    """The filesystem of a source and its patterns, placeholders resolved."""
    urls = [is_url(p) for p in spec.paths]
    if not any(urls):
        patterns = [
            resolve_pattern(p, source=spec.name, config_dir=config_dir, what="paths") for p in spec.paths
        ]
        return _LocalFS(), patterns
    if not all(urls):
        raise DataError(
            f"source {spec.name!r}: paths mix local paths and URLs ({spec.paths}); "
            "put them in two sources"
        )
    _, url_to_fs = _fsspec()
    resolved = [substitute_placeholders(p, source=spec.name, config_dir=config_dir) for p in spec.paths]
    pairs = [url_to_fs(u) for u in resolved]
    fs = pairs[0][0]
    if any(type(other) is not type(fs) for other, _ in pairs):
        raise DataError(f"source {spec.name!r}: paths name several filesystems ({spec.paths}); "
                        "put each in its own source")
    return _FsspecFS(fs), [p for _, p in pairs]


def _is_saved_dataset(fs, path: str) -> bool:
    return fs.isdir(path) and any(all(fs.isfile(f"{path}/{m}") for m in ms) for ms in _DATASET_MARKERS)


def _rel(path: str, root: str) -> str:
    if root == "/":
        return path.lstrip("/")
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return posixpath.relpath(path, root)


def list_source_files(spec: SourceConfig, config_dir: str | None, strict: bool = True) -> FileListing:
    """Resolve, glob, exclude and sort the files of one source.

    Raises ``UnknownPlaceholderError`` or ``NoFilesMatchedError`` naming the
    source and the pattern (``DataError`` for a source mixing local paths and URLs).
    With ``strict=False`` a pattern that matches nothing (a missing path, a glob
    with no match) is recorded in ``FileListing.missing`` instead, and the
    listing may be empty: the data stage reports it and goes on.
    """
    fs, patterns = _resolve(spec, config_dir)
    excludes = [
        _as_posix(substitute_placeholders(p, source=spec.name, config_dir=config_dir, what="exclude"))
        for p in spec.exclude
    ]
    roots = [glob_root(p) for p in patterns]
    root = posixpath.commonpath(roots) if len(roots) > 1 else roots[0]
    datasets = spec.type == "hf_disk"

    found: dict[str, None] = {}
    per_pattern: dict[str, int] = {}
    missing: list[dict[str, str]] = []
    for original, pattern in zip(spec.paths, patterns):
        matched = fs.glob(pattern)
        if datasets:
            hits = [h for h in matched if _is_saved_dataset(fs, h)]
        else:
            hits = [h for h in matched if fs.isfile(h)]
        if not hits:
            if datasets and matched:
                hint = (f"it matched {len(matched)} path(s), none of them a directory written by "
                        "datasets' save_to_disk (one holding dataset_info.json and state.json, "
                        "or dataset_dict.json)")
            else:
                hint = fs.missing_hint(pattern)
            message = (
                f"source {spec.name!r}: pattern {original!r} (resolved to {pattern!r}) "
                f"matched no {'saved datasets' if datasets else 'files'}; {hint}"
            )
            if strict:
                raise NoFilesMatchedError(message)
            missing.append({"pattern": original, "message": message})
        per_pattern[original] = len(hits)
        for h in hits:
            found.setdefault(h, None)
    if datasets:  # a DatasetDict's split directories are part of it, not datasets of their own
        found = {h: None for h in found if not any(h.startswith(o + "/") for o in found)}

    is_excluded = ExcludeMatcher(excludes)
    files: list[SourceFile] = []
    for path in found:
        rel, url = _rel(path, root), fs.url(path)
        if is_excluded(url, rel):
            continue
        size, mtime_ns = fs.tree_stat(path) if datasets else fs.stat(path)
        files.append(SourceFile(path=url, rel=rel, size=size, mtime_ns=mtime_ns))
    if not files and found:
        message = (
            f"source {spec.name!r}: all {len(found)} matched files were removed by the "
            f"exclude patterns {spec.exclude}; loosen `exclude` or fix `paths`"
        )
        if strict:
            raise NoFilesMatchedError(message)
        missing.append({"pattern": ", ".join(spec.exclude), "message": message})
    files.sort(key=lambda f: f.rel)
    return FileListing(
        source=spec.name,
        root=fs.url(root),
        patterns=patterns,
        excludes=excludes,
        files=files,
        matched=len(found),
        excluded=len(found) - len(files),
        per_pattern=per_pattern,
        missing=missing,
    )
