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


def _labelled_copy(evaluated: RunDir, tmp_path: Path, export: dict) -> RunDir:
    """The evaluated run with an ``export:`` section added to its config.yaml, as
    docs/export.md tells a user to label a trained run."""
    import yaml

    copy = RunDir(shutil.copytree(evaluated.root, tmp_path / "labelled"))
    raw = yaml.safe_load(copy.config.read_text())
    raw["export"] = export
    copy.config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


def test_the_export_labels_are_printed_as_written(evaluated, tmp_path):
    """The author, the license and the URL the user wrote appear verbatim (a URL
    lower-cased no longer points where it did), and the commands of the usage
    section run in a shell as printed although the model's name has spaces."""
    import shlex

    label = {"name": "Acme: Code 1M", "license": "apache-2.0", "author": "Acme ML team",
             "source_url": "https://example.org/Models/Acme-Code-1M"}
    out = export_hf(_labelled_copy(evaluated, tmp_path, label), tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.model_name == "Acme: Code 1M"
    assert "Acme ML team" in card.text
    assert "https://example.org/Models/Acme-Code-1M" in card.text
    bash = card.text.split("```bash\n", 1)[1].split("```", 1)[0]
    for line in bash.strip().splitlines():
        words = shlex.split(line)
        if words[:3] == ["fmforge", "export", "gguf"]:
            assert words[3] == "labelled" and words[4].endswith(".gguf") and words[5:] == ["--dtype", "f16"], words
            gguf_file = words[4]
        else:
            assert words[0] == "llama-cli" and words[words.index("-m") + 1] == gguf_file, words


def test_each_lm_eval_result_carries_its_own_few_shot_count(evaluated, tmp_path):
    """Two `fmforge eval harness` runs of the same step with different --num-fewshot:
    each task's model-index entry says the count it was run with, as the Open LLM
    Leaderboard's cards do (dataset.args.num_few_shot)."""
    from fmforge.eval.results import record_harness

    copy = RunDir(shutil.copytree(evaluated.root, tmp_path / "run"))
    step = json.loads(copy.eval_json.read_text())["step"]
    record_harness(copy, step, {"tasks": {"five_shot": {"alias": "five_shot", "acc,none": 0.5}},
                                "config": {"tasks": ["five_shot"], "num_fewshot": 5, "limit": 200,
                                           "n_samples": {"five_shot": {"original": 2376, "effective": 200}}}})
    record_harness(copy, step, {"tasks": {"mmlu_abstract_algebra": {"alias": "  - abstract_algebra",
                                                                     "acc,none": 0.25}},
                                "config": {"tasks": ["mmlu_abstract_algebra"], "num_fewshot": None}})
    out = export_hf(copy, tmp_path / "hf")
    shots = {r.dataset_type: (r.dataset_args or {}).get("num_few_shot")
             for r in ModelCard.load(out / "README.md").data.eval_results if r.dataset_type != "fmforge-heldout"}
    # tiny_mc was run with 0 shots (the fixture), five_shot with 5; the last run left
    # the count to the task's own default, which the record does not know: not stated
    assert shots == {"tiny_mc": 0, "five_shot": 5, "mmlu_abstract_algebra": None}
    names = {r.dataset_type: r.dataset_name for r in ModelCard.load(out / "README.md").data.eval_results}
    assert names["mmlu_abstract_algebra"] == "abstract_algebra"  # lm-eval's indented alias, without its dash
    # the body says a --limit run scored part of the task, and with how many shots
    row = next(ln for ln in ModelCard.load(out / "README.md").text.splitlines() if ln.startswith("| five_shot "))
    assert "| 5 | 200 of 2,376 |" in row, row


def test_the_model_index_is_the_hubs_schema(evaluated, tmp_path):
    """What the Hub reads (hub-docs model-cards, "Evaluation results"): the README
    opens with the YAML block; each result has task.type, dataset.type and .name,
    metrics with type and a numeric value; huggingface_hub's own converters give the
    same model-index back."""
    from huggingface_hub import metadata_load
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    out = export_hf(evaluated, tmp_path / "hf")
    assert (out / "README.md").read_text().startswith("---\n")
    index = metadata_load(out / "README.md")["model-index"]
    for result in index[0]["results"]:
        assert result["task"]["type"] == "text-generation"
        assert result["dataset"]["type"] and result["dataset"]["name"]
        assert all(m["type"] and isinstance(m["value"], float) for m in result["metrics"])
    name, results = model_index_to_eval_results(index)
    assert eval_results_to_model_index(name, results) == index


def test_the_tables_render_as_github_flavoured_markdown(evaluated, tmp_path):
    """The Hub renders a card's body as GitHub-flavoured Markdown, where a '|' splits
    a table's cell even inside a code span: the end-of-document token `<|endoftext|>`
    cut the vocabulary's cell short. Rendered with markdown-it's GFM tables, every
    cell holds what the Markdown source meant."""
    from markdown_it import MarkdownIt  # the dev extra: markdown-it-py[linkify]

    out = export_hf(evaluated, tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    eos = evaluated.tokens_meta()["eos_token"]
    assert "|" in eos  # the case at hand: fmforge's <|endoftext|>
    html = MarkdownIt("gfm-like").render(card.text)
    row = html.split("<td>vocabulary</td>", 1)[1].split("</tr>", 1)[0]
    assert f"<code>{eos.replace('<', '&lt;').replace('>', '&gt;')}</code>" in row, row


def test_an_imported_model_is_not_described_as_trained_here(tiny_runs, tmp_path):
    """`fmforge import hf` then `export hf`: fmforge neither trained the weights nor
    the tokenizer, and does not know how the original was tuned; the card says so
    instead of claiming a tokenizer trained on the run's text and a model never aligned."""
    from fmforge.export.hf import import_hf

    imported = import_hf(export_hf(tiny_runs["gqa-tied"], tmp_path / "elsewhere"), tmp_path / "imported")
    text = ModelCard.load(export_hf(imported, tmp_path / "hf") / "README.md").text
    assert "Imported into fmforge" in text
    assert "trained on the run's training text" not in text
    assert "A pretrained model only" not in text and "held-out figures above" not in text
    assert "the original model's card" in text
