"""The docs name real code: every dotted ``fmforge.…`` name in README.md, docs/
and benchmarks/README.md imports and resolves, every source file they name
in backticks exists, and every link between the pages lands on a file and, with
``#anchor``, on a heading. A rename that leaves the docs pointing at nothing fails here."""

from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# (not a pyproject table such as [tool.fmforge.mutate.tests])
DOTTED = re.compile(r"(?<!tool\.)\bfmforge(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
# A backticked path to one of our files: `plan/memory.py`, `benchmarks/gpu_check.sh`.
PATH = re.compile(r"`([A-Za-z0-9_./-]+/[A-Za-z0-9_.-]+\.(?:py|sh|yaml|toml|html))`")


def _mentions(pattern: re.Pattern, group: int = 0) -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for m in pattern.finditer(page.read_text(encoding="utf-8")):
            name = m.group(group)
            if "ǁ" in page.read_text(encoding="utf-8")[m.end():m.end() + 1]:
                continue  # a mutmut mutant's name (docs/testing.md), not an attribute
            found.add((page.relative_to(ROOT).as_posix(), name.rstrip(".")))
    return sorted(found)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("page,name", _mentions(DOTTED))
def test_a_dotted_name_in_the_docs_resolves(page, name):
    try:
        _resolve(name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{page} names {name}, which does not resolve: {exc}")


def _is_source(path: str) -> bool:
    """Not a run's artifact: those have a placeholder segment (runs/NAME/report.html)."""
    return not any(part.isupper() for part in path.split("/"))


@pytest.mark.parametrize("page,path", [m for m in _mentions(PATH, 1) if _is_source(m[1])])
def test_a_file_the_docs_name_exists(page, path):
    candidates = [ROOT / path, ROOT / "src" / path, ROOT / "src" / "fmforge" / path]
    assert any(c.exists() for c in candidates), f"{page} names `{path}`, found nowhere in the repository"


# A Markdown link to one of our pages or files: [text](docs/x.md#anchor), ](#anchor).
LINK = re.compile(r"\]\(([^)\s]*)\)")
FENCE = re.compile(r"^(```|~~~)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation and symbols dropped
    (letters, marks, digits, ``_``, ``-`` and spaces kept), spaces made hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, code blocks skipped, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            slug = _slug(m.group(1))
            seen[slug] = seen.get(slug, -1) + 1
            if seen[slug]:
                seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def _links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        fenced = False
        for line in page.read_text(encoding="utf-8").splitlines():
            if FENCE.match(line.lstrip()):
                fenced = not fenced
                continue
            if not fenced:
                found += [(page.relative_to(ROOT).as_posix(), target) for target in LINK.findall(line)
                          if not re.match(r"[a-z]+:", target)]  # https:, mailto: are not ours
    return sorted(set(found))


@pytest.mark.parametrize("page,target", _links())
def test_a_link_between_the_pages_lands(page, target):
    """A link to a page of ours (or a heading on it) lands: the file exists and, for
    ``#anchor``, the anchor is the slug of one of its headings."""
    path, _, anchor = target.partition("#")
    linked = (ROOT / page).parent / path if path else ROOT / page
    assert linked.exists(), f"{page} links to {target}: {path} does not exist"
    if anchor and linked.suffix == ".md":
        assert anchor in _anchors(linked), f"{page} links to {target}: no heading of {path or page} has that anchor"
