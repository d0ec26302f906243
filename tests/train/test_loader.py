"""The data order: every window once per epoch, a new order each epoch, and the
same batches whatever the number of processes."""

import numpy as np
import pytest
import torch

from fmforge.train.loader import EpochWindowLoader


def _targets(loader, step):
    return [y for m in range(loader.grad_accum) for y in loader.batch(step, m)[1].numpy()]


def test_every_window_is_drawn_exactly_once_per_epoch():
    tokens = np.arange(8 * 30 + 1)  # exactly 30 windows of 8, the last ending at the last token
    loader = EpochWindowLoader(tokens, seq_len=8, micro_batch=3, grad_accum=2, seed=7)
    assert loader.n_windows == 30
    starts = [int(y[0]) - 1 for step in range(5) for y in _targets(loader, step)]  # 5 × 6 = 30
    assert sorted(starts) == [8 * i for i in range(30)]
    # Every token after the first is a target exactly once in the epoch.
    targets = np.concatenate([y for step in range(5) for y in _targets(loader, step)])
    assert sorted(targets.tolist()) == list(range(1, len(tokens)))


def test_the_last_window_ends_at_the_end_of_the_file_and_no_further():
    seq = 8
    for extra in range(seq):  # a file of 8·5 + 1 + extra tokens
        tokens = np.arange(seq * 5 + 1 + extra)
        loader = EpochWindowLoader(tokens, seq_len=seq, micro_batch=5, grad_accum=1, seed=0)
        assert loader.n_windows == 5
        x, y = loader.batch(0, 0)
        assert int(y.max()) == seq * 5  # the last whole window is used ...
        assert int(y.max()) < len(tokens)  # ... and none reads past the file


def test_a_new_order_each_epoch_and_a_pure_function_of_seed_and_step():
    tokens = np.arange(16 * 50 + 1)
    a = EpochWindowLoader(tokens, 16, micro_batch=10, grad_accum=1, seed=1)
    b = EpochWindowLoader(tokens, 16, micro_batch=10, grad_accum=1, seed=1)
    epoch0 = np.concatenate([a.batch(s, 0)[0][:, 0].numpy() for s in range(5)])
    epoch1 = np.concatenate([a.batch(s, 0)[0][:, 0].numpy() for s in range(5, 10)])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist())
    assert epoch0.tolist() != epoch1.tolist()
    # Asked out of order, by a fresh loader (a resumed run), the batches are the same.
    assert np.array_equal(b.batch(7, 0)[0].numpy(), a.batch(7, 0)[0].numpy())
    assert np.array_equal(b.batch(2, 0)[0].numpy(), a.batch(2, 0)[0].numpy())
    c = EpochWindowLoader(tokens, 16, micro_batch=10, grad_accum=1, seed=2)
    assert not np.array_equal(c.batch(0, 0)[0].numpy(), a.batch(0, 0)[0].numpy())


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_the_global_batch_of_a_single_process_run(world):
    tokens = np.arange(4 * 97 + 3)
    single = EpochWindowLoader(tokens, 4, micro_batch=2, grad_accum=world * 2, seed=3)
    for step in (0, 11, 40):
        want = sorted(tuple(w) for w in np.concatenate(
            [single.batch(step, m)[0].numpy() for m in range(world * 2)]))
        got = []
        for rank in range(world):
            r = EpochWindowLoader(tokens, 4, micro_batch=2, grad_accum=2, seed=3, rank=rank,
                                  world_size=world)
            got += [tuple(w) for m in range(2) for w in r.batch(step, m)[0].numpy()]
        assert sorted(got) == want


def test_a_split_shorter_than_one_window_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one window"):
        EpochWindowLoader(np.arange(8), seq_len=8, micro_batch=1, grad_accum=1, seed=0)


