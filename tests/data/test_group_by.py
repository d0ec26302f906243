"""A source split into sub-sources by a field of its records (``group_by``), in
The Pile's shape: JSONL.zst records ``{"text": ..., "meta": {"pile_set_name": ...}}``.
Each group is a source of its own downstream: rows in the data card, its own
weight, its own tokens and held-out evaluation; records without a group are
counted, never lost silently."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from fmforge.config import ConfigError, config_from_dict
from fmforge.data.stage import run_data_stage
from fmforge.pipeline import run_pipeline
from fmforge.rundir import RunDir

try:
    import zstandard
except ImportError:  # plain JSONL reads the same way
    zstandard = None

WORDS = ("the river runs past old mill and children walk to school along bank while baker "
         "opens his shop bells ring over quiet town").split()
# group -> documents: three sizes, so a count in the wrong row shows
GROUPS = {"Github": 14, "PubMed Abstracts": 9, "Enron Emails": 6}
# records the stage cannot group: (record, problem kind)
UNGROUPED = [
    ({"text": "a record without any meta at all, long enough to keep"}, "missing_group"),
    ({"text": "a record whose meta lacks the set name, long enough", "meta": {}}, "missing_group"),
    ({"text": "a record whose set name is null, long enough to keep", "meta": {"pile_set_name": None}},
     "missing_group"),
    ({"text": "a record whose set name is a number, long enough here", "meta": {"pile_set_name": 7}},
     "group_not_string"),
]


def _text(group: str, i: int, rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    return f"{group} document {i}: {words}."


def write_pile(path: Path, seed: int = 3) -> tuple[dict[str, list[str]], list[int]]:
    """A Pile-shaped file: the groups' records interleaved, the ungroupable ones
    among them. Returns the texts per group and the lines of the ungrouped records."""
    rng = random.Random(seed)
    records = [({"text": _text(g, i, rng), "meta": {"pile_set_name": g}}, g)
               for g, n in GROUPS.items() for i in range(n)]
    rng.shuffle(records)
    for k, (rec, _) in enumerate(UNGROUPED):
        records.insert(3 + 5 * k, (rec, None))
    lines = "".join(json.dumps(r) + "\n" for r, _ in records).encode()
    if zstandard is not None:
        path = path.with_suffix(".jsonl.zst")
        lines = zstandard.ZstdCompressor().compress(lines)
    path.write_bytes(lines)
    texts: dict[str, list[str]] = {g: [] for g in GROUPS}
    for r, g in records:
        if g is not None:
            texts[g].append(r["text"])
    return texts, [n for n, (_, g) in enumerate(records, 1) if g is None]


def pile_source(tmp_path: Path, **keys) -> dict:
    return {"name": "pile", "type": "jsonl", "paths": [str(tmp_path / "pile" / "*.jsonl*")],
            "group_by": "meta.pile_set_name", **keys}


@pytest.fixture
def pile(tmp_path: Path) -> tuple[dict[str, list[str]], list[int]]:
    (tmp_path / "pile").mkdir()
    return write_pile(tmp_path / "pile" / "00.jsonl")


def test_each_group_is_a_source_with_its_own_weight(tmp_path, pile, make_cfg, capsys):
    texts, ungrouped_lines = pile
    # the source's weight 3 for groups not named; Books3 is named but absent
    weights = {"Github": 1.0, "PubMed Abstracts": 2.0, "Books3": 1.5}
    cfg = make_cfg([pile_source(tmp_path, weight=3.0, group_weights=weights)], val_fraction=0.2)
    run = RunDir(tmp_path / "run")
    run_data_stage(cfg, run)
    card = run.read_data_card()

    # one row per group, named SOURCE/GROUP, in a fixed order (sorted by value)
    names = [f"pile/{g}" for g in sorted(GROUPS)]
    assert list(card["sources"]) == names
    for g, docs in texts.items():
        s = card["sources"][f"pile/{g}"]
        assert (s["group_of"], s["group"], s["group_by"]) == ("pile", g, "meta.pile_set_name")
        assert s["documents_read"] == s["kept_documents"] == len(docs)
        assert s["kept_bytes"] == sum(len(t.encode()) for t in docs)
        assert s["train_documents"] + s["val_documents"] == len(docs)
        # the group's weight, as for an ordinary source: mixed bytes = weight x train bytes
        w = weights.get(g, 3.0)
        assert s["weight"] == s["mixture"]["weight"] == w
        assert s["mixture"]["bytes_after"] == w * s["train_bytes"] > 0

    # the records without a group: counted with their kind and line, not kept
    grouped = card["grouped_sources"]["pile"]
    assert grouped["groups"] == names
    assert grouped["records_without_group"] == len(UNGROUPED)
    problems = grouped["problems"]
    for kind in ("missing_group", "group_not_string"):
        assert problems["counts"][kind] == sum(k == kind for _, k in UNGROUPED)
    assert sorted(int(e["where"].rsplit(":", 1)[1]) for e in problems["examples"]) == ungrouped_lines
    assert grouped["documents_read"] == sum(GROUPS.values())
    assert grouped["files_read"] == 1 and card["totals"]["files_read"] == 1
    assert card["totals"]["problems"]["missing_group"] == 3
    assert card["totals"]["documents_read"] == sum(GROUPS.values())

    # a weight for a group no record has: a warning, listed in the card
    assert grouped["unmatched_groups"] == {"group_weights": ["Books3"]}
    assert "group_weights names ['Books3'], but no record has that" in capsys.readouterr().err

    # the shards carry the group as the document's source
    from fmforge.data.shards import iter_split_records

    seen = {}
    for split in ("train", "val"):
        for rec in iter_split_records(run.data, split, columns=("source",)):
            seen[rec["source"]] = seen.get(rec["source"], 0) + 1
    assert seen == {n: card["sources"][n]["mixture"]["documents_after"] + card["sources"][n]["val_documents"]
                    for n in names}


def test_groups_are_sources_down_to_the_heldout_evaluation(tmp_path, pile, make_tiny_config):
    raw = make_tiny_config(
        tmp_path, model={"d_model": 32, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "seq_len": 32},
        train={"max_steps": 2, "eval_every": 2, "checkpoint_every": 2, "micro_batch_size": 4})
    raw["data"]["sources"].append(pile_source(tmp_path, group_weights={"PubMed Abstracts": 2.0}))
    raw["data"]["val_fraction"] = 0.3
    run, _ = run_pipeline(config_from_dict(raw))
    card = run.read_data_card()
    groups = [f"pile/{g}" for g in sorted(GROUPS)]
    assert list(card["sources"]) == ["code", *groups]

    meta = run.tokens_meta()
    assert meta["sources"] == ["code", *groups]
    for split in ("train", "val"):
        index = np.load(run.tokens / f"{split}.sources.npy")
        counts = np.bincount(index, minlength=len(meta["sources"]))
        for i, name in enumerate(meta["sources"]):
            s = card["sources"][name]
            want = s["mixture"]["documents_after"] if split == "train" else s["val_documents"]
            assert counts[i] == want, (split, name)

    ev = json.loads((run.root / "eval.json").read_text())
    entry = ev["steps"][str(ev["step"])]
    with_val = [n for n in groups if card["sources"][n]["val_documents"]]
    assert with_val == groups  # every group has held-out documents at this seed
    assert sorted(entry["per_source"]) == sorted(["code", *groups])
    for name in groups:  # each group scored on exactly its own held-out text
        assert entry["per_source"][name]["bytes"] == card["sources"][name]["val_bytes"], name

    # the report: a row per group, and the grouped source's records without a group
    from html import escape

    page = (run.root / "report.html").read_text()
    for name in groups:
        assert page.count(f"<td>{escape(name)}</td>") >= 2, name  # data card and held-out tables
    assert "<td>meta.pile_set_name</td><td>3</td>" in page


def test_group_shares_split_the_source_share(tmp_path, pile, make_tiny_config):
    raw = make_tiny_config(tmp_path)
    raw["data"]["sources"][0]["share"] = 0.2
    raw["data"]["sources"].append(pile_source(tmp_path, share=0.8, group_shares={"Github": 0.4}))
    raw["data"]["total_tokens"] = 20_000
    run, _ = run_pipeline(config_from_dict(raw), stages=("data", "tokenizer", "tokenize"))
    mix = run.tokens_meta()["mixture"]["per_source"]
    assert mix["code"]["share"] == 0.2
    assert mix["pile/Github"]["share"] == 0.4
    # the rest of the source's share goes to its other groups by their size
    rest = [mix[f"pile/{g}"] for g in ("Enron Emails", "PubMed Abstracts")]
    assert sum(m["share"] for m in rest) == pytest.approx(0.4)
    assert rest[0]["share"] / rest[1]["share"] == pytest.approx(rest[0]["tokens_before"] / rest[1]["tokens_before"])
    for name, m in mix.items():
        assert m["realised_share"] == pytest.approx(m["share"], abs=0.06), name


def test_group_shares_for_an_absent_group_stop_the_tokenize_stage(tmp_path, pile, make_tiny_config):
    raw = make_tiny_config(tmp_path)
    raw["data"]["sources"][0]["share"] = 0.5
    raw["data"]["sources"].append(pile_source(tmp_path, share=0.5, group_shares={"Books3": 0.1}))
    raw["data"]["total_tokens"] = 10_000
    with pytest.raises(ValueError, match=r"group_shares give a share to \['Books3'\]"):
        run_pipeline(config_from_dict(raw), stages=("data", "tokenizer", "tokenize"))


def test_reader_puts_each_record_in_its_group(tmp_path, pile, read):
    texts, ungrouped_lines = pile
    path = next((tmp_path / "pile").iterdir()).name
    got = read("jsonl", [f"pile/{path}"], group_by="meta.pile_set_name")
    by_source: dict[str, list[str]] = {}
    for d in got.docs:
        by_source.setdefault(d.source, []).append(d.text)
        assert d.id.startswith(f"src/{path}:")  # the id says where it was read, not its group
    assert by_source == {f"src/{g}": t for g, t in texts.items()}
    assert sorted(int(w.rsplit(":", 1)[1]) for k in ("missing_group", "group_not_string")
                  for w in got.where(k)) == ungrouped_lines


@pytest.mark.parametrize("source, message", [
    ({"type": "text", "group_by": "meta.x"}, "a 'text' source's documents have no fields"),
    ({"type": "csv", "group_by": "kind"}, "type 'csv' is not supported yet"),
    ({"type": "jsonl", "group_weights": {"Github": 2.0}}, "group_weights need group_by"),
    ({"type": "jsonl", "group_by": "m", "group_weights": {"Github": 0}},
     r"data.sources.0.group_weights: every group's value must be > 0"),
    ({"type": "jsonl", "group_by": "m", "group_shares": {"Github": 0.5}}, "give the source a share too"),
    ({"type": "jsonl", "group_by": "m", "share": 1.0, "group_weights": {"Github": 2.0}},
     "give group_weights or a share"),
    ({"type": "jsonl", "group_by": "m", "share": 0.5, "group_shares": {"a": 0.3, "b": 0.3}},
     "group_shares sum to 0.6, more than the source's share 0.5"),
])
def test_group_config_errors_name_the_key(source, message):
    src = {"name": "pile", "paths": ["x"], **source}
    data = {"sources": [src], **({"total_tokens": 1000} if "share" in src else {})}
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"name": "t", "data": data})


def test_a_group_by_naming_the_wrong_field_is_an_error(tmp_path, write, make_cfg, monkeypatch):
    import fmforge.data.groups as groups

    monkeypatch.setattr(groups, "MAX_GROUPS", 5)
    write("ids.jsonl", "".join(json.dumps({"text": f"document number {i} with text", "id": f"n{i}"}) + "\n"
                               for i in range(8)))
    cfg = make_cfg([{"name": "ids", "type": "jsonl", "paths": ["ids.jsonl"], "group_by": "id"}])
    with pytest.raises(ValueError, match="split it into 8 groups"):
        run_data_stage(cfg, RunDir(tmp_path / "run"))
