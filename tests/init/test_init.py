"""`fmforge init` on folders of each kind: the config it writes names the right
source types, fields and columns, is accepted by the loader and runs; problems
are reported by file."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.config import load_config
from fmforge.init.scan import ScanError
from fmforge.init.write import Budget, init_config

runner = CliRunner()

WORDS = ["the", "of", "and", "to", "in", "that", "with", "have", "be", "is", "was", "for", "on", "are", "as", "it", "river", "stone", "house", "garden", "morning", "light", "water", "letter", "friend", "winter", "travel", "people", "history", "village", "bridge", "market"]


def prose(rng: random.Random, words: int = 120) -> str:
    sentences, n = [], 0
    while n < words:
        k = rng.randint(6, 14)
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + ".")
        n += k
    return " ".join(sentences)


def by_type(cfg) -> dict:
    return {s.type if s.type != "text" else ("code" if s.filters == "code" else "text"): s
            for s in cfg.data.sources}


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    rng = random.Random(0)
    d = {k: tmp_path / k for k in ("docs", "code", "records", "tables", "web")}
    for p in d.values():
        p.mkdir()
    (d["docs"] / "sub").mkdir()
    for i in range(6):
        (d["docs"] / f"note{i}.txt").write_text(prose(rng))
        (d["docs"] / "sub" / f"page{i}.md").write_text("# Title\n\n" + prose(rng))
    for i in range(6):
        (d["code"] / f"mod{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j}\n\n" for j in range(20)))
    with open(d["records"] / "tickets.jsonl", "w") as f:
        for i in range(30):  # the text is under "body", next to short fields
            f.write(json.dumps({"id": i, "title": f"ticket {i}", "body": prose(rng, 80), "status": "open"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(20)), "lang": ["en"] * 20,
                             "content": [prose(rng, 80) for _ in range(20)]}), d["tables"] / "wiki.parquet")
    with open(d["tables"] / "reviews.csv", "w", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["stars", "review", "author"])
        for i in range(20):
            w.writerow([i % 5, prose(rng, 60), f"user{i}"])
    for i in range(3):
        (d["web"] / f"p{i}.html").write_text(f"<!DOCTYPE html><html><body><p>{prose(rng)}</p></body></html>")
    return d


def test_each_kind_becomes_a_source_the_loader_accepts(folders, tmp_path):
    out = tmp_path / "mine.yaml"
    r = init_config(list(folders.values()), out, Budget(minutes=3), measure=False)
    cfg = load_config(out)  # what the user will load
    s = by_type(cfg)
    assert set(s) == {"text", "code", "jsonl", "parquet", "csv", "html"}
    assert s["jsonl"].text_field == "body"
    assert s["parquet"].text_column == "content"
    assert s["csv"].text_column == "review"
    assert (s["text"].filters, s["code"].filters, s["html"].filters) == ("prose", "code", "web")
    # the guess is named in the config for the user to check
    text = out.read_text()
    assert 'text_field: "body"  # guessed from 30 lines of tickets.jsonl' in text
    # every file the data stage will list is one init placed there
    from fmforge.data.listing import list_source_files

    listed = {Path(f.path).name for f in list_source_files(s["text"], cfg.config_dir).files}
    assert listed == {f"note{i}.txt" for i in range(6)} | {f"page{i}.md" for i in range(6)}
    assert cfg.train.max_minutes == 3 and cfg.tokenizer.vocab_size == r.size.vocab_size
    assert cfg.model.d_model == r.size.d_model and cfg.model.n_layers == r.size.n_layers


def test_the_cli_prints_the_sources_and_next_commands(folders, tmp_path):
    out = tmp_path / "c.yaml"
    res = runner.invoke(app, ["init", str(folders["records"]), "--budget", "50", "--gpu", "h100-sxm",
                              "--num-gpus", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "text field 'body'" in res.output and f"fmforge run {out}" in res.output
    cfg = load_config(out)
    # a GPU budget sets the step count for the named hardware, not minutes
    assert cfg.train.max_minutes is None and cfg.train.max_steps > 100
    assert (cfg.plan.gpu, cfg.plan.num_gpus) == ("h100-sxm", 2)
    res = runner.invoke(app, ["init", str(folders["records"]), "--minutes", "1", "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output and "--force" in res.output


def test_empty_folder_is_refused_by_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanError, match=r"empty.*the folder is empty"):
        init_config([tmp_path / "empty"], tmp_path / "x.yaml", measure=False)
    with pytest.raises(ScanError, match="no such folder"):
        init_config([tmp_path / "nope"], tmp_path / "x.yaml", measure=False)
    assert not (tmp_path / "x.yaml").exists()


def test_unreadable_unknown_and_non_utf8_files_are_named(tmp_path):
    rng = random.Random(1)
    d = tmp_path / "d"
    d.mkdir()
    (d / "good.txt").write_text(prose(rng))
    (d / "latin.txt").write_bytes(("Caf\xe9 " + prose(rng)).encode("latin-1"))
    (d / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64))
    (d / "gone.txt").symlink_to(d / "missing-target")  # listed, but cannot be opened
    locked = d / "locked.txt"
    locked.write_text(prose(rng))
    locked.chmod(0)
    try:
        r = init_config([d], tmp_path / "c.yaml", measure=False)
    finally:
        locked.chmod(0o644)
    warnings = "\n".join(r.warnings)
    assert "gone.txt" in warnings and "unreadable" in warnings
    assert "latin.txt: not UTF-8: byte 0xe9 on line 1" in warnings
    assert "photo.png: binary" in warnings
    if os.geteuid() != 0:  # root reads a mode-000 file
        assert "locked.txt" in warnings
    # the unusable files the *.txt pattern would list are excluded in the config
    src = load_config(tmp_path / "c.yaml").data.sources[0]
    assert any(e.endswith("gone.txt") for e in src.exclude)


def test_nothing_readable_is_an_error_naming_the_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.png").write_bytes(b"\x89PNG\0\0" + bytes(32))
    (d / "b.json").write_text('{"a": [1,\n 2]}')
    with pytest.raises(ScanError) as e:
        init_config([d], tmp_path / "c.yaml", measure=False)
    assert "a.png: binary" in str(e.value) and "b.json: a JSON document, not JSON lines" in str(e.value)


def test_a_tiny_version_of_the_written_config_trains(folders, tmp_path, monkeypatch):
    out = tmp_path / "run.yaml"
    init_config([folders["docs"], folders["code"]], out, Budget(minutes=1), name="tiny-init", measure=False)
    monkeypatch.chdir(tmp_path)
    over = ["tokenizer.vocab_size=300", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
            "model.seq_len=32", "train.max_minutes=null", "train.max_steps=3", "train.warmup_steps=1",
            "train.micro_batch_size=2", "train.eval_every=3", "train.tensorboard=false", "data.val_fraction=0.2"]
    for stage in ("data", "tokenizer", "tokenize", "train"):
        res = runner.invoke(app, [stage, str(out), *over])
        assert res.exit_code == 0, f"{stage}: {res.output}"
    metrics = [json.loads(line) for line in (tmp_path / "runs/tiny-init/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3
    card = json.loads((tmp_path / "runs/tiny-init/data/data_card.json").read_text())
    assert set(card["sources"]) == {"text", "code"}


def test_model_auto_is_printed_before_training_and_recorded_in_the_run(folders, tmp_path, monkeypatch):
    out = tmp_path / "auto.yaml"
    init_config([folders["code"]], out, Budget(minutes=1), name="auto-init", measure=False)
    monkeypatch.chdir(tmp_path)
    # plan.mfu given: the speed is taken from it, not measured (fast, and the same on every machine)
    over = ["model={auto: true, seq_len: 32}", "plan.mfu=0.3", "tokenizer.vocab_size=300",
            "train.max_steps=10", "train.warmup_steps=8", "train.micro_batch_size=2", "train.dtype=float32",
            "train.device=cpu", "train.tensorboard=false", "data.val_fraction=0.2"]
    outputs = {}
    for stage in ("data", "tokenizer", "tokenize", "train"):
        res = runner.invoke(app, [stage, str(out), *over])
        assert res.exit_code == 0, f"{stage}: {res.output}"
        outputs[stage] = res.output
    record = json.loads((tmp_path / "runs/auto-init/model_size.json").read_text())["size"]
    assert f"model: auto → d_model {record['d_model']}" in outputs["data"]
    assert "as decided before" in outputs["train"]  # the same model for every stage
    resolved = yaml.safe_load((tmp_path / "runs/auto-init/config.yaml").read_text())
    assert resolved["model"]["d_model"] == record["d_model"] and resolved["model"]["n_layers"] == record["n_layers"]
    assert resolved["tokenizer"]["vocab_size"] == 300  # set by hand: kept
    state = json.loads(sorted((tmp_path / "runs/auto-init/checkpoints").glob("step-*/trainer_state.json"))[-1]
                       .read_text())
    assert state["model"]["d_model"] == record["d_model"]


def test_init_says_when_the_chosen_model_would_repeat_its_data(tmp_path):
    """A folder of 40 kB (about 10,000 tokens at 4 bytes a token) and an hour of an
    H100: the model is sized for the data, and init says how often the hour repeats it."""
    d = tmp_path / "small"
    d.mkdir()
    (d / "a.txt").write_text("A line of plain prose about nothing in particular.\n" * 800)
    r = init_config([d], tmp_path / "c.yaml", Budget(usd=3.0, gpu="h100-sxm"), measure=False)
    data_tokens = r.scan.total_bytes / 4
    assert 20 * r.size.non_embedding_params <= 4 * data_tokens or r.size.d_model == 64
    said = " ".join(r.size.notes)
    assert f"repeat its data {r.size.tokens / data_tokens:,.1f} times" in said
    assert "# note: " in (tmp_path / "c.yaml").read_text() and "Muennighoff" in (tmp_path / "c.yaml").read_text()


def test_hidden_files_are_named_not_dropped_in_silence(tmp_path):
    """glob's ``**`` skips names that start with a dot, and so does the data stage:
    init says which it left out (a folder once, not each file in it)."""
    rng = random.Random(2)
    d = tmp_path / "d"
    (d / ".notes").mkdir(parents=True)
    (d / "sub").mkdir()
    (d / "good.txt").write_text(prose(rng))
    (d / "sub" / ".draft.txt").write_text(prose(rng))
    for i in range(3):
        (d / ".notes" / f"n{i}.txt").write_text(prose(rng))
    r = init_config([d], tmp_path / "c.yaml", measure=False)
    said = [w for w in r.warnings if "hidden" in w]
    assert len(said) == 1, r.warnings
    assert f"{d / '.notes'} (3 files)" in said[0] and str(d / "sub" / ".draft.txt") in said[0]
    assert said[0].startswith("2 hidden names")


def test_a_dollar_budget_too_small_asks_for_more_dollars_not_minutes(folders, tmp_path):
    """A user who gave --budget USD is told to raise the budget: they gave no minutes."""
    out = tmp_path / "tiny.yaml"
    # $0.00001 buys a few milliseconds of an H100: far too little for the smallest shape
    r = init_config([folders["records"]], out, budget=Budget(usd=0.00001, gpu="h100-sxm"), measure=False)
    too_small = [n for n in r.size.notes if "too small for even the smallest shape" in n]
    assert too_small, r.size.notes
    assert "minutes" not in too_small[0] and "raise --budget" in too_small[0], too_small[0]
    assert "# note: " + too_small[0] in out.read_text()
