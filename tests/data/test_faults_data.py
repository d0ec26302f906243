"""Fault injection on the data side: a source file removed while the data stage
runs, a damaged Parquet source, a damaged shard of the data stage's output.
Each ends in a message that names the file and says what to do, and nothing is
lost without being counted."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fmforge.data.stage as stage_module
from fmforge.data.problems import BadInputError, DataError
from fmforge.data.shards import iter_split_records, iter_split_texts, list_shards
from fmforge.data.stage import run_data_stage
from fmforge.rundir import RunDir

pytestmark = pytest.mark.faults

GOOD = "a perfectly ordinary document with enough words in it to be kept, number {}"


def _text_source(write, n: int = 4) -> dict:
    for i in range(n):
        write(f"t/doc{i}.txt", GOOD.format(i))
    return {"name": "t", "type": "text", "paths": ["t/*.txt"]}


@pytest.fixture
def remove_after_listing(monkeypatch):
    """Delete the given file right after the stage has listed the sources."""
    def arm(victim: Path) -> None:
        real = stage_module.list_all_sources

        def listed_then_removed(cfg):
            listings = real(cfg)
            assert any(str(victim) in f.path for l in listings for f in l.files)
            victim.unlink()
            return listings
        monkeypatch.setattr(stage_module, "list_all_sources", listed_then_removed)
    return arm


def test_a_source_file_removed_during_the_stage_is_counted_and_named(write, make_cfg, tmp_path,
                                                                      remove_after_listing):
    source = _text_source(write)
    victim = tmp_path / "t" / "doc2.txt"
    remove_after_listing(victim)
    run = RunDir(tmp_path / "run")
    summary = run_data_stage(make_cfg([source], val_fraction=0.0, workers=1), run)

    card = json.loads(run.data_card.read_text())
    problems = card["sources"]["t"]["problems"]
    assert problems["counts"] == {"vanished_file": 1}
    [example] = problems["examples"]
    assert example["where"].endswith("doc2.txt")
    assert "rerun" in example["detail"]  # what to do
    assert summary["problems"] == 1
    ids = {r["id"] for r in iter_split_records(run.data, "train")}
    assert ids == {"t/doc0.txt", "t/doc1.txt", "t/doc3.txt"}


def test_strict_stops_when_a_source_file_vanishes(write, make_cfg, tmp_path, remove_after_listing):
    source = _text_source(write)
    remove_after_listing(tmp_path / "t" / "doc1.txt")
    with pytest.raises(BadInputError, match=r"doc1\.txt.*(deleted|moved)"):
        run_data_stage(make_cfg([source], val_fraction=0.0, workers=1, strict=True),
                       RunDir(tmp_path / "run"))


def _parquet_source(tmp_path: Path, rows: int = 3000) -> Path:
    d = tmp_path / "p"
    d.mkdir()
    pq.write_table(pa.table({"text": [GOOD.format(f"fine {i}") for i in range(50)]}), d / "fine.parquet")
    texts = [GOOD.format(f"row {i} " + "x" * (i % 50)) for i in range(rows)]
    pq.write_table(pa.table({"text": texts}), d / "hurt.parquet", row_group_size=500, compression="zstd")
    return d / "hurt.parquet"


@pytest.mark.parametrize("damage", ["cut", "scribbled"])
def test_a_damaged_parquet_source_is_reported_with_its_file(write, make_cfg, tmp_path, damage):
    hurt = _parquet_source(tmp_path)
    blob = bytearray(hurt.read_bytes())
    if damage == "cut":
        blob = blob[: len(blob) // 2]  # the footer (the schema) is gone
    else:
        mid = len(blob) // 2
        blob[mid:mid + 64] = b"\xff" * 64  # a data page in the middle
    hurt.write_bytes(bytes(blob))
    run = RunDir(tmp_path / "run")
    run_data_stage(make_cfg([{"name": "p", "type": "parquet", "paths": ["p/*.parquet"]}],
                            val_fraction=0.0, workers=1), run)
    card = json.loads(run.data_card.read_text())
    problems = card["sources"]["p"]["problems"]
    assert problems["total"] == 1
    assert "hurt.parquet" in problems["examples"][0]["where"]
    ids = {r["id"] for r in iter_split_records(run.data, "train")}
    assert {f"p/fine.parquet#{i}" for i in range(50)} <= ids
    hurt_ids = [i for i in ids if i.startswith("p/hurt.parquet")]
    assert len(hurt_ids) < 3000  # what could not be read is not in the output
    # and what was read of it is accounted for: every read document is kept here
    assert card["sources"]["p"]["documents_read"] == 50 + len(hurt_ids)


def _data_run(write, make_cfg, tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run_data_stage(make_cfg([_text_source(write, 6)], val_fraction=0.0, workers=1), run)
    return run


@pytest.mark.parametrize("damage", ["cut", "scribbled", "empty"])
def test_a_damaged_output_shard_stops_its_readers_naming_it(write, make_cfg, tmp_path, damage):
    run = _data_run(write, make_cfg, tmp_path)
    [shard] = list_shards(run.data, "train")
    blob = shard.read_bytes()
    if damage == "cut":
        blob = blob[: len(blob) - 20]
    elif damage == "scribbled":
        blob = blob[:4] + b"\x00" * (len(blob) - 8) + blob[-4:]
    else:
        blob = b""
    shard.write_bytes(blob)
    for read in (lambda: list(iter_split_records(run.data, "train")),
                 lambda: list(iter_split_texts(run.data, "train"))):
        with pytest.raises(DataError) as e:
            read()
        message = str(e.value)
        assert str(shard) in message
        assert "fmforge data" in message and "--force" in message


def _killed_in_scatter(write, make_cfg, tmp_path, monkeypatch):
    """A data stage killed at its third scatter task: every curate task and two scatter
    tasks have their marker in the work directory."""
    for i in range(24):
        write(f"k/{i:02d}.txt", GOOD.format(i) + " and more words " * (i % 4))
    cfg = make_cfg([{"name": "k", "paths": ["k/*.txt"]}], val_fraction=0.1, workers=1, task_bytes=400)
    real = stage_module.scatter_task
    calls = []

    def dies_at_the_third(payload):
        calls.append(payload["task"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside
        return real(payload)

    monkeypatch.setattr(stage_module, "scatter_task", dies_at_the_third)
    run = RunDir(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_data_stage(cfg, run)
    monkeypatch.setattr(stage_module, "scatter_task", real)
    return cfg, run


@pytest.mark.parametrize("victim, phase", [("tasks/00001/docs.parquet", "curate task 1"),
                                           ("scatter/00000/*.parquet", "scatter task 0")])
@pytest.mark.parametrize("how", ["empty", "cut"])
def test_a_power_cut_leaving_a_marker_beside_a_short_file_redoes_that_task(write, make_cfg, tmp_path,
                                                                          monkeypatch, capsys, victim, phase, how):
    """Kill point: a marker beside a truncated parquet file (what a power cut left
    before the data was fsynced ahead of the marker). The rerun redoes that task,
    says so, and gives the shards of an uninterrupted run (failed before: pyarrow's
    error on the short file, until the work directory was removed by hand)."""
    cfg, run = _killed_in_scatter(write, make_cfg, tmp_path, monkeypatch)
    [work] = (run.root / "data.work").iterdir()
    marker = work / "markers" / f"{phase.split()[0]}-{int(phase.split()[-1]):05d}.done"
    assert marker.is_file()
    [short, *_] = sorted(work.glob(victim))
    blob = short.read_bytes()
    short.write_bytes(b"" if how == "empty" else blob[: len(blob) // 2])
    capsys.readouterr()
    run_data_stage(cfg, run)
    err = " ".join(capsys.readouterr().err.split())  # the console wraps at 80 columns
    assert f"warning: data: {phase}: {short.relative_to(work).as_posix()} " in err
    assert "data: 1 task redone: a completion marker stood beside a damaged file" in err
    fresh = RunDir(tmp_path / "fresh")
    run_data_stage(cfg, fresh)
    assert ({p.name: p.read_bytes() for p in run.data.glob("*.parquet")}
            == {p.name: p.read_bytes() for p in fresh.data.glob("*.parquet")} != {})
