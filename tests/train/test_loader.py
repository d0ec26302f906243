"""The data order: every window once per epoch, a new order each epoch, and the
same batches whatever the number of processes."""

import numpy as np
import pytest

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
