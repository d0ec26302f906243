from __future__ import annotations

import os
from pathlib import Path

import pytest

from fmforge.data.placeholders import resolve_pattern
from fmforge.data.problems import UnknownPlaceholderError


def test_stdlib_placeholder_points_at_the_standard_library():
    pattern = resolve_pattern("{python_stdlib}/os.py", source="s", config_dir=None)
    assert Path(pattern).is_file()
    assert (Path(pattern).parent / "json" / "__init__.py").is_file()


def test_site_packages_and_home_and_config_dir(tmp_path):
    sp = resolve_pattern("{site_packages}", source="s", config_dir=None)
    assert Path(sp).is_dir() and "packages" in Path(sp).name
    assert resolve_pattern("{home}/x", source="s", config_dir=None) == Path(Path.home(), "x").as_posix()
    assert resolve_pattern("{config_dir}/a/*.txt", source="s", config_dir=str(tmp_path)) == (
        tmp_path / "a" / "*.txt"
    ).as_posix()


def test_relative_patterns_resolve_against_config_dir_else_cwd(tmp_path, monkeypatch):
    assert resolve_pattern("corpus/**/*.md", source="s", config_dir=str(tmp_path)) == (
        tmp_path / "corpus/**/*.md"
    ).as_posix()
    monkeypatch.chdir(tmp_path)
    assert resolve_pattern("c/*.txt", source="s", config_dir=None) == Path(os.getcwd(), "c/*.txt").as_posix()


def test_unknown_placeholder_names_source_placeholder_and_known_ones():
    with pytest.raises(UnknownPlaceholderError) as e:
        resolve_pattern("{pyhton_stdlib}/**/*.py", source="code", config_dir=None)
    msg = str(e.value)
    assert "'code'" in msg and "{pyhton_stdlib}" in msg
    for known in ("{python_stdlib}", "{site_packages}", "{home}", "{config_dir}"):
        assert known in msg


def test_config_dir_without_a_config_file_is_an_error():
    with pytest.raises(UnknownPlaceholderError, match="config_dir"):
        resolve_pattern("{config_dir}/x", source="s", config_dir=None)


def test_unknown_placeholder_is_a_value_error():
    assert issubclass(UnknownPlaceholderError, ValueError)
