"""What keeps a run directory trustworthy when a user does things out of order:
stale later stages, overrides on skipped stages, bad devices, empty held-out
splits, touched-but-unchanged sources, text that mentions special tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.rundir import atomic_directory
from fmforge.tokenizer.encode import _pieces

runner = CliRunner()


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def records(run: Path) -> dict:
    return json.loads((run / "stages.json").read_text())


def test_rebuilding_an_earlier_stage_makes_later_ones_stale(tiny_config_file: Path):
    run = tiny_config_file.parent / "run"
    cfg = str(tiny_config_file)
    invoke("run", cfg)
    # An option of the default sub-command before the config (tokenizer = tokenizer train).
    invoke("tokenizer", "--force", cfg, "tokenizer.min_frequency=3")
    assert set(records(run)) == {"data", "tokenizer"}
    # The old model must not be paired with the new tokenizer.
    out = invoke("generate", str(run), "--prompt", "def", code=2).output
    assert "rebuilt" in out
    out = invoke("eval", cfg, code=2).output
    assert "fmforge train" in out
    invoke("run", cfg, "tokenizer.min_frequency=3")
    invoke("generate", str(run), "--prompt", "def", "--max-new-tokens", "3")


def test_skipped_stage_does_not_rewrite_config_and_generate_uses_checkpoint(tiny_config_file: Path):
    run = tiny_config_file.parent / "run"
    invoke("run", str(tiny_config_file))
    invoke("data", str(tiny_config_file), "model.d_model=64")  # skipped: data is up to date
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["d_model"] == 32
    invoke("generate", str(run), "--prompt", "def", "--max-new-tokens", "3")


def test_bookkeeping_settings_do_not_retrain(tiny_config_file: Path):
    run = tiny_config_file.parent / "run"
    invoke("run", str(tiny_config_file))
    before = records(run)
    invoke("run", str(tiny_config_file), "train.checkpoint_every=5", "train.eval_every=4",
           "train.eval_batches=1", "train.log_every=3")
    assert records(run) == before


def test_bad_device_is_an_error_and_keeps_checkpoints(tiny_config_file: Path):
    run = tiny_config_file.parent / "run"
    invoke("run", str(tiny_config_file))
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    import torch

    # A device this machine lacks: CUDA on a CPU machine, Apple's MPS on a GPU one.
    missing, message = ("mps", "MPS is not available") if torch.cuda.is_available() else (
        "cuda", "CUDA is not available")
    out = invoke("train", str(tiny_config_file), "--force", f"train.device={missing}", code=2).output
    assert message in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept


def test_empty_heldout_split_fails_before_training(tmp_path: Path, make_tiny_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(make_tiny_config(tmp_path, data={"val_fraction": 0})))
    out = invoke("run", str(path), code=2).output
    assert "held-out split" in out and "data.val_fraction" in out
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_touched_but_unchanged_source_reruns_only_the_data_stage(tiny_config_file: Path):
    run = tiny_config_file.parent / "run"
    invoke("run", str(tiny_config_file))
    before = records(run)
    doc = tiny_config_file.parent / "corpus" / "doc000.py"
    os.utime(doc, (1, 1))
    invoke("run", str(tiny_config_file))
    after = records(run)
    assert after["data"]["completed_at"] != before["data"]["completed_at"]
    for stage in ("tokenizer", "tokenize", "train", "eval"):
        assert after[stage]["completed_at"] == before[stage]["completed_at"], stage
    # A real change does flow through.
    doc.write_text(doc.read_text() + "\ndef new_function(x):\n    return x\n")
    invoke("run", str(tiny_config_file))
    assert records(run)["train"]["completed_at"] != before["train"]["completed_at"]


def test_special_token_text_in_a_document_is_not_a_boundary(tmp_path: Path, make_tiny_config):
    raw = make_tiny_config(tmp_path)
    (tmp_path / "corpus" / "doc000.py").write_text('EOS = "<|endoftext|>"  # the GPT-2 separator\n' * 3)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    invoke("tokenize", str(path), code=2)  # stages in order, please
    for stage in ("data", "tokenizer", "tokenize"):
        invoke(stage, str(path))
    meta = json.loads((tmp_path / "run" / "tokens" / "meta.json").read_text())
    import numpy as np

    from fmforge.rundir import RunDir
    from fmforge.tokenizer.tokens import open_tokens

    tokens = np.concatenate([np.asarray(open_tokens(RunDir(tmp_path / "run"), s)) for s in ("train", "val")])
    assert int((tokens == meta["eos_id"]).sum()) == meta["train_documents"] + meta["val_documents"]


def test_long_documents_are_cut_after_newlines_without_losing_text():
    text = "".join(f"line {i} " + "x" * (i % 50) + "\n" for i in range(60_000))
    pieces = _pieces(text)
    assert len(pieces) > 1 and "".join(pieces) == text
    assert all(p.endswith("\n") for p in pieces[:-1])
    assert _pieces("short\n") == ["short\n"]


def test_atomic_directory_clears_leftovers_of_killed_writers(tmp_path: Path):
    (tmp_path / ".tokens.tmp-99999").mkdir()
    with atomic_directory(tmp_path / "tokens") as tmp:
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]
