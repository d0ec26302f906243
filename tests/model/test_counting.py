"""The parameter formula equals the instantiated model; the FLOPs formula is 6N + attention."""

import pytest

from fmforge.config import ModelConfig
from fmforge.model.counting import count_parameters, flops_per_token, matmul_params
from fmforge.model.transformer import Transformer


@pytest.mark.parametrize("kw", [
    dict(d_model=64, n_layers=2, n_heads=4),
    dict(d_model=64, n_layers=3, n_heads=4, n_kv_heads=2),
    dict(d_model=96, n_layers=1, n_heads=6, n_kv_heads=1, tie_embeddings=False),
    dict(d_model=128, n_layers=2, n_heads=8, d_ff=200),
])
def test_parameter_count_matches_model(kw):
    cfg = ModelConfig(vocab_size=300, seq_len=32, **kw)
    model = Transformer(cfg)
    assert count_parameters(cfg).total == sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == count_parameters(cfg).total


def test_flops_per_token_formula():
    cfg = ModelConfig(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, seq_len=128)
    n = matmul_params(cfg)
    # 6 FLOPs per matmul weight per token (forward 2, backward 4) + 12·L·d·T attention.
    assert flops_per_token(cfg) == 6 * n + 12 * 2 * 64 * 128
    assert flops_per_token(cfg, training=False) == (6 * n + 12 * 2 * 64 * 128) // 3
    # The tied head still costs a full matmul per token.
    assert n == count_parameters(cfg).total - 1000 * 64 - (2 * 2 + 1) * 64 + 1000 * 64
