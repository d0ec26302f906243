"""The sizing rule at its boundary: Hoffmann et al. 2022's compute-optimal ratio
read as docs/planner.md states it, "the largest shape that still trains on at
least 20 tokens per non-embedding parameter", so a shape given exactly 20 is
chosen. The counts are worked out by hand (d_model 96: 2 layers, 221,664
non-embedding parameters; d_model 64: 106,816, as tests/plan/test_autosize_rules.py
has them)."""

from __future__ import annotations

from fmforge.hardware import get_hardware
from fmforge.plan.autosize import size_model

A10G = get_hardware("a10g")


def test_a_shape_given_exactly_twenty_tokens_per_parameter_is_chosen():
    # 34,635 steps x 1 sequence x 128 tokens = 4,433,280 = 20 x 221,664: the step
    # cap binds (ten hours on an A10G would train far more), exactly 20 for d=96
    at = size_model(A10G, 36_000, mfu=0.3, max_steps=34_635, micro_batch=1, seq_len=128)
    assert (at.d_model, at.tokens, at.non_embedding_params) == (96, 4_433_280, 221_664)
    # one step fewer: 128 tokens short of 20 per parameter, so the shape below
    under = size_model(A10G, 36_000, mfu=0.3, max_steps=34_634, micro_batch=1, seq_len=128)
    assert (under.d_model, under.tokens) == (64, 4_433_152)
