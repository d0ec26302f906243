"""Bits per byte is total nats / ln 2 / bytes of exactly the evaluated tokens."""

import math

import numpy as np
import torch

from fmforge.config import ModelConfig
from fmforge.model.transformer import Transformer
from fmforge.model.scoring import score_tokens, sliding_windows


def test_every_token_but_the_first_is_scored_once():
    tokens = np.arange(100)
    for stride in (None, 16, 5, 1):
        windows = list(sliding_windows(tokens, seq_len=16, stride=stride))
        scored = np.concatenate([t[len(t) - n:] for _, t, n in windows])
        assert scored.tolist() == list(range(1, 100)), stride
        # every window's inputs are the tokens before its targets, at most 16 of them
        assert all(len(x) <= 16 and np.array_equal(x + 1, t) for x, t, _ in windows)
    limited = list(sliding_windows(tokens, 16, max_tokens=40))
    assert np.concatenate([t for _, t, _ in limited]).tolist() == list(range(1, 41))
    # with a stride of 4, every target after the first window sees at least 12 tokens
    for x, t, n in list(sliding_windows(tokens, 16, stride=4))[1:]:
        assert len(x) - n >= 12


def test_bits_per_byte_matches_a_manual_computation():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, seq_len=8)
    model = Transformer(cfg)
    tokens = np.random.default_rng(0).integers(0, 50, size=37)
    token_bytes = np.arange(50) % 4 + 1  # pretend token i stands for (i % 4 + 1) bytes
    res = score_tokens(model, tokens, 8, batch_size=3, device=torch.device("cpu"),
                       token_bytes=token_bytes)
    with torch.no_grad():
        nats = 0.0
        # by hand: windows of 8 inputs at 0, 8, 16, ...; the last one shorter
        for start in range(0, 36, 8):
            x = tokens[start: start + 8]
            y = tokens[start + 1: start + 9]
            x = x[: len(y)]
            logits = model(torch.from_numpy(x)[None])[0]
            nats += float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y),
                                                            reduction="sum"))
    assert res.tokens == 36
    assert math.isclose(res.nats, nats, rel_tol=1e-5)
    assert res.bytes == int(token_bytes[tokens[1:]].sum())
    assert math.isclose(res.bits_per_byte, nats / math.log(2) / res.bytes, rel_tol=1e-5)
    assert math.isclose(res.perplexity, math.exp(nats / 36), rel_tol=1e-5)


def test_validation_windows_spread_over_the_whole_split_in_proportion():
    from fmforge.model.scoring import spread_starts

    seq_len, count = 16, 40
    # Two sources back to back, 1 : 3 by tokens (as the val split orders them).
    n_tokens = 4000 * seq_len + 1
    starts = spread_starts(n_tokens, seq_len, count, seed=3)
    assert len(starts) == count and len(set(starts.tolist())) == count
    assert all(s % seq_len == 0 and s + seq_len + 1 <= n_tokens for s in starts)
    first_source = int((starts < 1000 * seq_len).sum())
    assert first_source == 10  # a quarter of the windows from a quarter of the tokens
    # The same windows every time (every validation of a run), others for another seed.
    assert np.array_equal(starts, spread_starts(n_tokens, seq_len, count, seed=3))
    assert not np.array_equal(starts, spread_starts(n_tokens, seq_len, count, seed=4))
    # A split with fewer windows than asked for is scored whole.
    assert spread_starts(10 * seq_len + 1, seq_len, count, seed=3) is None
