"""The commands: fmforge finetune CONFIG, finetune merge, finetune eval, and
fmforge generate on an adapter directory and on the merged model."""

from __future__ import annotations

import json
import random

import yaml
from typer.testing import CliRunner

from fmforge.cli import app


def _base(tmp_path, ft):
    """fmforge's engine needs a vocabulary of at least 260 tokens: the word list padded."""
    words = ft.WORDS + [f"w{i}" for i in range(260)]
    path = tmp_path / "base"
    ft.make_tokenizer(path, words)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                 bos_token_id=None, initializer_range=0.25)).save_pretrained(str(path))
    return path


def test_finetune_merge_eval_generate_from_the_command_line(tmp_path, ft, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _base(tmp_path, ft)
    rng = random.Random(2)
    ft.write_jsonl(tmp_path / "train.jsonl", [ft.reverse_example(rng, chat=False) for _ in range(32)]
                   + ['{"prompt": "bad line"'])
    ft.write_jsonl(tmp_path / "val.jsonl", [ft.reverse_example(rng, chat=False) for _ in range(4)])
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"name": "cust", "finetune": {
        "base": "base", "data": ["train.jsonl"], "val_data": ["val.jsonl"], "seq_len": 64,
        "micro_batch_size": 8, "device": "cpu", "dtype": "float32", "tensorboard": False,
        "max_bad_fraction": 0.1, "lora": {"r": 4}}}))
    runner = CliRunner()
    res = runner.invoke(app, ["finetune", "ft.yaml", "finetune.max_steps=3", "finetune.lr=1e-2"])
    assert res.exit_code == 0, res.output
    adapter = tmp_path / "runs" / "cust" / "finetune" / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    bad = [json.loads(x) for x in (tmp_path / "runs/cust/finetune/bad_lines.jsonl").read_text().splitlines()]
    assert bad == [{"file": str(tmp_path / "train.jsonl"), "line": 33, "reason": bad[0]["reason"]}]
    assert bad[0]["reason"].startswith("not JSON")

    res = runner.invoke(app, ["finetune", "merge", str(adapter), "merged"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "merged" / "config.json").is_file()

    res = runner.invoke(app, ["finetune", "eval", str(adapter), "val.jsonl", "--device", "cpu",
                              "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    adapter_eval = json.loads(res.stdout[res.stdout.index("{"):])
    res = runner.invoke(app, ["finetune", "eval", "merged", "val.jsonl", "--device", "cpu", "--no-accuracy"])
    merged_eval = json.loads(res.stdout[res.stdout.index("{"):])
    assert adapter_eval["examples"] == merged_eval["examples"] == 4
    assert abs(adapter_eval["loss"] - merged_eval["loss"]) < 1e-4
    assert merged_eval["accuracy"] is None and adapter_eval["accuracy"] is not None
    # `fmforge eval chat` is the same evaluation under the eval command
    res = runner.invoke(app, ["eval", "chat", "merged", "val.jsonl", "--no-accuracy"])
    assert res.exit_code == 0, res.output
    assert abs(json.loads(res.stdout[res.stdout.index("{"):])["loss"] - merged_eval["loss"]) < 1e-6

    outs = []
    for target in (str(adapter), "merged"):
        res = runner.invoke(app, ["generate", target, "--prompt", "reverse red blue please",
                                  "--temperature", "0", "--max-new-tokens", "5", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        outs.append(res.stdout)
    assert outs[0] == outs[1]  # the adapter is merged for the engine: the same greedy text

    # QLoRA here (no CUDA): a message, exit 2, no traceback
    res = runner.invoke(app, ["finetune", "ft.yaml", "finetune.method=qlora"])
    assert res.exit_code == 2 and "CUDA" in res.output


def test_an_fmforge_run_as_the_base_is_exported_once(tmp_path, ft, monkeypatch):
    from fmforge.export.hf import import_hf

    monkeypatch.chdir(tmp_path)
    import_hf(_base(tmp_path, ft), tmp_path / "runs" / "mine")  # an fmforge run with a step-0 checkpoint
    rng = random.Random(4)
    ft.write_jsonl(tmp_path / "train.jsonl", [ft.reverse_example(rng) for _ in range(16)])
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"name": "onrun", "finetune": {
        "base": "mine", "data": ["train.jsonl"], "seq_len": 64, "micro_batch_size": 8, "max_steps": 2,
        "device": "cpu", "dtype": "float32", "tensorboard": False}}))
    runner = CliRunner()
    res = runner.invoke(app, ["finetune", "ft.yaml"])
    assert res.exit_code == 0, res.output
    exported = tmp_path / "runs" / "onrun" / "finetune" / "base-hf"
    adapter_conf = json.loads((tmp_path / "runs/onrun/finetune/adapter/adapter_config.json").read_text())
    assert adapter_conf["base_model_name_or_path"] == str(exported.resolve())
    res = runner.invoke(app, ["finetune", "ft.yaml"])  # done already: resumes at the end, no new export
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "runs/onrun/finetune/summary.json").read_text())
    assert summary["trained_steps_this_session"] == 0
