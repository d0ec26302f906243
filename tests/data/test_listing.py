from __future__ import annotations

import pytest

from fmforge.config import SourceConfig
from fmforge.data.errors import NoFilesMatchedError, UnknownPlaceholderError
from fmforge.data.listing import glob_root, list_source_files, translate_exclude


def _spec(**kw) -> SourceConfig:
    return SourceConfig(name=kw.pop("name", "src"), **kw)


@pytest.fixture
def tree(write):
    for rel in [
        "lib/a.py", "lib/b.py", "lib/pkg/c.py", "lib/pkg/test/t1.py", "lib/test/t2.py",
        "lib/pkg/tests/t3.py", "lib/latest/ok.py", "lib/notes.txt", "lib/pkg/d.pyc",
    ]:  # fmt: skip
        write(rel, f"# {rel}\n")


def test_recursive_glob_sorted_with_relative_ids(tree, tmp_path):
    listing = list_source_files(_spec(paths=["lib/**/*.py"]), str(tmp_path))
    rels = [f.rel for f in listing.files]
    assert rels == sorted(rels)
    assert "a.py" in rels and "pkg/c.py" in rels and "pkg/test/t1.py" in rels
    assert "notes.txt" not in rels and "pkg/d.pyc" not in rels
    assert listing.root == (tmp_path / "lib").as_posix()


def test_exclude_any_test_directory(tree, tmp_path):
    listing = list_source_files(
        _spec(paths=["lib/**/*.py"], exclude=["**/test/**", "**/tests/**"]), str(tmp_path)
    )
    rels = {f.rel for f in listing.files}
    assert rels == {"a.py", "b.py", "pkg/c.py", "latest/ok.py"}  # "latest" is not "test"
    assert listing.matched == 7 and listing.excluded == 3


def test_exclude_name_pattern_and_absolute_exclude(tree, tmp_path):
    listing = list_source_files(
        _spec(paths=["lib/**/*"], exclude=["*.pyc", "*.txt", "{config_dir}/lib/pkg/**"]), str(tmp_path)
    )
    rels = {f.rel for f in listing.files}
    assert rels == {"a.py", "b.py", "test/t2.py", "latest/ok.py"}


def test_a_test_directory_above_the_root_does_not_exclude(write, tmp_path):
    write("test/corpus/x.txt", "x")
    listing = list_source_files(_spec(paths=["test/corpus/*.txt"], exclude=["**/test/**"]), str(tmp_path))
    assert [f.rel for f in listing.files] == ["x.txt"]


def test_several_patterns_share_a_root_and_a_file_is_listed_once(tree, tmp_path):
    listing = list_source_files(_spec(paths=["lib/*.py", "lib/pkg/*.py", "lib/a.py"]), str(tmp_path))
    assert [f.rel for f in listing.files] == ["a.py", "b.py", "pkg/c.py"]


def test_pattern_matching_nothing_names_source_and_pattern(tree, tmp_path):
    with pytest.raises(NoFilesMatchedError) as e:
        list_source_files(_spec(name="mycode", paths=["lib/*.py", "lib/**/*.rs"]), str(tmp_path))
    assert "'mycode'" in str(e.value) and "lib/**/*.rs" in str(e.value)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(NoFilesMatchedError, match="does not exist"):
        list_source_files(_spec(paths=["nope/*.txt"]), str(tmp_path))


def test_excluding_everything_is_an_error(tree, tmp_path):
    with pytest.raises(NoFilesMatchedError, match="exclude"):
        list_source_files(_spec(paths=["lib/*.py"], exclude=["*"]), str(tmp_path))


def test_unknown_placeholder_in_exclude(tree, tmp_path):
    with pytest.raises(UnknownPlaceholderError, match="nope"):
        list_source_files(_spec(paths=["lib/*.py"], exclude=["{nope}/x"]), str(tmp_path))


def test_glob_root_and_exclude_translation():
    assert glob_root("/a/b/**/*.py") == "/a/b"
    assert glob_root("/a/*.dist-info/METADATA") == "/a"
    assert glob_root("/a/b/c.txt") == "/a/b"
    rx = translate_exclude("**/test/**")
    assert rx.fullmatch("test/x.py") and rx.fullmatch("a/b/test/c/x.py")
    assert not rx.fullmatch("latest/x.py") and not rx.fullmatch("a/test.py")
    assert translate_exclude("*.py[co]").fullmatch("a/b.pyc")
    assert translate_exclude("[!a]*.txt").fullmatch("b.txt")
    assert not translate_exclude("[!a]*.txt").fullmatch("a.txt")
