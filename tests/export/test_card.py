"""The model card (README.md) `fmforge export hf` writes: read back with
huggingface_hub's own parser (what the Hub runs), its model-index checked against
eval.json, its body against the run's artifacts and transformers' own count, and
no path of this machine in it unless asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fmforge.config import config_from_dict
from fmforge.export.hf import export_hf
from fmforge.pipeline import run_pipeline, run_stage
from fmforge.rundir import RunDir

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard  # noqa: E402

PROSE = ("The committee met on Tuesday to review the budget. Members asked why the "
         "figures had changed since March, and the treasurer explained the new rules. ")


def _prose_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(24):
        (root / f"note{i:02d}.txt").write_text((PROSE + f"Item {i} was approved. ") * (3 + i % 4))
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, make_tiny_config):
    """A two-source run, trained briefly, evaluated on its held-out split, with an
    lm-eval result recorded and another model (its own export, renamed) scored
    against it: every figure a card reports, made by the stages that make them."""
    from fmforge.eval.against import evaluate_against
    from fmforge.eval.results import record_harness

    root = tmp_path_factory.mktemp("card")
    raw = make_tiny_config(root, model={"d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2,
                                        "seq_len": 64},
                           train={"max_steps": 12, "checkpoint_every": 12, "eval_every": 12,
                                  "micro_batch_size": 4})
    raw["data"]["sources"].append({"name": "notes", "paths": [str(_prose_corpus(root / "notes") / "*.txt")]})
    raw["data"]["val_fraction"] = 0.2
    cfg = config_from_dict(raw)
    run, _ = run_pipeline(cfg, stages=("data", "tokenizer", "tokenize", "train"))
    run_stage(cfg, run, "eval")
    step = json.loads(run.eval_json.read_text())["step"]
    record_harness(run, step, {"tasks": {"tiny_mc": {"alias": "tiny_mc", "acc,none": 0.375,
                                                     "acc_stderr,none": 0.0625}},
                               "config": {"tasks": ["tiny_mc"], "num_fewshot": 0}})
    other = export_hf(run, root / "elsewhere" / "other-model")
    evaluate_against(run, [str(other)], torch.device("cpu"), batch_size=8)
    return run


def _results(card) -> dict[tuple[str, str | None, str], float]:
    return {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value
            for r in card.data.eval_results or []}


def test_the_card_parses_and_its_model_index_gives_back_eval_json(evaluated, tmp_path):
    out = export_hf(evaluated, tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    ev = json.loads(evaluated.eval_json.read_text())
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert "fmforge" in card.data.tags
    got = _results(card)
    want = {("fmforge-heldout", None, "bits_per_byte"): ev["bits_per_byte"],
            **{("fmforge-heldout", s, "bits_per_byte"): r["bits_per_byte"] for s, r in ev["per_source"].items()},
            ("tiny_mc", None, "acc"): 0.375}
    assert got == want  # exactly: YAML carries a float's repr
    assert set(ev["per_source"]) == {"code", "notes"}
    # every result is of the model the card is named for
    assert card.data.model_name and all(r.dataset_split == "validation" for r in card.data.eval_results
                                        if r.dataset_type == "fmforge-heldout")


def test_the_card_body_reports_the_run(evaluated, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_hf(evaluated, tmp_path / "hf")
    text = ModelCard.load(out / "README.md").text
    ev = json.loads(evaluated.eval_json.read_text())
    card = evaluated.read_data_card()
    meta = evaluated.tokens_meta()
    n = AutoModelForCausalLM.from_pretrained(str(out)).num_parameters()
    assert f"{n:,}" in text  # the parameter count transformers itself finds
    assert "64 tokens" in text  # the context
    assert f"{meta['vocab_size']:,}" in text
    for name, s in card["sources"].items():
        assert name in text
        assert f"{s['train_bytes']:,}" in text
        assert f"{meta['per_source']['train'][name]['tokens']:,}" in text
    assert f"{ev['bits_per_byte']:.4f}" in text
    assert f"{ev['gzip_bits_per_byte']:.4f}" in text and f"{ev['xz_bits_per_byte']:.4f}" in text
    assert "other-model" in text and f"{ev['against']['other-model']['bits_per_byte']:.4f}" in text
    assert "AutoModelForCausalLM" in text and "llama" in text.lower() and "gguf" in text.lower()
    assert "not aligned" in text or "no instruction" in text.lower()


def test_a_run_without_an_evaluation_says_so(tiny_runs, tmp_path):
    run = tiny_runs["gqa-tied"]
    assert not run.eval_json.exists()
    out = export_hf(run, tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    assert not card.data.eval_results
    assert "model-index" not in (out / "README.md").read_text()
    assert "not been evaluated" in card.text and "fmforge eval" in card.text
    assert "bits per byte |" not in card.text  # no table of figures


def test_an_evaluation_of_another_checkpoint_is_not_reported_as_this_ones(evaluated, tmp_path):
    """eval.json's latest figures are of step S; a checkpoint the export picks up
    later (step S + more) was never scored: the card says so, no model-index."""
    copy = RunDir(shutil.copytree(evaluated.root, tmp_path / "run"))
    ev = json.loads(copy.eval_json.read_text())
    step = ev["step"]
    ev["step"] = step - 6
    ev["steps"] = {str(step - 6): ev["steps"][str(step)]}
    ev.pop("harness")
    copy.eval_json.write_text(json.dumps(ev))
    out = export_hf(copy, tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    assert not card.data.eval_results
    assert f"step {step - 6}" in card.text and f"step {step}" in card.text


def _machine_paths(run: RunDir) -> list[str]:
    import tempfile

    return [str(run.root.resolve()), str(run.root.resolve().parent), tempfile.gettempdir() + "/",
            str(Path.home()) + "/", "/home/", "/root/", "/tmp/", "/work/"]


def test_the_card_names_no_path_of_this_machine(evaluated, tmp_path):
    out = export_hf(evaluated, tmp_path / "hf")
    text = (out / "README.md").read_text()
    for path in _machine_paths(evaluated):
        assert path not in text
    # asked for: the run directory and the data's roots are named
    out = export_hf(evaluated, tmp_path / "hf-paths", card_paths=True)
    text = (out / "README.md").read_text()
    assert str(evaluated.root.resolve()) in text


def test_export_hf_on_the_command_line_writes_the_card(evaluated, tmp_path):
    from typer.testing import CliRunner

    from fmforge.cli import app

    res = CliRunner().invoke(app, ["export", "hf", str(evaluated.root), str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert str(evaluated.root.resolve()) not in (tmp_path / "a" / "README.md").read_text()
    res = CliRunner().invoke(app, ["export", "hf", str(evaluated.root), str(tmp_path / "b"), "--card-paths"])
    assert res.exit_code == 0, res.output
    assert str(evaluated.root.resolve()) in (tmp_path / "b" / "README.md").read_text()
