"""Bad input through the whole data stage: every kind is reported with its file
and line (or record), counted in the data card, and the stage goes on;
``data.strict`` makes the first one fatal; nothing readable at all is fatal."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmforge.data.problems import BadInputError, EmptyCorpusError
from fmforge.data.shards import iter_split_records
from fmforge.data.stage import run_data_stage
from fmforge.rundir import RunDir

GOOD = "a perfectly ordinary document with enough words in it to be kept {}"


def _bad_corpus(write, tmp_path):
    lines = [json.dumps({"text": GOOD.format(i)}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"body": "no text field here"}))
    write("j/good-and-bad.jsonl", "\n".join(lines) + "\n")
    write("j/empty.jsonl", "")
    blob = gzip.compress(("\n".join(json.dumps({"text": GOOD.format(f"gz {i}")}) for i in range(200)) + "\n").encode())
    write("j/cut.jsonl.gz", blob[: len(blob) // 2])
    write("t/latin1.txt", GOOD.format("café").encode("latin-1"))
    write("t/fine.txt", GOOD.format("plain"))
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"body": [GOOD.format("parquet")]}), tmp_path / "p" / "wrong.parquet")
    pq.write_table(pa.table({"text": [GOOD.format("parquet ok")]}), tmp_path / "p" / "right.parquet")
    return [
        {"name": "j", "type": "jsonl", "paths": ["j/*.jsonl", "j/*.jsonl.gz"]},
        {"name": "t", "type": "text", "paths": ["t/*.txt", "t/missing-dir/*.txt"]},
        {"name": "p", "type": "parquet", "paths": ["p/*.parquet"]},
    ]


def test_bad_inputs_are_counted_with_where_and_the_stage_goes_on(write, make_cfg, tmp_path):
    run = RunDir(tmp_path / "run")
    summary = run_data_stage(make_cfg(_bad_corpus(write, tmp_path), val_fraction=0.0), run)
    card = json.loads(run.data_card.read_text())
    j, t, p = (card["sources"][n]["problems"] for n in "jtp")
    assert j["counts"]["not_json"] == 1 and j["counts"]["missing_field"] == 1
    assert j["counts"]["empty_file"] == 1 and j["counts"]["truncated_archive"] == 1
    where = {e["kind"]: e["where"] for e in j["examples"]}
    assert where["not_json"].endswith("good-and-bad.jsonl:3")
    assert where["missing_field"].endswith("good-and-bad.jsonl:5")
    assert "cut.jsonl.gz" in where["truncated_archive"]
    assert t["counts"] == {"no_match": 1, "not_utf8": 1}
    assert p["counts"] == {"missing_column": 1}
    assert summary["problems"] == sum(card["totals"]["problems"].values()) == 7
    ids = {r["id"] for r in iter_split_records(run.data, "train")}
    # the good lines around the bad ones, the documents before the cut, the
    # latin-1 file (with replacement characters) and the right parquet are kept
    assert {"j/good-and-bad.jsonl:1", "j/good-and-bad.jsonl:7", "t/latin1.txt", "p/right.parquet#0"} <= ids
    assert sum(i.startswith("j/cut.jsonl.gz") for i in ids) > 10


def test_strict_stops_at_the_first_bad_input_naming_it(write, make_cfg, tmp_path):
    sources = _bad_corpus(write, tmp_path)
    sources[1]["paths"] = ["t/*.txt"]  # the missing pattern would stop it even earlier
    # files are read in sorted order: the cut archive comes first
    with pytest.raises(BadInputError, match=r"cut\.jsonl\.gz:\d+: the gzip stream ends"):
        run_data_stage(make_cfg(sources[:1], strict=True), RunDir(tmp_path / "strict"))


def test_nothing_readable_is_fatal(write, make_cfg, tmp_path):
    write("j/bad.jsonl", "{oops\n[1, 2]\n")
    with pytest.raises(EmptyCorpusError, match=r"not_json"):
        run_data_stage(make_cfg([{"name": "j", "type": "jsonl", "paths": ["j/*.jsonl"]}]),
                       RunDir(tmp_path / "r"))


def test_a_lone_surrogate_from_json_is_replaced_and_counted(write, make_cfg, tmp_path):
    write("j/s.jsonl", '{"text": "abc \\ud800 def, a document with a broken escape"}\n{"text": "a clean one"}\n')
    run = RunDir(tmp_path / "r")
    run_data_stage(make_cfg([{"name": "j", "type": "jsonl", "paths": ["j/*.jsonl"]}], val_fraction=0.0), run)
    texts = {r["id"]: r["text"] for r in iter_split_records(run.data, "train")}
    assert texts["j/s.jsonl:1"] == "abc \ufffd def, a document with a broken escape"
    card = json.loads(run.data_card.read_text())
    assert card["sources"]["j"]["problems"]["counts"] == {"lone_surrogates": 1}
