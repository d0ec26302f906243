from __future__ import annotations

import pytest

from fmforge.config import SourceConfig
from fmforge.data.listing import glob_root, list_source_files, translate_exclude
from fmforge.data.problems import DataError, NoFilesMatchedError, UnknownPlaceholderError
from fmforge.data.store import open_binary


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


# ---- fsspec URLs and saved datasets ----


def test_file_urls_are_listed_through_fsspec_and_keep_their_url(tree, tmp_path):
    base = (tmp_path / "lib").as_posix()
    listing = list_source_files(_spec(paths=[f"file://{base}/**/*.py"], exclude=["**/test/**"]), None)
    rels = [f.rel for f in listing.files]
    assert rels == sorted(rels) and "pkg/c.py" in rels and "pkg/test/t1.py" not in rels
    first = listing.files[0]
    assert first.path == f"file://{base}/{first.rel}" and listing.root == f"file://{base}"
    assert first.size == (tmp_path / "lib" / first.rel).stat().st_size and first.mtime_ns > 0
    with open_binary(first.path) as f:
        assert f.read() == f"# lib/{first.rel}\n".encode()


def test_memory_filesystem_glob_errors_and_mixing(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    for rel, body in [("a.jsonl", b"{}\n"), ("sub/b.jsonl", b"{}\n{}\n"), ("sub/c.txt", b"x")]:
        fs.pipe(f"/fmforge-listing-test/{rel}", body)
    try:
        listing = list_source_files(_spec(paths=["memory://fmforge-listing-test/**/*.jsonl"]), None)
        assert [(f.rel, f.size) for f in listing.files] == [("a.jsonl", 3), ("sub/b.jsonl", 6)]
        assert listing.files[1].path == "memory:///fmforge-listing-test/sub/b.jsonl"
        with pytest.raises(NoFilesMatchedError, match=r"'src'.*\*\*/\*\.parquet"):
            list_source_files(_spec(paths=["memory://fmforge-listing-test/**/*.parquet"]), None)
        with pytest.raises(DataError, match="mix local paths and URLs"):
            list_source_files(_spec(paths=["memory://fmforge-listing-test/*.jsonl", "lib/*.py"]), str(tmp_path))
    finally:
        fs.rm("/fmforge-listing-test", recursive=True)


def test_hf_disk_lists_saved_dataset_directories_not_their_files(write, tmp_path):
    write("ds/one/dataset_info.json", "{}")
    write("ds/one/state.json", "{}")
    write("ds/one/data-00000-of-00001.arrow", "12345")
    write("ds/two/dataset_dict.json", "{}")
    write("ds/two/train/dataset_info.json", "{}")
    write("ds/two/train/state.json", "{}")
    write("ds/notes/readme.txt", "not a dataset")
    listing = list_source_files(_spec(type="hf_disk", paths=["ds/**"]), str(tmp_path))
    assert [(f.rel, f.size) for f in listing.files] == [("one", 9), ("two", 6)]  # train/ is part of two
    with pytest.raises(NoFilesMatchedError, match="save_to_disk"):
        list_source_files(_spec(type="hf_disk", paths=["ds/notes"]), str(tmp_path))


def test_a_file_reached_through_a_symlinked_folder_is_listed_once(write, tmp_path):
    """Debian's /usr/share/doc links a dozen package folders to one (libasan8 ->
    gcc-12-base ...): glob's ** follows the links, and a source read each file once
    per name, so the same text counted many times in the card and the mixture."""
    write("docs/real/guide.txt", "a guide\n")
    write("docs/real/sub/notes.txt", "some notes\n")
    write("docs/other.txt", "another file\n")
    (tmp_path / "docs/alias").symlink_to("real")  # a folder linked inside the corpus
    (tmp_path / "docs/alias2").symlink_to(tmp_path / "docs/real")
    outside = write("elsewhere/far.txt", "a file outside, linked in\n")
    (tmp_path / "docs/linked").symlink_to(outside.parent)  # a folder linked from outside: read
    listing = list_source_files(_spec(paths=["docs/**/*.txt"]), str(tmp_path))
    assert sorted(f.rel for f in listing.files) == [
        "alias/guide.txt", "alias/sub/notes.txt", "linked/far.txt", "other.txt"]
    assert listing.matched == 4 and listing.excluded == 0
    # excluding one name of a file keeps it under its other name
    listing = list_source_files(_spec(paths=["docs/**/*.txt"], exclude=["alias/**"]), str(tmp_path))
    assert sorted(f.rel for f in listing.files) == [
        "alias2/guide.txt", "alias2/sub/notes.txt", "linked/far.txt", "other.txt"]
