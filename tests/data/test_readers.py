"""Source readers for text, JSONL, CSV and Parquet: the documents, ids and
metadata a user gets from small files, and every kind of bad input reported
with its file and line, the good records still read."""

from __future__ import annotations

import csv
import gzip
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmforge.config import SourceConfig
from fmforge.data.listing import list_source_files
from fmforge.data.problems import BadInputError, InputProblems, UnknownSourceTypeError
from fmforge.data.readers import READERS, open_reader


def jsonl(*objs: Any) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


# ---- registry ----


def test_every_config_type_has_a_reader_and_an_unknown_type_names_them():
    from typing import get_args

    assert set(READERS) == set(get_args(SourceConfig.model_fields["type"].annotation))
    spec = SourceConfig.model_construct(name="s", type="pdf", paths=["x"])
    with pytest.raises(UnknownSourceTypeError) as e:
        open_reader(spec, InputProblems("s"))
    assert "'pdf'" in str(e.value) and "jsonl" in str(e.value) and "warc" in str(e.value)


# ---- text ----


def test_text_one_document_per_file_raw(read, write, tmp_path):
    write("c/a.txt", "\ufeffhello\r\nworld\n")
    write("c/sub/b.txt", "second")
    r = read("text", ["c/**/*.txt"])
    assert [(d.id, d.text) for d in r.docs] == [("src/a.txt", "\ufeffhello\r\nworld\n"), ("src/sub/b.txt", "second")]
    assert r.docs[0].metadata == {"path": (tmp_path / "c/a.txt").as_posix()}
    assert r.counters["documents"] == 2 and r.counters["raw_bytes"] == 16 + 6
    assert r.problems.total == 0


def test_text_not_utf8_kept_with_replacement_and_reported_with_line(read, write, tmp_path):
    write("c/latin.txt", "line one\nline two\ncaf\xe9 au lait\n".encode("latin-1"))
    r = read("text", ["c/*.txt"])
    assert r.docs[0].text == "line one\nline two\ncaf\ufffd au lait\n"
    assert r.where("not_utf8") == [f"{tmp_path.as_posix()}/c/latin.txt:3"]
    assert r.counters["decode_error_files"] == 1 and r.counters["replaced_bytes"] == 1


