"""The one-position decode step (inference/decode.py's lean copy of the blocks'
math, with or without MKL-packed weights) computes what the model's own forward
computes, and the engine falls back to the plain products where torch's MKL
packing is missing or broken."""

from __future__ import annotations

import types

import pytest
import torch

from fmforge.inference.decode import forward_cached
from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.kv_cache import KVCache
from fmforge.inference.packed_weights import PackedWeights

SHAPES = {"gqa": {"d_model": 32, "n_heads": 4, "n_kv_heads": 2},
          "gqa-3-groups": {"d_model": 48, "n_heads": 6, "n_kv_heads": 2, "d_ff": 80}}
# batch -> (cache rows, the sequences' rows, prompt lengths)
BATCHES = {"1": (5, [3], [7]),
           "2-one-apart": (4, [2, 0], [6, 5]),  # the shorter one position behind: it still needs the mask
           "8-aligned": (10, [2, 3, 4, 5, 6, 7, 8, 9], [6] * 8),  # no mask; rows read as a view
           "8-ragged": (10, [9, 1, 4, 0, 7, 2, 5, 8], [3, 11, 6, 9, 4, 12, 5, 8])}  # mask; gathered rows
STEPS = 6


def random_model(make_model, shape: str, tied: bool, seed: int):
    """Every weight random, norm weights too (at 1 a skipped norm weight would go unseen)."""
    model = make_model(97, seed=seed, tie_embeddings=tied, **SHAPES[shape])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    assert (model.lm_head.weight is model.embed.weight) == tied
    return model


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_decode_steps_equal_the_models_forward(make_model, shape, tied, batch, packed):
    """A right-padded prefill, then STEPS one-position steps of every sequence at
    its own position: each step's logits are the full forward's at that position.

    Tolerance 1e-5 in float32: the two paths do the same operations and differ
    only in summation order (the packed MKL kernel, (batch, features) rows
    against (batch, seq, features), the residual added inside the product), which
    moves these logits (|logit| up to 7) by at most 5.4e-6; a slip in the math (a
    wrong position, mask, cache row or norm weight) moves them by 1e-2 or more."""
    if packed and not PackedWeights.supported(make_model(97)):
        pytest.skip("needs float32 weights on a CPU and working MKL packing")
    model = random_model(make_model, shape, tied, seed=len(batch) + 7 * tied)
    n_rows, rows, lengths = BATCHES[batch]
    gen = torch.Generator().manual_seed(11)
    seqs = [torch.randint(0, 97, (n + STEPS,), generator=gen) for n in lengths]
    with torch.no_grad():
        full = [model(s[None])[0] for s in seqs]  # (n + STEPS, vocab) each
    cache = KVCache(model.cfg, rows=n_rows, length=max(lengths) + STEPS)
    padded = torch.zeros((len(seqs), max(lengths)), dtype=torch.long)
    for i, n in enumerate(lengths):
        padded[i, :n] = seqs[i][:n]
    forward_cached(model, padded, cache, rows, [0] * len(seqs), last=[n - 1 for n in lengths])
    weights = PackedWeights(model) if packed else None
    lengths = list(lengths)
    for _ in range(STEPS):
        tokens = torch.stack([s[n:n + 1] for s, n in zip(seqs, lengths)])
        out = forward_cached(model, tokens, cache, rows, lengths, packed=weights)
        expected = torch.stack([f[n] for f, n in zip(full, lengths)])
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        lengths = [n + 1 for n in lengths]


def _boom(*args, **kwargs):
    raise RuntimeError("mkl says no")


# Stand-ins for torch.ops.mkl: a build without the ops, one whose ops fail, and
# one whose ops compute something else.
BROKEN_MKL = {
    "missing": (types.SimpleNamespace(), "missing"),
    "failing": (types.SimpleNamespace(_mkl_reorder_linear_weight=_boom, _mkl_linear=_boom),
                "mkl says no"),
    "wrong": (types.SimpleNamespace(_mkl_reorder_linear_weight=lambda w, b: w,
                                    _mkl_linear=lambda x, p, w, add, b: x @ w.t() + 1),
              "wrong product"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_MKL))
def test_without_working_mkl_packing_the_engine_uses_the_plain_products(trained, monkeypatch,
                                                                         broken):
    model = trained.model
    prompt_ids = trained.tokenizer.encode("def alpha(beta", add_special_tokens=False).ids
    tokens = torch.tensor([prompt_ids + [5, 17, 42, 8]])
    with torch.no_grad():
        full = model(tokens)[0]
    fake, reason = BROKEN_MKL[broken]
    hasattr(torch.ops, "mkl")  # torch.ops creates its namespaces on first use
    monkeypatch.setattr(torch.ops, "mkl", fake)
    assert reason in PackedWeights.unavailable(model)
    with pytest.raises(ValueError, match=reason):
        Engine(trained, pack_weights=True)
    engine = Engine(trained)  # pack_weights unset: the plain products, no error
    assert engine.packed is None
    n = len(prompt_ids)
    cache = KVCache(model.cfg, rows=1, length=tokens.shape[1])
    got = [forward_cached(model, tokens[:, :n], cache, [0], [0], packed=engine.packed)[0]]
    for p in range(n, tokens.shape[1]):
        got.append(forward_cached(model, tokens[:, p:p + 1], cache, [0], [p], packed=engine.packed)[0])
    torch.testing.assert_close(torch.stack(got), full[n - 1:], atol=1e-5, rtol=1e-5)
    [result] = engine.generate([GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=12,
                                                  temperature=0, stop_token_ids=[])])
    monkeypatch.undo()
    [reference] = Engine(trained).generate([GenerationRequest(
        prompt_ids=prompt_ids, max_new_tokens=12, temperature=0, stop_token_ids=[])])
    assert result.token_ids == reference.token_ids


def test_packing_is_refused_for_weights_it_cannot_serve(make_model):
    model = make_model(97).to(torch.bfloat16)
    assert "float32" in PackedWeights.unavailable(model)
