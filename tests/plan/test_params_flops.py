import json
import random

import pytest

from fmforge.config import ModelConfig
from fmforge.model.counting import count_parameters, flops_per_token
from fmforge.model.transformer import Transformer
from fmforge.plan.architecture import (
    count_params,
    from_hf_config,
    from_model_config,
    lora_flops_per_token,
    lora_params,
    train_flops_per_token,
)
from fmforge.plan.compute import estimate_compute, implied_mfu
from fmforge.hardware import get_hardware

LLAMA2_7B_PARAMS = 6_738_415_616
LLAMA2_7B_HF = {
    "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "vocab_size": 32000,
}


def _random_configs(n=12, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        head_dim = rng.choice([8, 16, 32])
        n_heads = rng.choice([1, 2, 4, 6, 8])
        kind = ["mha", "gqa", "mqa"][i % 3]
        kv = {"mha": n_heads, "mqa": 1, "gqa": max(1, n_heads // 2)}[kind]
        if n_heads % kv:
            kv = 1
        out.append(ModelConfig(
            vocab_size=rng.randint(50, 700), d_model=head_dim * n_heads, n_layers=rng.randint(1, 4),
            n_heads=n_heads, n_kv_heads=kv, d_ff=rng.choice([None, rng.randint(8, 200)]),
            multiple_of=rng.choice([8, 32, 64]), seq_len=rng.choice([16, 64]), tie_embeddings=bool(i % 2),
        ))
    return out


@pytest.mark.parametrize("cfg", _random_configs(), ids=lambda c: f"d{c.d_model}h{c.n_heads}kv{c.kv_heads}t{int(c.tie_embeddings)}")
def test_param_count_equals_instantiated_model(cfg):
    model = Transformer(cfg)
    expected = sum(p.numel() for p in model.parameters())  # a tied head is one tensor, counted once
    arch = from_model_config(cfg)
    assert count_params(arch).total == expected
    assert count_params(arch).total == count_parameters(cfg).total
    # the default (PaLM) convention is the trainer's MFU formula
    assert train_flops_per_token(arch) == flops_per_token(cfg)


def test_random_configs_cover_tied_untied_gqa_mqa():
    cfgs = _random_configs()
    assert {c.tie_embeddings for c in cfgs} == {True, False}
    assert any(c.kv_heads == 1 and c.n_heads > 1 for c in cfgs)  # MQA
    assert any(1 < c.kv_heads < c.n_heads for c in cfgs)  # GQA


def test_llama2_7b_published_count_both_paths(tmp_path):
    cfg = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                      seq_len=4096, tie_embeddings=False)
    assert count_params(from_model_config(cfg)).total == LLAMA2_7B_PARAMS
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B_HF))
    arch = from_hf_config(tmp_path)  # a directory holding config.json
    assert count_params(arch).total == LLAMA2_7B_PARAMS
    assert arch.seq_len == 4096 and not arch.tie_embeddings and not arch.qkv_bias


def _tiny_hf(model_type, **extra):
    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 96, "vocab_size": 300, "max_position_embeddings": 128, "model_type": model_type}
    base.update(extra)
    return base


@pytest.mark.parametrize("model_type,extra", [
    ("llama", {}),
    ("llama", {"attention_bias": True, "tie_word_embeddings": True}),
    ("mistral", {}),
    ("qwen2", {"tie_word_embeddings": True}),
    ("qwen2", {}),
])
def test_hf_config_counts_equal_transformers(model_type, extra):
    transformers = pytest.importorskip("transformers")
    raw = _tiny_hf(model_type, **extra)
    hf_cfg = transformers.AutoConfig.for_model(**raw)
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    expected = sum(p.numel() for p in model.parameters())
    # feed the config exactly as transformers would save it
    assert count_params(from_hf_config(hf_cfg.to_dict())).total == expected


def test_llama2_7b_gpu_hours_anchor():
    """Llama 2 7B: 2T tokens in 184,320 A100-80GB GPU-hours (Touvron et al. 2023, Table 2).

    GPU-hours = tokens × FLOPs/token / (MFU × 312 TFLOP/s), so the anchor implies
    MFU = 2e12 × FLOPs/token / (184,320 × 3600 × 312e12), and what that MFU is depends
    on the FLOPs convention:
      * kaplan (6·N_nonembed + 6·L·d·T, causal attention): 0.407 -> the issue's "≈0.40";
        plugging 0.40 gives 187,3xx GPU-hours, +1.6%, inside the issue's 2%.
      * palm (6·N_matmul + 12·L·d·T, the default and the trainer's MFU): 0.445; at 0.40
        it would give +11%, so 0.40 is not the PaLM-convention MFU of this run.
      * 6nd (6·N_total): 0.391.
    """
    a100 = get_hardware("a100-80gb")
    arch = from_hf_config(LLAMA2_7B_HF)
    tokens, anchor = 2e12, 184_320
    implied = {c: implied_mfu(tokens * train_flops_per_token(arch, c), anchor, a100.peak_flops)
               for c in ("palm", "kaplan", "6nd")}
    assert implied["kaplan"] == pytest.approx(0.40, abs=0.01)
    assert implied["palm"] == pytest.approx(0.445, abs=0.002)
    assert implied["6nd"] == pytest.approx(0.391, abs=0.002)
    # plugging the 0.40 into the Kaplan formula reproduces the anchor within 2%
    est = estimate_compute(tokens, train_flops_per_token(arch, "kaplan"), a100, num_gpus=1, mfu=0.40)
    assert est.gpu_hours == pytest.approx(anchor, rel=0.02)
    # and every convention round-trips at its own implied MFU (rounded to 3 digits)
    for conv, m in implied.items():
        est = estimate_compute(tokens, train_flops_per_token(arch, conv), a100, mfu=round(m, 3))
        assert est.gpu_hours == pytest.approx(anchor, rel=0.02)
    # the sanity check has teeth: a 10% error in FLOPs/token would fail it
    bad = estimate_compute(tokens, 1.1 * train_flops_per_token(arch, "kaplan"), a100, mfu=0.40)
    assert bad.gpu_hours != pytest.approx(anchor, rel=0.02)


def test_lora_flops_are_two_thirds_of_full_training_plus_adapters():
    arch = from_hf_config(LLAMA2_7B_HF)
    pc = count_params(arch)
    full = train_flops_per_token(arch)
    lora = lora_flops_per_token(arch, pc.total, rank=16)
    attn = 12 * arch.n_layers * arch.d_attn * arch.seq_len
    assert lora == 4 * pc.matmul + attn + 6 * lora_params(arch, 16)
    assert lora < full
    # LoRA r=16 on all projections of a 7B is ~40M trainable parameters (Hu et al. 2021 scale)
    assert 30e6 < lora_params(arch, 16) < 50e6
    assert lora_flops_per_token(None, 7e9) == 4 * 7e9
