"""`fmforge tokenizer eval RUN [--compare OTHER]`: bytes per token per source,
vocabulary usage and round-trip exactness, against a direct computation."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.data.shards import iter_split_records
from fmforge.tokenizer.evaluate import evaluate_tokenizers
from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.train import run_tokenizer_stage


def direct(tok: Tokenizer, records) -> dict:
    """The figures computed plainly, one document at a time."""
    per: dict[str, list[int]] = {}
    used: set[int] = set()
    failures = 0
    for r in records:
        ids = tok.encode(r["text"], add_special_tokens=False).ids
        b, t = per.setdefault(r["source"], [0, 0])
        per[r["source"]] = [b + len(r["text"].encode()), t + len(ids)]
        used.update(ids)
        failures += tok.decode(ids, skip_special_tokens=False) != r["text"]
    added = set(tok.get_added_tokens_decoder())
    return {"per_source": {s: b / t for s, (b, t) in per.items()},
            "overall": sum(b for b, _ in per.values()) / sum(t for _, t in per.values()),
            "usage": len(used - added) / (tok.get_vocab_size() - len(added)), "failures": failures}


def lowercasing_bpe(path):
    """A tokenizer that cannot round-trip capitals (a normalizer lowercases)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["alpha beta gamma café"] * 10, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.save(str(path))
    return tok


@pytest.fixture
def run(direct_run, make_docs):
    val = make_docs(40, 3, "wiki") + make_docs(25, 4, "code") + [("caps", "UPPER Case ünï", "code")]
    cfg, run = direct_run(make_docs(300, 1, "wiki") + make_docs(100, 2, "code"), val,
                          vocab_size=400, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    return run


def test_figures_match_a_direct_computation(run, tmp_path):
    other = lowercasing_bpe(tmp_path / "other.json")
    other.encode_special_tokens = True
    result = evaluate_tokenizers(run, compare=tmp_path / "other.json")
    assert json.loads((run.tokenizer / "eval.json").read_text()) == result
    records = list(iter_split_records(run.data, "val", columns=("text", "source")))
    assert result["documents"] == len(records) == 66
    ours, theirs = result["tokenizers"]
    for got, tok in ((ours, load_tokenizer(run, raw_text=True)), (theirs, other)):
        want = direct(tok, records)
        assert got["bytes_per_token"] == pytest.approx(want["overall"], abs=1e-5)
        assert {s: v["bytes_per_token"] for s, v in got["per_source"].items()} == pytest.approx(
            want["per_source"], abs=1e-5)
        assert got["vocab_usage"] == pytest.approx(want["usage"], abs=1e-5)
        assert got["round_trip_failures"] == want["failures"]
        assert got["documents"] == 66 and got["bytes"] == sum(len(r["text"].encode()) for r in records)
    assert ours["round_trip_exact"] and ours["vocab_size"] == load_tokenizer(run).get_vocab_size() and ours["special_tokens"] == 6
    # the lowercasing tokenizer fails wherever a document has a capital letter
    assert theirs["round_trip_failures"] == sum(r["text"] != r["text"].lower() for r in records) >= 1
    assert not theirs["round_trip_exact"]
    assert theirs["round_trip_failure_examples"][0]["source"] in ("wiki", "code")


def test_cli_prints_both_side_by_side(run, tmp_path):
    lowercasing_bpe(tmp_path / "other.json")
    result = CliRunner().invoke(app, ["tokenizer", "eval", str(run.root), "--compare", str(tmp_path / "other.json")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "bytes per token" in out and "round trip exact" in out and "other.json" in out
    assert "wiki" in out and "code" in out and "no: " in out
    saved = json.loads((run.tokenizer / "eval.json").read_text())
    assert len(saved["tokenizers"]) == 2
    # a run compared with itself, given as a run directory
    result = CliRunner().invoke(app, ["tokenizer", "eval", str(run.root), "--compare", str(run.root)])
    assert result.exit_code == 0, result.output
    a, b = json.loads((run.tokenizer / "eval.json").read_text())["tokenizers"]
    assert a["bytes_per_token"] == b["bytes_per_token"] and a["ids_used"] == b["ids_used"]


def test_cli_errors_are_messages(run, tmp_path):
    result = CliRunner().invoke(app, ["tokenizer", "eval", str(run.root), "--compare", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "--compare" in result.output and "does not exist" in result.output
    assert "tokenizer.path" not in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["tokenizer", "eval", str(tmp_path / "no-run")])
    assert result.exit_code == 2 and "no run at" in result.output
