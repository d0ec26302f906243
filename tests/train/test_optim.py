"""Learning-rate schedules, checked against values computed by hand."""

import math

import pytest

from fmforge.config import TrainConfig
from fmforge.train.optim import decay_start, lr_at


def test_cosine_warms_up_then_decays_to_min():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, 100, cfg) == 0.1
    assert lr_at(9, 100, cfg) == 1.0
    # halfway through the decay: 0.1 + 0.9 · (1 + cos(π/2)) / 2 = 0.55
    assert math.isclose(lr_at(55, 100, cfg), 0.55)
    assert math.isclose(lr_at(100, 100, cfg), 0.1)


def test_wsd_holds_then_decays_linearly_over_the_last_fraction():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0,
                      schedule="wsd", decay_fraction=0.2)
    assert decay_start(100, cfg) == 80
    assert [lr_at(s, 100, cfg) for s in (10, 50, 79, 80)] == [1.0, 1.0, 1.0, 1.0]
    assert math.isclose(lr_at(90, 100, cfg), 0.5)
    assert math.isclose(lr_at(99, 100, cfg), 0.05)
    # Before its decay starts, a longer run follows exactly the same rates.
    assert all(lr_at(s, 100, cfg) == lr_at(s, 300, cfg) for s in range(80))


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_warmup_does_not_depend_on_the_step_count(schedule):
    cfg = TrainConfig(max_steps=100, warmup_steps=20, lr=2.0, schedule=schedule)
    assert [lr_at(s, 100, cfg) for s in range(20)] == [lr_at(s, 5000, cfg) for s in range(20)]
    assert lr_at(4, 100, cfg) == 2.0 * 5 / 20


def test_constant_stays_at_lr():
    cfg = TrainConfig(max_steps=100, warmup_steps=0, lr=0.3, schedule="constant")
    assert {lr_at(s, 100, cfg) for s in range(100)} == {0.3}
