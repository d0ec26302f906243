"""The ``paths`` and ``exclude`` of each source ``init`` writes, as a person would
write them: a few globs per source (by extension, by a name without one, or a
folder that holds nothing else), and an ``exclude`` list for the files the globs
would also catch. Every file lands in at most one source, and the data stage's
listing of each source is exactly the files counted for it here.

How it is chosen:

1. A name pattern (``*.perl``, ``README``) shared by text and code files goes to
   the kind that holds at least twice as many of them; the others follow it.
2. Each source takes, greedily, the pattern that lists the most of its files not
   yet listed: an extension or name glob, or a folder where no other source has a
   file; at most ``MAX_PATTERNS``.
3. A text source that still has files left (a documentation folder's long tail of
   READMEs, NEWS.Debian, copyright ...) lists the whole folder instead
   (``DIR/**``) and excludes what is not its own; the leftovers of another text
   source that needs more patterns than that join it.
4. Each source's ``exclude`` removes the files its patterns catch that belong to
   another source or that no source can read: another source's pattern, an
   extension or name glob, or a folder, when it catches none of the source's own
   files; else the file by its path.

The listing is simulated with the data stage's own exclude matcher and checked
against the target before the config is written.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fmforge.data.listing import ExcludeMatcher, glob_root
from fmforge.init.scan import Group, Scan, typed_suffix

MAX_PATTERNS = 12  # per source: about what a person reads at a glance
SPARE_EXCLUDES = 6  # files left out one by one before a folder of them is left out whole
_SUFFIX = re.compile(r"\.[A-Za-z0-9_+-]{1,12}")
_OUT = ""  # label of a file no source reads


@dataclass(frozen=True)
class Rule:
    """One glob: ``key`` (files named so, under ``base``), ``dir`` (every file under
    ``base``) or ``file`` (``base`` itself)."""

    kind: str
    base: str  # a root or folder, absolute; the file itself for kind "file"
    name: str = ""  # kind "key": "*.txt" or "README" (glob-escaped)

    def include(self) -> str:
        b = glob.escape(self.base)
        return {"key": f"{b}/**/{self.name}", "dir": f"{b}/**", "file": b}[self.kind]

    def exclude(self) -> str:
        # A name glob is written relative (it matches under any folder of the source);
        # a folder or a file absolute, so the source's root does not change its meaning.
        return f"**/{self.name}" if self.kind == "key" else self.include()


@dataclass
class Entry:
    """One name of a file (a file reached through a symlinked folder has several)."""

    path: str
    root: str
    name: str
    key: str
    real: str
    first: bool  # the name the scan read it under


@dataclass
class Listed:
    """A pattern of a source and how many of the source's files it lists, or, for an
    exclude, how many files it leaves out and why."""

    pattern: str
    files: int
    note: str = ""


@dataclass
class SourcePlan:
    group: Group
    paths: list[Listed] = field(default_factory=list)
    exclude: list[Listed] = field(default_factory=list)
    rest: bool = False  # lists the whole folder, less the exclude list
    joined: dict[str, list[str]] = field(default_factory=dict)  # rest: another source's files it reads
    # files that looked like another text kind, moved here with the others of their name
    reassigned: dict[str, int] = field(default_factory=dict)  # name glob -> files


def key_of(name: str) -> str:
    """The name glob a person would write for a file: its extension, else its name."""
    typed = typed_suffix(name)
    if typed is not None and name.endswith(typed[0]) and len(name) > len(typed[0]):
        return "*" + typed[0]
    suffix = os.path.splitext(name)[1]
    if suffix and _SUFFIX.fullmatch(suffix) and len(name) > len(suffix):
        return "*" + suffix
    return glob.escape(name)


def _unescape(s: str) -> str:
    return re.sub(r"\[([*?[])\]", r"\1", s)


class Planner:
    """The files of the scan by name, extension and folder, and the source each real
    file goes to (``label``; ``_OUT``: none)."""

    def __init__(self, scan: Scan):
        self.scan = scan
        self.entries: list[Entry] = []
        self.label: dict[str, str] = {}
        self.empty: set[str] = set()  # real paths of empty files: read by whichever source lists them
        empty = set(scan.empty)
        for path, label in scan.placed.items():
            root = next(str(r) for r in scan.dirs if path.is_relative_to(r))
            e = Entry(str(path), root, path.name, key_of(path.name), os.path.realpath(path),
                      path not in scan.alias_of)
            self.entries.append(e)
            if e.first:
                self.label[e.real] = label or _OUT
                if path in empty:
                    self.empty.add(e.real)
        self.by_root: dict[str, list[Entry]] = defaultdict(list)
        self.by_dir: dict[str, list[Entry]] = defaultdict(list)
        for e in self.entries:
            self.by_root[e.root].append(e)
            d = posixpath.dirname(e.path)
            while len(d) >= len(e.root):
                self.by_dir[d].append(e)
                if d == e.root:
                    break
                d = posixpath.dirname(d)
        self._keys: dict[tuple[str, str], list[Entry]] = {}
        self.left_out: set[str] = set()  # a source's files left out with a folder of files it cannot read
        self.why: dict[str, str] = {}
        for p in scan.unreadable + scan.unknown:
            self.why[os.path.realpath(p.path)] = _short_reason(p.why)

    def of(self, e: Entry) -> str:
        return self.label[e.real]

    def matches(self, rule: Rule) -> list[Entry]:
        """The names ``rule`` lists, as glob lists them (hidden names are not walked)."""
        if rule.kind == "key":
            got = self._keys.get((rule.base, rule.name))
            if got is None:
                want = _unescape(rule.name)
                if want.startswith("*"):
                    got = [e for e in self.by_root[rule.base] if e.name.endswith(want[1:])]
                else:
                    got = [e for e in self.by_root[rule.base] if e.name == want]
                self._keys[(rule.base, rule.name)] = got
            return got
        if rule.kind == "dir":
            return self.by_dir.get(rule.base, [])
        return [e for e in self.by_dir.get(posixpath.dirname(rule.base), []) if e.path == rule.base]

    def lists(self, rule: Rule, e: Entry) -> bool:
        if rule.kind == "key":
            want = _unescape(rule.name)
            return e.root == rule.base and (e.name.endswith(want[1:]) if want.startswith("*") else e.name == want)
        return e.path == rule.base or (rule.kind == "dir" and e.path.startswith(rule.base + "/"))

    def reals(self, label: str) -> set[str]:
        return {r for r, k in self.label.items() if k == label}

    # 1. one kind per name glob ------------------------------------------------
    def settle_shared_names(self) -> dict[str, Counter[str]]:
        text_kinds = {k for k, g in self.scan.groups.items() if g.type == "text"}
        per_key: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for e in self.entries:
            if e.first and self.of(e) in text_kinds:
                per_key[e.key][self.of(e)].add(e.real)
        moved: dict[str, Counter[str]] = defaultdict(Counter)
        for key, per in per_key.items():
            if len(per) < 2:
                continue
            ranked = sorted(per, key=lambda g: (-len(per[g]), g))
            top = ranked[0]
            if len(per[top]) < 2 * len(per[ranked[1]]):
                continue  # no clear majority: each keeps its own, the excludes sort them out
            for g in ranked[1:]:
                for real in per[g]:
                    self.label[real] = top
                    moved[top][key] += 1
        return moved

    # 2. a few globs per source ---------------------------------------------
    def cover(self, label: str) -> tuple[list[Rule], set[str]]:
        """Greedy: the rules that list the most of ``label``'s files; and the files
        (real paths) still not listed after MAX_PATTERNS rules."""
        mine = [e for e in self.entries if self.of(e) == label]
        left = {e.real for e in mine}
        foreign = {d: any(self.of(e) not in (label, _OUT) for e in es) for d, es in self.by_dir.items()}
        candidates = {Rule("key", e.root, e.key) for e in mine}
        for e in mine:  # the highest folder under its root that holds no other source's file
            d, best = posixpath.dirname(e.path), None
            while len(d) > len(e.root) and not foreign[d]:
                best, d = d, posixpath.dirname(d)
            if best is not None:
                candidates.add(Rule("dir", best))
        ordered = sorted(candidates, key=lambda r: (r.kind != "key", r.base, r.name))
        listed = {r: {e.real for e in self.matches(r) if self.of(e) == label} for r in ordered}
        rules: list[Rule] = []
        while left and len(rules) < MAX_PATTERNS:
            best_rule = max(ordered, key=lambda r: len(listed[r] & left))
            gain = listed[best_rule] & left
            if not gain:
                break
            rules.append(best_rule)
            left -= gain
        return rules, left

    # 4. excludes ------------------------------------------------------------
    def excludes(self, label: str, rules: list[Rule], other_rules: list[Rule]) -> list[Rule]:
        caught = {e.path: e for r in rules for e in self.matches(r)}
        bad = {p for p, e in caught.items() if self.of(e) != label}
        if not bad:
            return []

        # The names of each of this source's files that its patterns list: an exclude
        # may drop a name (a symlinked folder's copy) while another name stays listed.
        names: dict[str, set[str]] = defaultdict(set)
        for p, e in caught.items():
            if self.of(e) == label:
                names[e.real].add(p)
        dropped: set[str] = set()

        def safe(rule: Rule) -> bool:
            mine = [e for e in self.matches(rule) if self.of(e) == label]
            if rule.kind == "dir" and not os.path.islink(rule.base):
                return not mine  # a folder of its own files too is not left out for their copies
            hit = {e.path for e in self.matches(rule)}
            return all(names[e.real] - dropped - hit for e in mine)

        candidates: list[Rule] = [r for r in other_rules if r.kind != "file"]
        candidates += [Rule("key", caught[p].root, caught[p].key) for p in sorted(bad)]
        safe_dir: dict[str, bool] = {}
        for p in sorted(bad):  # the highest folder it can leave out whole
            d, best = posixpath.dirname(p), None
            while len(d) > len(caught[p].root):
                if d not in safe_dir:
                    safe_dir[d] = safe(Rule("dir", d))
                if not safe_dir[d]:
                    break
                best, d = d, posixpath.dirname(d)
            if best is not None:
                candidates.append(Rule("dir", best))
            d = posixpath.dirname(p)
            while len(d) > len(caught[p].root):  # a symlinked folder: a copy of another
                if os.path.islink(d):
                    candidates.append(Rule("dir", d))
                d = posixpath.dirname(d)
        pool = list(dict.fromkeys(candidates))
        others = set(other_rules)

        def rank(r: Rule) -> tuple[int, int]:
            removed = len({caught[p].real for p in removes[r] & left})
            kind = 0 if r.kind == "dir" and os.path.islink(r.base) else 1 if r in others else 2 if r.kind == "key" else 3
            return -removed, kind

        removes = {r: {e.path for e in self.matches(r)} & bad for r in pool}
        chosen: list[Rule] = []
        left = set(bad)

        def take(least: int, dirs: bool) -> None:
            nonlocal left
            while left:
                ranked = sorted((r for r in pool if dirs or r.kind != "dir"), key=rank)
                r = next((r for r in ranked if removes[r] & left and safe(r)), None)
                if r is None or len({caught[p].real for p in removes[r] & left}) < least:
                    return
                chosen.append(r)
                dropped.update(e.path for e in self.matches(r))
                left -= removes[r]
                pool.remove(r)

        take(2, dirs=True)
        # Many files left one by one (a folder of links to programs): leave out a folder
        # that holds at least two of them for each file of this source in it, those too.
        while len({caught[p].real for p in left}) > SPARE_EXCLUDES:
            best, best_score = None, 0
            for d in sorted({a for p in left for a in _folders(p, caught[p].root)}):
                gone = {caught[p].real for p in left if p.startswith(d + "/")}
                under = {x.path for x in self.by_dir[d]}
                lost = {e.real for e in self.by_dir[d]
                        if e.real in names and self.of(e) == label and not names[e.real] - dropped - under}
                score = len(gone) - 2 * len(lost)
                if len(gone) >= 4 and score > best_score:
                    best, best_score = (d, lost), score
            if best is None:
                break
            d, lost = best
            chosen.append(Rule("dir", d))
            dropped.update(e.path for e in self.by_dir[d])
            left = {p for p in left if not p.startswith(d + "/")}
            self.left_out |= lost
        take(1, dirs=False)  # one by one: by its name when no file of this source has it
        chosen += [Rule("file", p) for p in sorted(left)]
        return list({r.exclude(): r for r in chosen}.values())  # one relative glob for every root


def _folders(path: str, root: str) -> list[str]:
    """The folders above ``path``, below ``root``."""
    out, d = [], posixpath.dirname(path)
    while len(d) > len(root):
        out.append(d)
        d = posixpath.dirname(d)
    return out


def _short_reason(why: str) -> str:
    for start, short in (("compressed", "compressed"), ("binary", "binary"), ("a JSON document", "JSON documents"),
                         ("cannot read", "unreadable"), ("cannot list", "unreadable"),
                         ("not JSON lines", "not JSON lines")):
        if why.startswith(start):
            return short
    return why.split(":")[0][:40]


def plan_sources(scan: Scan) -> dict[str, SourcePlan]:
    """Each group's patterns and excludes; ``scan.groups`` is updated to the files each
    source will read (a file reassigned by its name, a leftover joining the rest)."""
    pl = Planner(scan)
    moved = pl.settle_shared_names()
    covers = {label: pl.cover(label) for label in scan.groups}
    varied = [k for k, (_, left) in covers.items() if left and scan.groups[k].type == "text"]
    rest = max(varied, key=lambda k: (len(pl.reals(k)), k), default=None)
    rules: dict[str, list[Rule]] = {k: r for k, (r, _) in covers.items()}
    joined: dict[str, set[str]] = {}  # real paths of another source's files that join the rest
    if rest is not None:
        rules[rest] = [Rule("dir", r) for r in sorted({e.root for e in pl.entries if pl.of(e) == rest})]
        for k, (_, left) in covers.items():
            if k != rest and left and scan.groups[k].type == "text":
                for real in left:
                    pl.label[real] = rest
                joined[scan.groups[k].name] = left
    for k, (_, left) in covers.items():  # another type with too many names: listed by path
        if left and scan.groups[k].type != "text":
            rules[k] += [Rule("file", e.path) for e in pl.entries if e.first and e.real in left]
    # empty files: read (as nothing) by the first source whose patterns list them
    order = sorted(rules, key=lambda k: k == rest)
    for e in pl.entries:
        if e.real in pl.empty and pl.label[e.real] == _OUT:
            pl.label[e.real] = next((k for k in order if any(pl.lists(r, e) for r in rules[k])), _OUT)
    excl = {k: pl.excludes(k, rules[k], [r for o in rules if o != k for r in rules[o]]) for k in rules}
    for real in pl.left_out:
        pl.label[real] = _OUT
    for loop in map(str, scan.loops):  # glob's ** would go round it: leave it out
        for k in rules:
            if any(r.kind != "file" and loop.startswith(r.base + "/") for r in rules[k]):
                excl[k].append(Rule("dir", loop))
    scan.left_out = sorted(Path(e.path) for e in pl.entries if e.first and e.real in pl.left_out)
    plans = {}
    for k, group in scan.groups.items():
        mine = pl.reals(k)
        plan = SourcePlan(group, rest=k == rest, reassigned=dict(moved.get(k, {})))
        if k == rest:  # (less those left out with a folder since)
            for other, reals in joined.items():
                names = sorted(e.name for e in pl.entries if e.first and e.real in reals and e.real in mine)
                if names:
                    plan.joined[other] = names
        _check_and_count(pl, k, rules[k], excl[k], mine, plan)
        group.files = sorted(Path(e.path) for e in pl.entries if e.first and e.real in mine)
        group.bytes = sum(_size(r) for r in mine)
        plans[k] = plan
    for k in [k for k, p in plans.items() if not p.group.files]:  # every file went elsewhere
        del plans[k], scan.groups[k]
    return plans


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _check_and_count(pl: Planner, label: str, rules: list[Rule], excludes: list[Rule], mine: set[str],
                     plan: SourcePlan) -> None:
    """Simulate the data stage's listing of the source (its exclude matcher, its
    root) and check it is exactly ``mine``; fill in the counts of the comments."""
    includes = [r.include() for r in rules]
    root = posixpath.commonpath([glob_root(p) for p in includes]) if includes else "/"
    patterns = [r.exclude() for r in excludes]
    out = ExcludeMatcher(patterns)

    def rel(path: str) -> str:
        return posixpath.relpath(path, root)

    kept = {r: {e.real for e in pl.matches(r) if not out(e.path, rel(e.path))} for r in rules}
    listed = set().union(*kept.values()) if kept else set()
    if listed != mine:
        raise RuntimeError(f"init's patterns for source {label!r} would list {len(listed - mine)} files "
                           f"that are not its own and miss {len(mine - listed)} (please report it): "
                           f"{sorted(listed ^ mine)[:5]}")
    caught = {e.path: e for r in rules for e in pl.matches(r)}
    for r in rules:
        plan.paths.append(Listed(r.include(), len(kept[r])))
    for r, pattern in zip(excludes, patterns):
        one = ExcludeMatcher([pattern])
        hit = [e for e in caught.values() if one(e.path, rel(e.path))]
        if r.kind == "dir" and any(str(loop) == r.base for loop in pl.scan.loops):
            note = "a link back to a folder above it"
        elif r.kind == "dir" and os.path.islink(r.base):
            target = os.path.realpath(r.base)
            note = f"a link to {posixpath.relpath(target, posixpath.dirname(r.base))}: the same files"
        else:
            reasons = Counter(_label_reason(pl, e) for e in hit)
            note = ", ".join(why for why, _ in reasons.most_common(2))
        plan.exclude.append(Listed(pattern, len({e.real for e in hit}), note))
    plan.paths.sort(key=lambda x: -x.files)  # the order does not matter to the listing: the largest first
    plan.exclude.sort(key=lambda x: -x.files)


def _label_reason(pl: Planner, e: Entry) -> str:
    if pl.of(e) != _OUT:
        return f"read by {pl.scan.groups[pl.of(e)].name}"
    if e.real in pl.left_out:
        return "left out with them"
    if e.real in pl.empty:
        return "empty"
    return pl.why.get(e.real, "not read")
