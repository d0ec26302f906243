"""Decoding with the KV cache computes what the full forward pass computes."""

from __future__ import annotations

import pytest
import torch

from fmforge.inference.engine import GenerationRequest
from fmforge.inference.decode import forward_cached
from fmforge.inference.kv_cache import KVCache


def greedy_by_recomputation(model, prompt_ids: list[int], n: int) -> list[int]:
    """The reference: the whole context through ``forward`` for every token."""
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt_ids):]


@pytest.mark.parametrize("kw", [{"n_heads": 4, "n_kv_heads": 2}, {"n_heads": 4, "n_kv_heads": 4},
                                {"n_heads": 4, "n_kv_heads": 1, "rope_theta": 500.0}],
                         ids=["gqa", "mha", "mqa"])
def test_cached_logits_equal_full_forward(kw, make_model):
    """Prefill then one position at a time: every step's logits are those of the
    full forward at that position, for GQA, MHA and MQA."""
    model = make_model(101, **kw)
    tokens = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)[0]
    cache = KVCache(model.cfg, rows=2, length=40)
    got = [forward_cached(model, tokens[:, :10], cache, rows=[1], start=[0])[0]]
    for p in range(10, 40):
        got.append(forward_cached(model, tokens[:, p:p + 1], cache, rows=[1], start=[p])[0])
    torch.testing.assert_close(torch.stack(got), full[9:], atol=1e-5, rtol=1e-5)
    # GQA: the cache holds only the kv heads.
    assert cache.k[0].shape == (2, model.cfg.kv_heads, 40, model.cfg.head_dim)


def test_cached_logits_with_scattered_rows_and_ragged_lengths(make_model):
    """Three sequences of different lengths in rows 3, 0, 2 of a cache: a batched
    right-padded prefill, a multi-token chunk after a prefix, and batched decode
    steps all match the full forward of each sequence alone."""
    model = make_model(101)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, 101, (n,), generator=g) for n in (30, 20, 24)]
    rows, lengths = [3, 0, 2], [5, 12, 9]
    cache = KVCache(model.cfg, rows=4, length=32)
    padded = torch.zeros((3, max(lengths)), dtype=torch.long)
    for i, n in enumerate(lengths):
        padded[i, :n] = seqs[i][:n]
    out = forward_cached(model, padded, cache, rows, [0, 0, 0], last=[n - 1 for n in lengths])
    with torch.no_grad():
        for i, n in enumerate(lengths):
            torch.testing.assert_close(out[i], model(seqs[i][None, :n])[0, -1], atol=1e-5, rtol=1e-5)
    # One sequence takes a 3-token chunk after its cached prefix.
    out = forward_cached(model, seqs[0][None, 5:8], cache, [3], [5])
    lengths[0] = 8
    with torch.no_grad():
        torch.testing.assert_close(out[0], model(seqs[0][None, :8])[0, -1], atol=1e-5, rtol=1e-5)
    for _ in range(6):  # decode all three together, each at its own position
        tokens = torch.stack([s[n:n + 1] for s, n in zip(seqs, lengths)])
        out = forward_cached(model, tokens, cache, rows, list(lengths))
        lengths = [n + 1 for n in lengths]
        with torch.no_grad():
            for i, n in enumerate(lengths):
                torch.testing.assert_close(out[i], model(seqs[i][None, :n])[0, -1],
                                           atol=1e-5, rtol=1e-5)


def test_cache_grow_keeps_contents(make_model):
    model = make_model(101)
    tokens = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(3))
    cache = KVCache(model.cfg, rows=1, length=8)
    forward_cached(model, tokens[:, :8], cache, [0], [0])
    cache.grow(rows=2, length=16)
    assert (cache.rows, cache.length) == (2, 16)
    out = forward_cached(model, tokens[:, 8:12], cache, [0], [8])
    with torch.no_grad():
        torch.testing.assert_close(out[0], model(tokens)[0, -1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exceed"):
        forward_cached(model, tokens[:, :1], cache, [0], [16])


def test_engine_greedy_equals_recomputation_for_50_tokens(engine, trained):
    prompt = "def alpha(beta"
    ids = trained.tokenizer.encode(prompt, add_special_tokens=False).ids
    expected = greedy_by_recomputation(trained.model, ids, 50)
    [result] = engine.generate([GenerationRequest(prompt=prompt, max_new_tokens=50, temperature=0,
                                                  stop_token_ids=[])])
    assert result.token_ids == expected
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (len(ids), 50)
    assert result.text == trained.tokenizer.decode(expected, skip_special_tokens=True)


def test_training_forward_is_unchanged_by_decoding(make_model):
    """The training path still takes (tokens, targets) and is not affected by a cache."""
    model = make_model(101)
    tokens = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(tokens)
        forward_cached(model, tokens[:1], KVCache(model.cfg, 1, 20), [0], [0])
        torch.testing.assert_close(model(tokens), before, atol=0, rtol=0)
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert model.embed.weight.grad is not None
