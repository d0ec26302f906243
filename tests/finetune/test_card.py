"""The model cards of a fine-tune: the LoRA adapter's (as PEFT writes one:
``library_name: peft``, ``base_model``), the merged model's and a full
fine-tune's, each naming the base model, the data and the method, read back with
huggingface_hub's parser, with no path of this machine in them."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from typer.testing import CliRunner

from fmforge.cli import app

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory, ft):
    d = tmp_path_factory.mktemp("carddata")
    rng = random.Random(3)
    return (ft.write_jsonl(d / "tickets.jsonl", [ft.reverse_example(rng) for _ in range(24)] + ["{not json"]),
            ft.write_jsonl(d / "tickets-val.jsonl", [ft.reverse_example(rng) for _ in range(4)]))


def _no_machine_paths(text: str, *roots) -> None:
    import tempfile
    from pathlib import Path

    for p in [*(str(r) for r in roots), tempfile.gettempdir() + "/", str(Path.home()) + "/", "/tmp/", "/home/"]:
        assert p not in text, p


def _finetune(tmp_path, monkeypatch, tiny_base, data, name: str, *overrides: str) -> dict:
    """`fmforge finetune CONFIG` as a user runs it; the summary it records."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "finetune": {
        "base": str(tiny_base), "data": [str(data[0])], "val_data": [str(data[1])], "seq_len": 64,
        "micro_batch_size": 8, "max_steps": 2, "device": "cpu", "dtype": "float32", "tensorboard": False,
        "max_bad_fraction": 0.1, "lora": {"r": 8, "alpha": 16}}}))
    res = CliRunner().invoke(app, ["finetune", f"{name}.yaml", *overrides])
    assert res.exit_code == 0, res.output
    return json.loads((tmp_path / "runs" / name / "finetune" / "summary.json").read_text())


def test_the_adapter_and_the_merged_model_name_their_base(tmp_path, monkeypatch, tiny_base, data):
    summary = _finetune(tmp_path, monkeypatch, tiny_base, data, "support-bot")
    adapter = tmp_path / "runs" / "support-bot" / "finetune" / "adapter"

    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft"  # as PEFT writes an adapter's card
    assert card.data.base_model == "tiny-llama"  # the base's name, not its path
    assert card.data.pipeline_tag == "text-generation"
    assert {"fmforge", "lora", "base_model:adapter:tiny-llama"} <= set(card.data.tags)
    assert "tickets.jsonl" in card.text and "tickets-val.jsonl" in card.text
    assert "LoRA" in card.text and "r = 8" in card.text
    assert f"{summary['trainable_params']:,}" in card.text
    assert f"{summary['train_examples']:,}" in card.text
    _no_machine_paths((adapter / "README.md").read_text(), tiny_base, tmp_path)

    res = CliRunner().invoke(app, ["finetune", "merge", str(adapter), "merged"])
    assert res.exit_code == 0, res.output
    merged = tmp_path / "merged"
    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.base_model == "tiny-llama"
    assert "fmforge" in card.data.tags
    assert "merged" in card.text and "tickets.jsonl" in card.text and "LoRA" in card.text
    _no_machine_paths((merged / "README.md").read_text(), tiny_base, tmp_path)


def test_a_merge_of_an_adapter_made_elsewhere_names_its_base(tmp_path, monkeypatch, tiny_base):
    """An adapter peft wrote without fmforge (its README is PEFT's own, whose
    base_model is a path): the merged card names the base by its name."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(tmp_path / "their-adapter"))
    AutoTokenizer.from_pretrained(str(tiny_base)).save_pretrained(str(tmp_path / "their-adapter"))
    assert str(tiny_base) in (tmp_path / "their-adapter" / "README.md").read_text()  # PEFT's card: a path
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["finetune", "merge", "their-adapter", "merged"])
    assert res.exit_code == 0, res.output
    merged = tmp_path / "merged"
    card = ModelCard.load(merged / "README.md")
    assert card.data.base_model == "tiny-llama"
    assert "r = 4" in card.text and "`q_proj`, `v_proj`" in card.text
    _no_machine_paths((merged / "README.md").read_text(), tiny_base, tmp_path)


def test_a_full_fine_tune_names_its_base(tmp_path, monkeypatch, tiny_base, data):
    _finetune(tmp_path, monkeypatch, tiny_base, data, "full", "finetune.method=full", "finetune.max_steps=1")
    model = tmp_path / "runs" / "full" / "finetune" / "model"
    card = ModelCard.load(model / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == "tiny-llama"
    assert "full fine-tuning" in card.text and "tickets.jsonl" in card.text
    _no_machine_paths((model / "README.md").read_text(), tiny_base, tmp_path)


def test_a_base_in_the_hugging_face_cache_is_named_by_its_hub_id(tmp_path):
    """The cache's folder for a repository is huggingface_hub's own naming."""
    from huggingface_hub.file_download import repo_folder_name

    from fmforge.export.card import base_model_name

    snapshot = tmp_path / "hub" / repo_folder_name(repo_id="meta-llama/Llama-3.2-1B", repo_type="model") \
        / "snapshots" / "4e20de362430cd3b72f300e6b0f18e50e7166e08"
    snapshot.mkdir(parents=True)
    assert base_model_name(snapshot) == "meta-llama/Llama-3.2-1B"
    assert base_model_name(tmp_path / "models" / "Llama-3.2-1B") == "Llama-3.2-1B"