def test_binary_file_among_text_files_is_skipped_and_reported(read, write, tmp_path):
    write("c/a.txt", "some text")
    write("c/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    write("c/noise.bin", bytes([0x80 + i % 100 for i in range(500)]))  # no NUL, undecodable
    write("c/z.txt", "more text")
    r = read("text", ["c/*"])
    assert [d.id for d in r.docs] == ["src/a.txt", "src/z.txt"]
    assert sorted(Path(w).name for w in r.where("binary_file")) == ["logo.png", "noise.bin"]
    assert r.counters["binary_files"] == 2 and r.problems.counts == {"binary_file": 2}


def test_empty_text_file_counted_without_a_warning(write, tmp_path, capsys):
    # A source tree has many empty __init__.py files: each is counted in the
    # data card, but printing a warning for each would bury the real ones.
    write("c/empty.txt", "")
    write("c/full.txt", "x")
    write("c/latin.txt", b"caf\xe9")
    spec = SourceConfig(name="src", type="text", paths=["c/*.txt"])
    problems = InputProblems("src")  # not quiet: warnings printed as the stage does
    reader = open_reader(spec, problems)
    docs = [d for f in list_source_files(spec, str(tmp_path)).files for d in reader.read_file(f)]
    assert [d.id for d in docs] == ["src/full.txt", "src/latin.txt"]
    assert problems.counts == {"empty_file": 1, "not_utf8": 1}
    assert [e["where"] for e in problems.examples if e["kind"] == "empty_file"] == [
        f"{tmp_path.as_posix()}/c/empty.txt"]
    err = capsys.readouterr().err
    assert "latin.txt" in err and "empty.txt" not in err


# ---- jsonl ----


def test_jsonl_documents_ids_metadata_and_dotted_field(read, write, tmp_path):
    write("d/a.jsonl", jsonl({"doc": {"body": "first"}, "url": "https://e.org/1"}, {"doc": {"body": "second"}}))
    r = read("jsonl", ["d/*.jsonl"], text_field="doc.body")
    assert [(d.id, d.text) for d in r.docs] == [("src/a.jsonl:1", "first"), ("src/a.jsonl:2", "second")]
    path = (tmp_path / "d/a.jsonl").as_posix()
    assert r.docs[0].metadata == {"path": path, "line": 1, "url": "https://e.org/1"}
    assert r.docs[1].metadata == {"path": path, "line": 2}


def test_jsonl_gzip_and_zstd_read_like_plain(read, write, tmp_path):
    import zstandard

    body = jsonl({"text": "a"}, {"text": "b"}).encode()
    write("d/x.jsonl.gz", gzip.compress(body))
    write("d/y.jsonl.zst", zstandard.ZstdCompressor().compress(body))
    write("d/z.json", body)
    r = read("jsonl", ["d/*"])
    assert [d.id for d in r.docs] == [
        "src/x.jsonl.gz:1", "src/x.jsonl.gz:2", "src/y.jsonl.zst:1", "src/y.jsonl.zst:2", "src/z.json:1", "src/z.json:2",
    ]  # fmt: skip
    assert r.problems.total == 0


def test_jsonl_bad_lines_reported_with_file_and_line_good_lines_read(read, write, tmp_path):
    write("d/a.jsonl", jsonl({"text": "ok 1"}) + "{not json\n" + jsonl({"body": "x"}, {"text": "ok 4"})
          + "\n" + jsonl([1, 2], {"text": None}, {"text": 7}, {"text": "ok 9"}))
    r = read("jsonl", ["d/a.jsonl"])
    path = (tmp_path / "d/a.jsonl").as_posix()
    assert [d.id for d in r.docs] == ["src/a.jsonl:1", "src/a.jsonl:4", "src/a.jsonl:9"]
    assert r.where("not_json") == [f"{path}:2"]
    assert r.where("missing_field") == [f"{path}:3"]
    assert r.where("not_object") == [f"{path}:6"]
    assert r.where("null_text") == [f"{path}:7"] and r.where("not_string") == [f"{path}:8"]
    assert r.problems.counts == {"not_json": 1, "missing_field": 1, "not_object": 1, "null_text": 1, "not_string": 1}
    assert r.counters["lines"] == 9 and r.counters["blank_lines"] == 1 and r.counters["documents"] == 3
    missing = next(e for e in r.problems.examples if e["kind"] == "missing_field")
    assert "'body'" in missing["detail"] and "text_field" in missing["detail"]


def test_jsonl_empty_file_and_json_array_reported(read, write, tmp_path):
    write("d/empty.jsonl", "\n\n")
    write("d/array.json", '[\n  {"text": "a"}\n]\n')
    r = read("jsonl", ["d/*"])
    assert r.docs == []
    assert [Path(w).name for w in r.where("empty_file")] == ["empty.jsonl"]
    assert [Path(w).name for w in r.where("not_jsonl")] == ["array.json"]
    assert r.problems.total == 2  # the array's other lines are not reported one by one


def test_jsonl_not_utf8_line_reported_and_kept(read, write, tmp_path):
    write("d/a.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    r = read("jsonl", ["d/a.jsonl"])
    assert [d.text for d in r.docs] == ["ok", "caf\ufffd"]
    assert r.where("not_utf8") == [f"{(tmp_path / 'd/a.jsonl').as_posix()}:2"]


def test_jsonl_50mb_single_line_document_read_intact(read, write, tmp_path):
    big = "0123456789abcdef" * (50 * 1024 * 1024 // 16)
    write("d/big.jsonl", jsonl({"text": "small"}, {"text": big}, {"text": "after"}))
    t0 = time.perf_counter()
    r = read("jsonl", ["d/big.jsonl"])
    elapsed = time.perf_counter() - t0
    assert [len(d.text) for d in r.docs] == [5, len(big), 5]
    assert r.docs[1].text == big and r.docs[1].id == "src/big.jsonl:2"
    assert elapsed < 10  # generous on a shared 2-core box; a quadratic readline would take minutes


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_truncated_archive_keeps_documents_before_the_cut(read, write, tmp_path, codec):
    import zstandard

    lines = [{"text": f"document {i} " + "x" * 200} for i in range(2000)]
    body = jsonl(*lines).encode()
    data = gzip.compress(body) if codec == "gzip" else zstandard.ZstdCompressor().compress(body)
    write("d/cut.jsonl.gz", data[: len(data) // 2])
    r = read("jsonl", ["d/cut.jsonl.gz"])
    n = len(r.docs)
    assert 0 < n < 2000
    assert [d.text for d in r.docs] == [o["text"] for o in lines[:n]]  # intact, in order
    assert r.problems.counts == {"truncated_archive": 1}
    assert r.where("truncated_archive") == [f"{(tmp_path / 'd/cut.jsonl.gz').as_posix()}:{n + 1}"]


def test_strict_mode_first_problem_raises_naming_file_and_line(read, write, tmp_path):
    write("d/a.jsonl", jsonl({"text": "ok"}) + "oops\n")
    with pytest.raises(BadInputError) as e:
        read("jsonl", ["d/a.jsonl"], strict=True)
    assert f"{(tmp_path / 'd/a.jsonl').as_posix()}:2" in str(e.value) and "not JSON" in str(e.value)


# ---- csv ----


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def test_csv_rows_with_multiline_and_large_fields(read, tmp_path):
    long = "word " * 100_000  # over the csv module's default 128 KiB field limit
    _write_csv(tmp_path / "t/a.csv", [["id", "body"], ["1", "one line"], ["2", "two\nlines"], ["3", long], ["4"]])
    r = read("csv", ["t/a.csv"], text_column="body")
    assert [(d.id, d.text) for d in r.docs] == [("src/a.csv:2", "one line"), ("src/a.csv:3", "two\nlines"),
                                                 ("src/a.csv:5", long)]
    assert r.docs[0].metadata["line"] == 2
    assert r.where("missing_field") == [f"{(tmp_path / 't/a.csv').as_posix()}:6"]


def test_csv_without_the_column_names_the_columns_it_has(read, tmp_path):
    _write_csv(tmp_path / "t/a.csv", [["\ufefftitle", "content"], ["a", "b"]])
    r = read("csv", ["t/a.csv"])
    assert r.docs == [] and r.problems.counts == {"missing_column": 1}
    assert "'title', 'content'" in r.problems.examples[0]["detail"]


# ---- parquet ----


def test_parquet_records_in_batches_nulls_counted(read, tmp_path):
    (tmp_path / "p").mkdir()
    texts = [f"row {i}" if i % 500 else None for i in range(2500)]  # spans several batches
    pq.write_table(pa.table({"text": texts, "n": list(range(2500))}), tmp_path / "p/a.parquet", row_group_size=700)
    r = read("parquet", ["p/*.parquet"])
    assert len(r.docs) == 2495 and r.docs[0].id == "src/a.parquet#1" and r.docs[-1].text == "row 2499"
    assert r.docs[-1].metadata == {"path": (tmp_path / "p/a.parquet").as_posix(), "record": 2499}
    assert r.problems.counts == {"null_text": 5} and r.counters["rows"] == 2500


def test_parquet_without_the_column_reported_with_its_columns(read, tmp_path):
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"content": ["a"], "lang": ["en"]}), tmp_path / "p/a.parquet")
    pq.write_table(pa.table({"text": ["kept"]}), tmp_path / "p/b.parquet")
    r = read("parquet", ["p/*.parquet"])
    assert [d.text for d in r.docs] == ["kept"]
    assert r.where("missing_column") == [(tmp_path / "p/a.parquet").as_posix()]
    assert "'content', 'lang'" in r.problems.examples[0]["detail"]


def test_not_a_parquet_file_reported(read, write, tmp_path):
    write("p/a.parquet", "this is not parquet")
    r = read("parquet", ["p/a.parquet"])
    assert r.docs == [] and r.problems.counts == {"unreadable_file": 1}


def test_jsonl_read_from_an_fsspec_url(read, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/fmforge-readers-test/a.jsonl.gz", gzip.compress(jsonl({"text": "remote"}).encode()))
    try:
        r = read("jsonl", ["memory://fmforge-readers-test/*.jsonl.gz"])
    finally:
        fs.rm("/fmforge-readers-test", recursive=True)
    assert [(d.id, d.text, d.metadata["path"]) for d in r.docs] == [
        ("src/a.jsonl.gz:1", "remote", "memory:///fmforge-readers-test/a.jsonl.gz")
    ]
