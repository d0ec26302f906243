"""Bits per byte is total nats / ln 2 / bytes of exactly the evaluated tokens."""

import math

import numpy as np
import pytest
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


def test_token_score_figures_by_hand():
    from fmforge.model.scoring import TokenScore

    s = TokenScore(nats=6.0, tokens=4, bytes=3)
    assert s.loss == 1.5
    assert math.isclose(s.perplexity, math.exp(1.5), rel_tol=1e-12)
    assert math.isclose(s.bits_per_byte, 6.0 / math.log(2) / 3, rel_tol=1e-12)
    assert s.to_dict() == {"nats": 6.0, "tokens": 4, "bytes": 3, "loss": 1.5,
                           "perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte}
    assert TokenScore(nats=6.0, tokens=4, bytes=0).bits_per_byte is None  # bytes unknown
    # A diverged model: perplexity is capped at e**700 instead of overflowing.
    assert TokenScore(nats=1e6, tokens=1, bytes=1).perplexity == math.exp(700)
    assert TokenScore(nats=699.0, tokens=1, bytes=1).perplexity == math.exp(699)


def test_stride_bounds_and_their_message():
    tokens = np.arange(20)
    for bad in (0, -1, 9):
        with pytest.raises(ValueError) as err:
            list(sliding_windows(tokens, 8, stride=bad))
        assert str(err.value) == f"stride must be in 1..8 (the window), got {bad}"
    assert len(list(sliding_windows(tokens, 8, stride=8))) == 3
    assert len(list(sliding_windows(tokens, 8, stride=1))) == 12  # 0..11: the 12th reaches the end
    # Windows by hand for 20 tokens, seq_len 8, stride 4: starts 0, 4, 8, 12; targets
    # 1-8 all new, then 9-12, 13-16, 17-19.
    got = [(int(x[0]), len(x), n) for x, _, n in sliding_windows(tokens, 8, stride=4)]
    assert got == [(0, 8, 8), (4, 8, 4), (8, 8, 4), (12, 7, 3)]
    # max_tokens counts predictions: 10 targets, tokens 1..10.
    got = [(t.tolist(), n) for _, t, n in sliding_windows(tokens, 8, max_tokens=10)]
    assert got == [(list(range(1, 9)), 8), ([9, 10], 2)]
    assert list(sliding_windows(np.arange(1), 8)) == []  # one token predicts nothing


def test_spread_starts_at_the_boundary_and_by_hand():
    from fmforge.model.scoring import spread_starts

    # 10 windows of 4: exactly `count` windows is scored whole, one more is sampled.
    assert spread_starts(4 * 10 + 1, 4, 10, seed=0) is None
    starts = spread_starts(4 * 11 + 1, 4, 10, seed=0)
    assert starts is not None and len(starts) == 10
    # Runs of 11 windows cut into 10: edges 0,1,2,...,9,11; one draw from each run.
    assert all(4 * i <= s <= 4 * (i + 1) for i, s in enumerate(starts[:9]))
    assert starts[9] in (36, 40)
    # 100 windows in 4 runs of 25: every start inside its own run, all different.
    starts = spread_starts(5 * 100 + 1, 5, 4, seed=1)
    assert [int(s) // 5 // 25 for s in starts] == [0, 1, 2, 3]


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, seq_len=8))


def _nll(model, x, y):
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.int64)[None])[0]
        return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y, dtype=torch.int64),
                                                       reduction="sum"))


