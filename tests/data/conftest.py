"""Fixtures for the data-stage tests: tiny corpora written into tmp_path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from fmforge.config import RunConfig, SourceConfig, config_from_dict
from fmforge.data.listing import list_source_files
from fmforge.data.problems import InputProblems
from fmforge.data.readers import open_reader
from fmforge.data.readers.base import Document


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMFORGE_NO_PROGRESS", "1")


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """``write("a/b.txt", "text")`` (str or bytes) under tmp_path; returns the path."""

    def _write(rel: str, content: str | bytes) -> Path:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(content.encode("utf-8"))
        return p

    return _write


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., RunConfig]:
    """A RunConfig with the given sources; other data keys via kwargs. ``config_dir`` is tmp_path."""

    def _make(sources: list[dict[str, Any]], seed: int = 1337, **data: Any) -> RunConfig:
        raw = {"name": "t", "seed": seed, "data": {"sources": sources, "min_chars": 1, **data}}
        return config_from_dict(raw, config_dir=str(tmp_path))

    return _make


@pytest.fixture
def doc_text() -> Callable[..., str]:
    """``doc_text(i, tag)``: a distinct, long-enough document text."""

    def _text(i: int, tag: str = "doc") -> str:
        return f"{tag} number {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 5)

    return _text


@dataclass
class Read:
    """What reading one source gave: documents, reader counters, problems."""

    docs: list[Document]
    counters: dict[str, int]
    problems: InputProblems

    def where(self, kind: str) -> list[str]:
        return [e["where"] for e in self.problems.examples if e["kind"] == kind]


@pytest.fixture
def read(tmp_path: Path) -> Callable[..., Read]:
    """``read(type, paths, strict=False, **source_keys)``: list and read a source
    (paths relative to tmp_path) the way the stage does."""

    def _read(type: str, paths: list[str], strict: bool = False, **kw: Any) -> Read:
        spec = SourceConfig(name="src", type=type, paths=paths, **kw)
        problems = InputProblems("src", strict=strict, quiet=True)
        reader = open_reader(spec, problems)
        docs = [d for f in list_source_files(spec, str(tmp_path)).files for d in reader.read_file(f)]
        return Read(docs, reader.counters(), problems)

    return _read
