"""Decode steps through MKL-packed weights compute what the plain path computes."""

from __future__ import annotations

import pytest
import torch

from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.decode import forward_cached
from fmforge.inference.kv_cache import KVCache
from fmforge.inference.packed_weights import PackedWeights


def test_packed_decode_logits_equal_full_forward(make_model):
    model = make_model(101)
    if not PackedWeights.supported(model):
        pytest.skip("needs float32 weights on a CPU and a torch built with MKL")
    packed = PackedWeights(model)
    tokens = torch.randint(0, 101, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(tokens)[0]
    cache = KVCache(model.cfg, rows=3, length=30)
    got = [forward_cached(model, tokens[:, :10], cache, [2], [0], packed=packed)[0]]
    for p in range(10, 30):
        got.append(forward_cached(model, tokens[:, p:p + 1], cache, [2], [p], packed=packed)[0])
    torch.testing.assert_close(torch.stack(got), full[9:], atol=1e-5, rtol=1e-5)


def test_packed_weights_follow_an_in_place_change(make_model):
    model = make_model(101, seed=1)
    if not PackedWeights.supported(model):
        pytest.skip("needs float32 weights on a CPU and a torch built with MKL")
    packed = PackedWeights(model)
    with torch.no_grad():
        model.blocks[0].mlp.down_proj.weight.mul_(3.0)  # after packing
    tokens = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(6))
    cache = KVCache(model.cfg, rows=1, length=9)
    forward_cached(model, tokens[:, :8], cache, [0], [0])
    out = forward_cached(model, tokens[:, 8:], cache, [0], [8], packed=packed)
    with torch.no_grad():
        torch.testing.assert_close(out[0], model(tokens)[0, -1], atol=1e-5, rtol=1e-5)


def test_engine_with_and_without_packing_agree(trained):
    if not PackedWeights.supported(trained.model):
        pytest.skip("needs float32 weights on a CPU and a torch built with MKL")
    prompt = "def alpha(beta"
    ids = trained.tokenizer.encode(prompt, add_special_tokens=False).ids
    expected = list(ids)
    with torch.no_grad():  # the reference: the whole context through forward for every token
        for _ in range(40):
            expected.append(int(trained.model(torch.tensor([expected]))[0, -1].argmax()))
    expected = expected[len(ids):]
    for pack in (True, False):
        engine = Engine(trained, max_batch=4, pack_weights=pack)
        assert (engine.packed is not None) == pack
        [result] = engine.generate([GenerationRequest(prompt=prompt, max_new_tokens=40,
                                                      temperature=0, stop_token_ids=[])])
        assert result.token_ids == expected


def test_a_one_sequence_decode_step_reads_every_weight_through_its_packed_copy(make_model):
    """The packing's speed-up (benchmarks/README.md, "MKL-packed weights for steps of one sequence") exists only if
    every product of a one-sequence decode step goes through the packed copy. The
    logits are the same either way, so only the ops run show a bypass: one MKL packed
    product per bias-free ``nn.Linear`` of the model (each is used once per step)."""
    from torch import nn
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.packed = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.packed += str(func).startswith("mkl._mkl_linear")
            return func(*args, **(kwargs or {}))

    for name, kw in (("tied", {}), ("untied, grouped keys", {"tie_embeddings": False, "n_kv_heads": 1})):
        model = make_model(101, **kw)
        if not PackedWeights.supported(model):
            pytest.skip("needs float32 weights on a CPU and a torch built with MKL")
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is None]
        packed = PackedWeights(model)
        tokens = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(7))
        cache = KVCache(model.cfg, rows=2, length=9)
        forward_cached(model, tokens[:, :8], cache, [1], [0], packed=packed)
        with Count() as count:
            forward_cached(model, tokens[:, 8:], cache, [1], [8], packed=packed)
        assert count.packed == len(linears), (name, count.packed, len(linears))
