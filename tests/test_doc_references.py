"""The docs name real code: every dotted ``fmforge.…`` name in README.md, docs/
and benchmarks/README.md imports and resolves, and every source file they name
in backticks exists. A rename that leaves the docs pointing at nothing fails here."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"\bfmforge(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
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