def test_window_count_batch_contents_and_epoch_fraction_by_hand():
    # 8·3 + 1 tokens: exactly 3 windows; one more token does not make a fourth.
    for n, windows in ((8 * 3 + 1, 3), (8 * 3 + 8, 3), (8 * 4 + 1, 4), (9, 1)):
        assert EpochWindowLoader(np.arange(n), 8, 1, 1, seed=0).n_windows == windows, n
    tokens = np.arange(1000, 1000 + 8 * 6 + 1)  # values unlike their positions
    loader = EpochWindowLoader(tokens, seq_len=8, micro_batch=2, grad_accum=3, seed=5)
    assert loader.global_batch == 6
    assert loader.epoch_at(0) == 0.0 and loader.epoch_at(1) == 1.0 and loader.epoch_at(3) == 3.0
    half = EpochWindowLoader(tokens, seq_len=8, micro_batch=3, grad_accum=1, seed=5)
    assert half.epoch_at(1) == 0.5 and half.epoch_at(5) == 2.5
    order = loader.order(0)
    assert sorted(order.tolist()) == list(range(6))
    x, y = loader.batch(0, 1)  # micro-step 1 holds samples 2 and 3 of the epoch
    assert x.dtype == torch.int64 and y.dtype == torch.int64
    assert x.shape == (2, 8) and y.shape == (2, 8)
    for row, w in enumerate(order[2:4]):
        start = int(w) * 8
        assert x[row].tolist() == list(range(1000 + start, 1000 + start + 8))
        assert y[row].tolist() == list(range(1001 + start, 1001 + start + 8))
    # Step 1 starts the second epoch, in that epoch's own order.
    x, _ = loader.batch(1, 0)
    assert [int(v) - 1000 for v in x[:, 0]] == [int(w) * 8 for w in loader.order(1)[:2]]
    # Asking for epoch 0 again after epoch 1 gives epoch 0's order back (not a cached one).
    assert np.array_equal(loader.order(0), order)
    assert loader.sample_windows(5, 3).tolist() == [int(order[5]), *loader.order(1)[:2].tolist()]


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_holds_its_slice_of_the_step_in_rank_major_order(world):
    """Rank r's micro-step m is the single-process run's micro-step r·accum + m, window
    for window: the documented layout, not only the same set of windows."""
    tokens = np.arange(4 * 61 + 1)
    accum = 2
    single = EpochWindowLoader(tokens, 4, micro_batch=3, grad_accum=world * accum, seed=9)
    for step in (0, 1, 7):
        for rank in range(world):
            r = EpochWindowLoader(tokens, 4, micro_batch=3, grad_accum=accum, seed=9, rank=rank,
                                  world_size=world)
            assert r.global_batch == single.global_batch
            for m in range(accum):
                assert np.array_equal(r.batch(step, m)[0].numpy(),
                                      single.batch(step, rank * accum + m)[0].numpy()), (step, rank, m)


def test_the_short_split_error_names_the_sizes_and_the_fix():
    with pytest.raises(ValueError) as err:
        EpochWindowLoader(np.arange(8), seq_len=8, micro_batch=1, grad_accum=1, seed=0)
    assert str(err.value) == ("the training split has 8 tokens, fewer than one window of "
                              "model.seq_len+1=9: add data or lower model.seq_len")


def test_batches_over_a_split_of_several_files_are_those_of_its_concatenation():
    """A token split kept as one file per encoded unit: windows straddle the files."""
    from fmforge.tokenizer.tokens import SplitTokens

    rng = np.random.default_rng(5)
    parts = [rng.integers(0, 60_000, n).astype(np.uint16) for n in (37, 0, 5, 61, 1, 90, 12)]
    whole = np.concatenate(parts)
    split = EpochWindowLoader(SplitTokens(parts, np.uint16), 8, micro_batch=3, grad_accum=2, seed=4)
    flat = EpochWindowLoader(whole, 8, micro_batch=3, grad_accum=2, seed=4)
    assert split.n_windows == flat.n_windows == (len(whole) - 1) // 8
    for step in range(3 * split.n_windows // 6):  # three epochs: every window, each boundary crossed
        for m in range(2):
            for a, b in zip(split.batch(step, m), flat.batch(step, m)):
                assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
