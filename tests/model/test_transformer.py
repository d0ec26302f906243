"""fmforge's Transformer is Hugging Face's Llama: the same weights give the same logits.

The model fuses q/k/v into one projection and gate/up into another for speed;
these tests split the fused matrices the way the model's docstrings say (the
mapping export uses) and compare logits with transformers.LlamaForCausalLM, so
a speed change that alters the architecture fails here.
"""

from __future__ import annotations

import pytest
import torch

from fmforge.config import ModelConfig
from fmforge.model.counting import count_parameters
from fmforge.model.transformer import Transformer

transformers = pytest.importorskip("transformers")


def llama_twin(model: Transformer):
    """A LlamaForCausalLM with the same architecture and a copy of ``model``'s
    weights, through the export's one weight mapping."""
    from fmforge.export.mapping import to_transformers

    return to_transformers(model)


@pytest.mark.parametrize("kw", [
    {"n_heads": 6, "n_kv_heads": 2, "tie_embeddings": True},  # GQA, the benchmark's shape
    {"n_heads": 4, "n_kv_heads": 4, "tie_embeddings": False, "rope_theta": 500_000.0},  # MHA
    {"n_heads": 4, "n_kv_heads": 1, "d_ff": 80, "norm_eps": 1e-6},  # MQA, explicit ffn
], ids=["gqa-tied", "mha-untied", "mqa"])
def test_logits_equal_hf_llama(kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=48, n_layers=2, seq_len=32, **kw)
    model = Transformer(cfg).eval()
    # Norm weights are ones at init: perturb them so a misplaced norm weight shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    hf = llama_twin(model)
    tokens = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    with torch.no_grad():
        ours, theirs = model(tokens), hf(input_ids=tokens).logits
    assert ours.shape == (3, cfg.seq_len, cfg.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_loss_equals_hf_and_gradients_flow():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, seq_len=16)
    model = Transformer(cfg)
    hf = llama_twin(model)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[0, :3] = -100  # ignored targets
    loss = model(x, y)
    assert loss.dim() == 0
    expected = hf(input_ids=x, labels=y, shift_labels=y).loss
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fused_weights_keep_the_parameter_count_and_blocks_stay_a_module_list():
    cfg = ModelConfig(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2)
    model = Transformer(cfg)
    assert model.num_parameters() == count_parameters(cfg).total == 12_587_904
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == cfg.n_layers


def test_shorter_sequences_and_a_too_long_one():
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, seq_len=8)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        full, prefix = model(tokens), model(tokens[:, :5])
    # Causal: a prefix's logits do not depend on the tokens after it.
    torch.testing.assert_close(prefix, full[:, :5], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