def test_score_tokens_with_starts_a_stride_autocast_and_training_mode_by_hand():
    model = _tiny_model()
    tokens = np.random.default_rng(1).integers(0, 50, size=40)
    cpu = torch.device("cpu")
    # starts: exactly those windows, each in full.
    res = score_tokens(model, tokens, 8, batch_size=2, device=cpu, starts=np.array([0, 16, 24]))
    want = sum(_nll(model, tokens[s:s + 8], tokens[s + 1:s + 9]) for s in (0, 16, 24))
    assert res.tokens == 24 and math.isclose(res.nats, want, rel_tol=1e-5)
    assert res.bytes == 0
    # stride 4 over 21 tokens (20 targets): the window at 4 scores only its last 4 targets.
    short = tokens[:21]
    res = score_tokens(model, short, 8, batch_size=8, device=cpu, stride=4)
    want = _nll(model, short[0:8], short[1:9])
    for s in (4, 8, 12):
        x, y = short[s:s + 8], short[s + 1:s + 9]
        n = 4  # targets 9-12, 13-16, 17-20
        with torch.no_grad():
            logits = model(torch.as_tensor(x, dtype=torch.int64)[None])[0]
        want += float(torch.nn.functional.cross_entropy(
            logits[len(y) - n:len(y)], torch.as_tensor(y[len(y) - n:], dtype=torch.int64), reduction="sum"))
    assert res.tokens == 20 and math.isclose(res.nats, want, rel_tol=1e-5)
    # batch size 1 and a batch of everything agree (a batch flushes when the length changes).
    a = score_tokens(model, tokens[:30], 8, batch_size=1, device=cpu)
    b = score_tokens(model, tokens[:30], 8, batch_size=64, device=cpu)
    assert a.tokens == b.tokens == 29 and math.isclose(a.nats, b.nats, rel_tol=1e-5)
    # max_tokens
    assert score_tokens(model, tokens, 8, batch_size=4, device=cpu, max_tokens=11).tokens == 11
    # The autocast factory is entered once per batch; the model's mode is put back.
    entered = []

    class Ctx:
        def __enter__(self):
            entered.append(model.training)

        def __exit__(self, *exc):
            return False

    model.train()
    score_tokens(model, tokens[:17], 8, batch_size=1, device=cpu, autocast=Ctx)
    assert entered == [False, False] and model.training
    model.eval()
    score_tokens(model, tokens[:17], 8, batch_size=1, device=cpu)
    assert not model.training


def test_nothing_to_score_is_an_error_naming_the_setting():
    with pytest.raises(ValueError) as err:
        score_tokens(_tiny_model(), np.arange(1), 8, batch_size=2, device=torch.device("cpu"))
    assert str(err.value) == "the held-out split has no tokens to evaluate: raise data.val_fraction"


def test_spread_starts_draws_each_run_independently_and_never_past_the_split():
    from fmforge.model.scoring import spread_starts

    # 43 tokens hold 10 windows of 4 (+1): not 11, so 10 asked for means "score it whole".
    assert spread_starts(43, 4, 10, seed=0) is None
    for n_tokens in range(4 * 12 - 2, 4 * 12 + 3):
        for seed in range(5):
            starts = spread_starts(n_tokens, 4, 10, seed)
            assert all(s + 4 + 1 <= n_tokens for s in starts), (n_tokens, seed)
    # 40 runs of 100 windows: the offsets inside the runs are independent draws, not one
    # offset repeated (which would sample the same phase of every run).
    starts = spread_starts(16 * 4000 + 1, 16, 40, seed=3)
    offsets = starts // 16 - np.arange(40) * 100
    assert ((0 <= offsets) & (offsets < 100)).all()
    assert len(set(offsets.tolist())) > 20


def test_token_files_of_uint16_and_uint32_score_as_int64():
    # The tokenize stage writes uint16 (or uint32) memmaps; the model needs int64 ids.
    model = _tiny_model()
    tokens = np.random.default_rng(4).integers(0, 50, size=30)
    want = score_tokens(model, tokens, 8, batch_size=2, device=torch.device("cpu"))
    for dtype in (np.uint16, np.uint32):
        got = score_tokens(model, tokens.astype(dtype), 8, batch_size=2, device=torch.device("cpu"))
        assert (got.nats, got.tokens) == (want.nats, want.tokens)
