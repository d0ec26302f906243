"""Which files a source reads: glob expansion, excludes, a deterministic order.

Every file-based source type (text today; JSONL, Parquet, WARC later) starts
from the same listing, so the rules live in one place:

* ``paths`` are glob patterns (``**`` recurses); placeholders are resolved and
  relative patterns are taken relative to the config's directory.
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

import glob
import os
import re
from dataclasses import dataclass, field

from fmforge.config import SourceConfig
from fmforge.data.errors import NoFilesMatchedError
from fmforge.data.placeholders import resolve_pattern, substitute_placeholders

_MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # absolute, forward slashes
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
        self.absolute = [translate_exclude(p) for p in patterns if p.startswith("/")]
        self.relative = [translate_exclude(p) for p in patterns if not p.startswith("/")]

    def __call__(self, path: str, rel: str) -> bool:
        return any(r.fullmatch(path) for r in self.absolute) or any(
            r.fullmatch(rel) for r in self.relative
        )


def _as_posix(path: str) -> str:
    return path.replace(os.sep, "/") if os.sep != "/" else path


def list_source_files(spec: SourceConfig, config_dir: str | None) -> FileListing:
    """Resolve, glob, exclude and sort the files of one source.

    Raises ``UnknownPlaceholderError`` or ``NoFilesMatchedError`` naming the
    source and the pattern.
    """
    patterns = [
        resolve_pattern(p, source=spec.name, config_dir=config_dir, what="paths")
        for p in spec.paths
    ]
    excludes = [
        _as_posix(substitute_placeholders(p, source=spec.name, config_dir=config_dir, what="exclude"))
        for p in spec.exclude
    ]
    roots = [glob_root(p) for p in patterns]
    root = _as_posix(os.path.commonpath(roots)) if len(roots) > 1 else roots[0]

    found: dict[str, None] = {}
    per_pattern: dict[str, int] = {}
    for original, pattern in zip(spec.paths, patterns):
        hits = [h for h in glob.glob(pattern, recursive=True) if os.path.isfile(h)]
        if not hits:
            proot = glob_root(pattern)
            hint = (
                f"directory {proot} does not exist"
                if not os.path.isdir(proot)
                else "check the spelling and the glob (use ** to recurse into directories)"
            )
            raise NoFilesMatchedError(
                f"source {spec.name!r}: pattern {original!r} (resolved to {pattern!r}) "
                f"matched no files; {hint}"
            )
        per_pattern[original] = len(hits)
        for h in hits:
            found.setdefault(_as_posix(os.path.normpath(h)), None)

    is_excluded = ExcludeMatcher(excludes)
    files: list[SourceFile] = []
    for path in found:
        rel = _as_posix(os.path.relpath(path, root))
        if is_excluded(path, rel):
            continue
        st = os.stat(path)
        files.append(SourceFile(path=path, rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns))
    if not files:
        raise NoFilesMatchedError(
            f"source {spec.name!r}: all {len(found)} matched files were removed by the "
            f"exclude patterns {spec.exclude}; loosen `exclude` or fix `paths`"
        )
    files.sort(key=lambda f: f.rel)
    return FileListing(
        source=spec.name,
        root=root,
        patterns=patterns,
        excludes=excludes,
        files=files,
        matched=len(found),
        excluded=len(found) - len(files),
        per_pattern=per_pattern,
    )
