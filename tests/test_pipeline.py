"""The whole pipeline through the CLI: it runs, the loss falls, stages are skipped
when nothing changed, and a change reruns only the stages after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.train.metrics import read_metrics

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def stage_times(run: Path) -> dict:
    return {k: v["completed_at"] for k, v in json.loads((run / "stages.json").read_text()).items()}


def test_tiny_pipeline_end_to_end(tiny_config_file: Path):
    run = Path(yaml.safe_load(tiny_config_file.read_text())["out_dir"])
    invoke("run", str(tiny_config_file))

    # Every artifact of the run-directory contract exists.
    for rel in ("config.yaml", "data/data_card.json", "tokenizer/tokenizer.json",
                "tokens/meta.json", "tokens/train/00000.bin", "tokens/train.docs.npy", "metrics.jsonl",
                "eval.json"):
        assert (run / rel).exists(), rel
    assert list((run / "data").glob("train-*.parquet"))
    metrics = read_metrics(run / "metrics.jsonl")
    assert {"step", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(metrics[0])
    assert metrics[-1]["step"] == 20
    assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5, "the loss must fall"
    ev = json.loads((run / "eval.json").read_text())
    assert {"loss", "perplexity", "bits_per_byte", "gzip_bits_per_byte"} <= set(ev)
    assert ev["bits_per_byte"] > 0 and ev["gzip_bits_per_byte"] > 0

    # generate prints only the completion; greedy is deterministic.
    out1 = invoke("generate", str(run), "--prompt", "def alpha", "--temperature", "0",
                  "--max-new-tokens", "12").stdout
    out2 = invoke("generate", str(run), "--prompt", "def alpha", "--temperature", "0",
                  "--max-new-tokens", "12").stdout
    # (a 20-step model on code may well continue with indentation only)
    assert out1 == out2 and out1.rstrip("\n") and "def alpha" not in out1[:9]

    # Same config again: nothing is redone.
    before = stage_times(run)
    invoke("run", str(tiny_config_file))
    assert stage_times(run) == before

    # A new learning rate reruns training and evaluation only.
    invoke("run", str(tiny_config_file), "train.lr=1e-3")
    after = stage_times(run)
    assert [s for s in before if after[s] != before[s]] == ["train", "eval"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 1e-3


def test_stage_commands_demand_their_inputs(tiny_config_file: Path):
    result = runner.invoke(app, ["train", str(tiny_config_file)])
    assert result.exit_code == 2
    assert "fmforge tokenize" in result.output


def test_bad_config_exits_with_the_key(tiny_config_file: Path):
    result = runner.invoke(app, ["run", str(tiny_config_file), "model.n_heads=3"])
    assert result.exit_code == 2
    assert "model.n_heads=3 must divide model.d_model=32" in result.output


def test_help_is_fast():
    code = "import sys, fmforge.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_stage_whose_output_was_deleted_runs_again(tiny_config_file: Path):
    """A user who deletes tokens/ (or data/, tokenizer/) by hand and reruns the stage
    gets it rebuilt, not "up to date, skipped" over a directory that is not there."""
    import shutil

    run = Path(yaml.safe_load(tiny_config_file.read_text())["out_dir"])
    for stage in ("data", "tokenizer", "tokenize"):
        invoke(stage if stage != "tokenizer" else "tokenizer", str(tiny_config_file))
    for stage, out, artifact in (("tokenize", "tokens", "meta.json"), ("tokenizer", "tokenizer", "tokenizer.json"),
                                 ("data", "data", "data_card.json")):
        shutil.rmtree(run / out)
        result = invoke(stage, str(tiny_config_file))
        assert "skipped" not in result.output, result.output
        assert (run / out / artifact).is_file(), stage
