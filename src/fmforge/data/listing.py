"""Which files a source reads: glob expansion, excludes, a deterministic order.

Every source type starts from the same listing, so the rules live in one place:

* ``paths`` are glob patterns (``**`` recurses); placeholders are resolved and
  relative patterns are taken relative to the config's directory. A pattern may
  also be an fsspec URL (``s3://bucket/crawl/*.warc.gz``, ``file:///data/*.jsonl``);
  its files keep their URL as ``path`` and are opened through fsspec
  (``store.open_binary``). One source uses one filesystem: all local paths, or all
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
* A file reached under several names (``**`` follows symlinked folders) is read
  once, under its first name in sorted order that no exclude removes; ``matched``
  and ``excluded`` count files, not names.
* The source root is the deepest directory common to the non-glob prefixes of
  all the source's patterns; ids and the order of files use the path relative
  to it, so they are the same on every machine.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field

from fmforge.config import SourceConfig
from fmforge.data.placeholders import resolve_pattern, substitute_placeholders
from fmforge.data.problems import DataError, NoFilesMatchedError
from fmforge.data.store import Store, is_url, locate

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


# What save_to_disk writes: a Dataset directory, or a DatasetDict directory.
_DATASET_MARKERS = (("dataset_info.json", "state.json"), ("dataset_dict.json",))


def _resolve(spec: SourceConfig, config_dir: str | None) -> tuple[Store, list[str]]:
    """The store at the source's root and the source's patterns on its filesystem
    (placeholders resolved; local ones absolute, URLs without their protocol)."""
    urls = [is_url(p) for p in spec.paths]
    if not any(urls):
        patterns = [
            resolve_pattern(p, source=spec.name, config_dir=config_dir, what="paths") for p in spec.paths
        ]
        return Store(_common_root(patterns)), patterns
    if not all(urls):
        raise DataError(
            f"source {spec.name!r}: paths mix local paths and URLs ({spec.paths}); "
            "put them in two sources"
        )
    resolved = [substitute_placeholders(p, source=spec.name, config_dir=config_dir) for p in spec.paths]
    pairs = [locate(u) for u in resolved]
    fs = pairs[0][0]
    if any(type(other) is not type(fs) for other, _ in pairs):
        raise DataError(f"source {spec.name!r}: paths name several filesystems ({spec.paths}); "
                        "put each in its own source")
    patterns = [p for _, p in pairs]
    return Store(fs.unstrip_protocol(_common_root(patterns))), patterns


def _common_root(patterns: list[str]) -> str:
    """The deepest directory common to the non-glob prefixes of ``patterns``."""
    roots = [glob_root(p) for p in patterns]
    return posixpath.commonpath(roots) if len(roots) > 1 else roots[0]


def _is_saved_dataset(store: Store, rel: str) -> bool:
    return store.isdir(rel) and any(all(store.isfile(f"{rel}/{m}") for m in ms) for ms in _DATASET_MARKERS)


def _missing_hint(store: Store, pattern: str) -> str:
    if store.is_url:
        return "check the URL, the glob (use ** to recurse) and that your credentials can list it"
    proot = glob_root(pattern)
    if not os.path.isdir(proot):
        return f"directory {proot} does not exist"
    return "check the spelling and the glob (use ** to recurse into directories)"


def list_source_files(spec: SourceConfig, config_dir: str | None, strict: bool = True) -> FileListing:
    """Resolve, glob, exclude and sort the files of one source.

    Raises ``UnknownPlaceholderError`` or ``NoFilesMatchedError`` naming the
    source and the pattern (``DataError`` for a source mixing local paths and URLs).
    With ``strict=False`` a pattern that matches nothing (a missing path, a glob
    with no match) is recorded in ``FileListing.missing`` instead, and the
    listing may be empty: the data stage reports it and goes on.
    """
    store, patterns = _resolve(spec, config_dir)
    excludes = [
        _as_posix(substitute_placeholders(p, source=spec.name, config_dir=config_dir, what="exclude"))
        for p in spec.exclude
    ]
    datasets = spec.type == "hf_disk"

    found: dict[str, None] = {}
    per_pattern: dict[str, int] = {}
    missing: list[dict[str, str]] = []
    for original, pattern in zip(spec.paths, patterns):
        matched = store.glob(store.rel(pattern))
        if datasets:
            hits = [h for h in matched if _is_saved_dataset(store, h)]
        else:
            hits = [h for h in matched if store.isfile(h)]
        if not hits:
            if datasets and matched:
                hint = (f"it matched {len(matched)} path(s), none of them a directory written by "
                        "datasets' save_to_disk (one holding dataset_info.json and state.json, "
                        "or dataset_dict.json)")
            else:
                hint = _missing_hint(store, pattern)
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
        paths = {h: store.path(h) for h in found}
        found = {h: None for h in found if not any(paths[h].startswith(paths[o] + "/") for o in found)}

    # A file reached under several names (** follows symlinked folders: Debian
    # links many package docs to one folder) is one file: read once, under its
    # first name in sorted order that no exclude pattern removes.
    real = ({rel: os.path.realpath(store.path(rel)) for rel in found}
            if not store.is_url and not datasets else {rel: rel for rel in found})
    is_excluded = ExcludeMatcher(excludes)
    files: list[SourceFile] = []
    seen: set[str] = set()
    for rel in sorted(found):
        url = store.url_of(rel)
        if is_excluded(url, rel) or real[rel] in seen:
            continue
        seen.add(real[rel])
        size, mtime_ns = store.tree_stat(rel) if datasets else store.stat(rel)
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
        root=store.url,
        patterns=patterns,
        excludes=excludes,
        files=files,
        matched=len(set(real.values())),
        excluded=len(set(real.values())) - len(files),
        per_pattern=per_pattern,
        missing=missing,
    )
