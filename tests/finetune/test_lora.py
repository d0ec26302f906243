"""LoRA through peft: what trains, what is saved, merging, resume, QLoRA's error."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from fmforge.finetune.stage import run_finetune


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, ft):
    d = tmp_path_factory.mktemp("small")
    rng = random.Random(1)
    return (ft.write_jsonl(d / "train.jsonl", [ft.reverse_example(rng) for _ in range(48)]),
            ft.write_jsonl(d / "val.jsonl", [ft.reverse_example(rng) for _ in range(8)]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ft, tiny_base, small_data):
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = ft.finetune_config(out, tiny_base, [small_data[0]], [small_data[1]], max_steps=6, lr=1e-2,
                             checkpoint_every=3)
    return cfg, run_finetune(cfg)


def test_only_lora_parameters_change_and_the_base_is_bit_identical(trained, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, summary = trained
    adapter = cfg.run_dir / "finetune" / "adapter"
    assert summary["output"] == str(adapter.resolve())
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    # peft initialises B to zero: a nonzero B means the adapter trained.
    assert any(v.abs().max() > 0 for k, v in saved.items() if ".lora_B." in k)
    # The count printed before training: adapters of rank 8 on 7 projections × 2 layers.
    assert summary["trainable_params"] == sum(v.numel() for v in saved.values())
    assert 0 < summary["trainable_share"] < 0.5
    # peft's own loading of the adapter; its base weights are the base file's, bit for bit.
    base_file = load_file(str(tiny_base / "model.safetensors"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(adapter))
    base_state = model.get_base_model().state_dict()
    for name, want in base_file.items():
        got = base_state.get(name) if name in base_state else base_state[name.replace(".weight", ".base_layer.weight")]
        assert torch.equal(got, want), name
    # and the checkpoints hold only the adapters (not the base again)
    ck = load_file(str(cfg.run_dir / "finetune" / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all("lora_" in k for k in ck)


def test_the_frozen_base_does_not_move_during_training(tiny_base, ft, small_data, tmp_path):
    from fmforge.finetune.data import ExampleLoader, ensure_chat_template, read_examples, tokenize_examples, unpacked, ReadReport
    from fmforge.finetune.lora import add_adapters, load_base
    from fmforge.finetune.trainer import LoopSettings, run_loop
    from fmforge.rundir import RunDir
    from transformers import AutoTokenizer

    cfg = ft.finetune_config(tmp_path / "run", tiny_base, [small_data[0]], max_steps=3, lr=1e-2).finetune
    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    ensure_chat_template(tok, "auto")
    model = load_base(tiny_base, "lora", torch.device("cpu"), torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = add_adapters(model, cfg)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    exs, _ = read_examples(small_data[0])
    loader = ExampleLoader(unpacked(tokenize_examples(tok, exs, 64, ReadReport())), 8, 1, 0, 1)
    run_loop(model, loader, cfg.train_view(3), RunDir(tmp_path / "ft"),
             LoopSettings(3, 1, 0, "x", torch.device("cpu"), "float32"))
    after = model.get_base_model().state_dict()
    for name, t in before.items():
        key = name if name in after else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(after[key], t), name
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert moved and all("lora_" in n for n in moved)


def test_merged_logits_equal_base_plus_adapter(trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from fmforge.finetune.merge import adapter_base, merge_adapter

    cfg, _ = trained
    adapter = cfg.run_dir / "finetune" / "adapter"
    out = merge_adapter(adapter, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text()) or \
        (out / "chat_template.jinja").is_file()
    ids = torch.randint(0, 20, (3, 12))
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(adapter_base(adapter)))
        with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(adapter_base(adapter))).eval()(input_ids=ids).logits
    assert (merged - with_adapter).abs().max() < 1e-4
    assert (merged - plain).abs().max() > 1e-3  # the adapter did change the model


@pytest.mark.slow
def test_a_killed_finetune_resumes_with_identical_losses(tiny_base, ft, small_data, tmp_path, monkeypatch):
    import fmforge.finetune.trainer as trainer
    from fmforge.rundir import read_metrics

    settings = dict(max_steps=6, lr=1e-2, checkpoint_every=2, lora={"dropout": 0.1})  # dropout: RNG restored too
    whole = ft.finetune_config(tmp_path / "whole", tiny_base, [small_data[0]], **settings)
    run_finetune(whole)
    expected = [(r["step"], r["loss"]) for r in read_metrics(whole.run_dir / "finetune" / "metrics.jsonl")]
    assert [s for s, _ in expected] == [1, 2, 3, 4, 5, 6]

    cut = ft.finetune_config(tmp_path / "cut", tiny_base, [small_data[0]], **settings)
    real_lr_at = trainer.lr_at

    def dies_in_step_5(step, *a):
        if step == 4:  # the fifth step: after the step-4 checkpoint, before step 5 is saved
            raise SystemExit("killed")
        return real_lr_at(step, *a)

    monkeypatch.setattr(trainer, "lr_at", dies_in_step_5)
    with pytest.raises(SystemExit):
        run_finetune(cut)
    monkeypatch.setattr(trainer, "lr_at", real_lr_at)
    summary = run_finetune(cut)
    assert summary["trained_steps_this_session"] == 2
    got = [(r["step"], r["loss"]) for r in read_metrics(cut.run_dir / "finetune" / "metrics.jsonl")]
    assert got == expected


def test_qlora_without_cuda_fails_before_anything_loads(tmp_path, ft, small_data, monkeypatch):
    import transformers

    from fmforge.finetune.lora import QLoRAUnavailable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_loading)
    cfg = ft.finetune_config(tmp_path / "q", tmp_path / "no-such-base", [small_data[0]], method="qlora")
    with pytest.raises(QLoRAUnavailable, match="needs a CUDA GPU.*finetune.method=lora"):
        run_finetune(cfg)


def test_default_target_modules_per_family(tiny_base):
    from fmforge.finetune.lora import default_target_modules

    assert default_target_modules("llama") == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                               "up_proj", "down_proj"]
    assert default_target_modules("qwen2") == default_target_modules("mistral") == default_target_modules("llama")
    assert default_target_modules("phi3") == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert default_target_modules("something-new") == "all-linear"


def test_plan_actual_checks_the_customize_row_against_the_measured_run(trained):
    from fmforge.hardware import get_hardware
    from fmforge.plan.actual import compare_customize_to_actual
    from fmforge.plan.command import PlanOptions, plan_command

    cfg, summary = trained
    cmp = compare_customize_to_actual(cfg.run_dir)
    rows = {r["metric"]: r for r in cmp["rows"]}
    assert rows["tokens_per_s"]["actual"] == summary["tokens_per_s"]
    assert rows["peak_memory_gb"]["actual"] == summary["peak_memory_bytes"] / 1e9
    assert rows["wall_s"]["actual"] == summary["wall_s"]
    # the prediction by hand: 4·N through the frozen base + attention + 6 per adapter parameter
    # d 64, 2 layers, MLP 128, 2 of 4 heads for k/v (32 wide), vocabulary 21, untied head, T 64
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128
    matmul = 2 * per_layer + 21 * 64  # the head is a matmul, the embedding lookup is not
    attention = 12 * 2 * 64 * 64  # PaLM: 12·L·d·T for QK^T and AV, forward and backward
    adapters = 2 * 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)  # r·(d_in + d_out) each
    assert adapters == summary["trainable_params"] == 16_384
    fpt = 4 * matmul + attention + 6 * adapters
    hw = get_hardware("cpu")
    want = hw.peak_flops * rows["mfu"]["predicted"] / fpt
    assert abs(rows["tokens_per_s"]["predicted"] - want) / want < 0.02
    # `fmforge plan --actual RUN` on a run with only a finetune shows the customize table
    out = plan_command(PlanOptions(actual=str(cfg.run_dir)))
    assert set(out.data) == {"customize"}
