"""Sampling against transformers' own logits warpers and hand-computed distributions.

transformers' ``generate(do_sample=True)`` warps the logits with
``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and ``TopPLogitsWarper`` (in that
order), then draws ``torch.multinomial(softmax(scores), 1)``: the same logits and the
same random stream must give the same token here."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fmforge.inference.sampling import filter_logits, sample_token

VOCAB = 40


def _logits(seed: int, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 2.5).to(dtype)


def _hf_warp(logits: torch.Tensor, temperature: float, top_k, top_p) -> torch.Tensor:
    scores = logits.float()[None]
    ids = torch.zeros((1, 1), dtype=torch.long)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores[0]


SETTINGS = [(None, None), (1, None), (5, None), (VOCAB - 1, None), (VOCAB, None), (VOCAB + 10, None),
            (None, 0.05), (None, 0.3), (None, 0.75), (None, 0.95), (None, 0.999), (None, 1.0),
            (10, 0.5), (3, 0.99), (20, 0.2)]


@pytest.mark.parametrize("top_k,top_p", SETTINGS, ids=[f"k{k}-p{p}" for k, p in SETTINGS])
def test_filter_keeps_the_tokens_transformers_keeps(top_k, top_p):
    for seed in range(25):
        logits = _logits(seed)
        ours = filter_logits(logits, top_k, top_p)
        theirs = _hf_warp(logits, 1.0, top_k, top_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), (seed, top_k, top_p)
        kept = torch.isfinite(ours)
        assert torch.equal(ours[kept], logits[kept])  # the kept logits are unchanged
        assert kept.any()


def test_top_p_of_one_keeps_every_token_even_a_negligible_one():
    # In float32 the head's cumulative probability is already 1.0: a nucleus of 1.0 still
    # holds every token, as transformers' TopPLogitsWarper(1.0) keeps them.
    logits = torch.tensor([0.0, -40.0, -45.0, 3.0, -50.0])
    assert torch.isfinite(filter_logits(logits, None, 1.0)).all()
    assert torch.isfinite(_hf_warp(logits, 1.0, None, 1.0)).all()
    assert torch.isfinite(filter_logits(logits, 5, 1.0)).all()


def test_ties_at_the_kth_logit_are_all_kept_as_transformers_does():
    logits = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.5])
    ours = torch.isfinite(filter_logits(logits, 3, None)).tolist()
    assert ours == [True, False, True, True, False]
    assert ours == torch.isfinite(_hf_warp(logits, 1.0, 3, None)).tolist()


def test_top_p_by_hand():
    # probabilities 0.4, 0.3, 0.2, 0.1 in a shuffled order: the nucleus of 0.65 needs the
    # first two (0.4 < 0.65 <= 0.7), of 0.7 + a hair the first three, of 0.35 the first
    p = torch.tensor([0.2, 0.4, 0.1, 0.3])
    kept = lambda out: torch.isfinite(out).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(p.log(), None, 0.65)) == [1, 3]
    assert kept(filter_logits(p.log(), None, 0.71)) == [0, 1, 3]
    assert kept(filter_logits(p.log(), None, 0.35)) == [1]
    assert kept(filter_logits(p.log(), None, 0.999)) == [0, 1, 2, 3]
    assert kept(filter_logits(p.log(), 2, 0.999)) == [1, 3]
    assert kept(filter_logits(p.log(), 3, 0.65)) == [1, 3]


SAMPLED = [(1.0, None, None), (0.7, None, None), (1.6, None, None), (2.0, 5, None), (0.9, None, 0.8),
           (1.3, 8, 0.6), (0.4, None, 0.95)]


@pytest.mark.parametrize("temperature,top_k,top_p", SAMPLED, ids=[f"t{t}-k{k}-p{p}" for t, k, p in SAMPLED])
def test_a_draw_is_transformers_draw_from_the_same_random_stream(temperature, top_k, top_p):
    for seed in range(40):
        logits = _logits(seed)
        ours = sample_token(logits, temperature, top_k, top_p, torch.Generator().manual_seed(seed))
        probs = torch.softmax(_hf_warp(logits, temperature, top_k, top_p), dim=-1)
        theirs = int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))
        assert ours == theirs, (seed, temperature, top_k, top_p)


def test_a_draw_from_half_precision_logits_is_the_same_as_from_their_float32_values():
    for seed in range(40):
        logits = _logits(seed, torch.bfloat16)
        ours = sample_token(logits, 0.8, None, 0.9, torch.Generator().manual_seed(seed))
        probs = torch.softmax(_hf_warp(logits.float(), 0.8, None, 0.9), dim=-1)
        assert ours == int(torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("temperature,top_k,top_p,want", [
    # p = (0.5, 0.3, 0.15, 0.05); temperature T draws in proportion to p ** (1 / T)
    (1.0, None, None, [0.5, 0.3, 0.15, 0.05]),
    (0.5, None, None, [0.25 / 0.365, 0.09 / 0.365, 0.0225 / 0.365, 0.0025 / 0.365]),
    (2.0, None, None, [x ** 0.5 / (0.5 ** 0.5 + 0.3 ** 0.5 + 0.15 ** 0.5 + 0.05 ** 0.5)
                       for x in (0.5, 0.3, 0.15, 0.05)]),
    (1.0, 2, None, [0.625, 0.375, 0, 0]),
    (1.0, None, 0.6, [0.625, 0.375, 0, 0]),
    (1.0, None, 0.9, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
])
def test_draw_frequencies_follow_the_hand_computed_distribution(temperature, top_k, top_p, want):
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)
    n = 4000
    counts = torch.bincount(torch.tensor([sample_token(logits, temperature, top_k, top_p, g)
                                          for _ in range(n)]), minlength=4).double() / n
    for got, p in zip(counts.tolist(), want):
        assert abs(got - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (counts, want)


def test_temperature_zero_is_the_argmax_whatever_the_filters_and_generator():
    for seed in range(10):
        logits = _logits(seed)
        for k, p in [(None, None), (3, 0.5), (1, None)]:
            g = torch.Generator().manual_seed(seed)
            before = g.get_state()
            assert sample_token(logits, 0, k, p, g) == int(logits.argmax())
            assert torch.equal(g.get_state(), before), "greedy draws no random number"
