"""The one parameter/FLOPs counter against outside anchors: instantiated models
(fmforge's and transformers'), published parameter counts, and the FLOPs torch
itself dispatches (torch.utils.flop_counter)."""

import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fmforge.config import ModelConfig
from fmforge.model.counting import (
    Architecture,
    ArchitectureError,
    count_parameters,
    count_params,
    flops_per_token,
    from_hf_config,
    from_model_config,
    lora_flops_per_token,
    lora_params,
    train_flops_per_token,
)
from fmforge.model.transformer import Transformer

# Published sizes (model cards / `sum(p.numel())` of the released checkpoints).
PUBLISHED = {
    "Llama-2-7B": ({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
                    "max_position_embeddings": 4096, "tie_word_embeddings": False}, 6_738_415_616),
    "Llama-2-70B": ({"model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                     "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,
                     "max_position_embeddings": 4096}, 68_976_648_192),
    "Mistral-7B-v0.1": ({"model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32,
                         "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                         "vocab_size": 32000, "max_position_embeddings": 32768}, 7_241_732_096),
    "Qwen2-7B": ({"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                  "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
                  "max_position_embeddings": 32768, "tie_word_embeddings": False}, 7_615_616_512),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_counts(name):
    config, published = PUBLISHED[name]
    assert count_params(from_hf_config(config)).total == published


def test_llama2_7b_from_an_fmforge_config_and_a_config_file(tmp_path):
    import json

    cfg = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008, seq_len=4096,
                      tie_embeddings=False)
    assert count_parameters(cfg).total == 6_738_415_616
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED["Llama-2-7B"][0]))
    assert count_params(from_hf_config(tmp_path)).total == 6_738_415_616  # a directory holding config.json


def _random_configs(n=10, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        head_dim, n_heads = rng.choice([8, 16]), rng.choice([2, 4, 6, 8])
        kv = {0: n_heads, 1: 1, 2: n_heads // 2}[i % 3]  # MHA, MQA, GQA
        out.append(ModelConfig(
            vocab_size=rng.randint(50, 700), d_model=head_dim * n_heads, n_layers=rng.randint(1, 3),
            n_heads=n_heads, n_kv_heads=kv, d_ff=rng.choice([None, rng.randint(8, 200)]),
            seq_len=rng.choice([16, 32]), tie_embeddings=bool(i % 2)))
    return out


@pytest.mark.parametrize("cfg", _random_configs(),
                         ids=lambda c: f"d{c.d_model}h{c.n_heads}kv{c.kv_heads}t{int(c.tie_embeddings)}")
def test_counts_equal_the_instantiated_model_and_torch_flop_counter(cfg):
    """Parameters: sum(p.numel()) (a tied head counted once). FLOPs: what torch
    dispatches for one forward + backward, counted on the meta device, equals the
    PaLM convention exactly (6 per matmul weight, 12·L·d_attn·T for attention)."""
    model = Transformer(cfg)
    assert count_parameters(cfg).total == sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        meta = Transformer(cfg)
        x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        meta(x, x).backward()
    assert counter.get_total_flops() == flops_per_token(cfg) * 2 * cfg.seq_len


def test_lora_through_a_frozen_base_matches_torch_flop_counter():
    """With every base weight frozen only activation gradients flow back: what torch
    counts is the LoRA formula without the adapters' own 6 FLOPs per parameter."""
    cfg = ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=32)
    with torch.device("meta"):
        model = Transformer(cfg)
        x = torch.randint(0, 300, (2, 32))
    model.requires_grad_(False)
    model.embed.register_forward_hook(lambda m, i, out: out.requires_grad_())  # adapters below need the gradient
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, x).backward()
    arch = from_model_config(cfg)
    assert counter.get_total_flops() == (lora_flops_per_token(arch, rank=8) - 6 * lora_params(arch, 8)) * 64
    assert lora_flops_per_token(arch, rank=8) < train_flops_per_token(arch)


def test_lora_adapter_counts_match_peft():
    arch = from_hf_config(PUBLISHED["Llama-2-7B"][0])
    # peft's print_trainable_parameters for Llama 2 7B, r=16 on all seven projections
    assert lora_params(arch, 16) == 39_976_960
    assert lora_params(arch, 16, targets="attention") == 16_777_216  # what peft prints for q, k, v, o


@pytest.mark.parametrize("model_type,extra", [
    ("llama", {}),
    ("llama", {"attention_bias": True, "tie_word_embeddings": True}),
    ("mistral", {}),
    ("qwen2", {"tie_word_embeddings": True}),
    ("qwen2", {}),
    ("qwen3", {"head_dim": 32}),
])
def test_hf_config_counts_equal_transformers(model_type, extra):
    transformers = pytest.importorskip("transformers")
    raw = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "intermediate_size": 96, "vocab_size": 300, "max_position_embeddings": 128, **extra}
    try:
        hf_cfg = transformers.AutoConfig.for_model(model_type, **raw)
    except ValueError:
        pytest.skip(f"this transformers has no {model_type}")
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(from_hf_config(hf_cfg.to_dict())).total == expected  # as transformers saves it


def test_conventions_differ_as_their_definitions_say():
    arch = from_hf_config(PUBLISHED["Llama-2-7B"][0])
    pc = count_params(arch)
    palm, kaplan, nd = (train_flops_per_token(arch, c) for c in ("palm", "kaplan", "6nd"))
    assert nd == 6 * pc.total
    # palm counts the untied head's matmul and the full attention square; kaplan neither
    assert palm - kaplan == 6 * (pc.matmul - pc.non_embedding) + 6 * arch.n_layers * arch.d_attn * arch.seq_len
    # attention grows with the context, weights do not
    assert (train_flops_per_token(arch, "palm", seq_len=2 * arch.seq_len) - palm
            == 12 * arch.n_layers * arch.d_attn * arch.seq_len)


def test_bad_architectures_say_what_is_wrong(tmp_path):
    kw = dict(d_model=64, n_layers=1, n_heads=4, n_kv_heads=1, head_dim=16, ffn_dim=8, vocab_size=10, seq_len=8,
              tie_embeddings=True)
    with pytest.raises(ArchitectureError, match="d_model must be > 0"):
        Architecture(**{**kw, "d_model": 0})
    with pytest.raises(ArchitectureError, match="must divide n_heads"):
        Architecture(**{**kw, "n_kv_heads": 3})
    with pytest.raises(ArchitectureError, match="lacks"):
        from_hf_config({"hidden_size": 64})
    with pytest.raises(ArchitectureError, match="does not exist"):
        from_hf_config(tmp_path / "nope.json")
    with pytest.raises(ArchitectureError, match="mixture-of-experts"):
        from_hf_config({**PUBLISHED["Mistral-7B-v0.1"][0], "num_local_experts": 8})
    with pytest.raises(ArchitectureError, match="unknown FLOPs convention 'flops'"):
        train_flops_per_token(from_hf_config(PUBLISHED["Llama-2-7B"][0]), "flops")
    assert issubclass(ArchitectureError, ValueError)
