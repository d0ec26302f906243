"""The sizing rule at its boundary: Hoffmann et al. 2022's compute-optimal ratio
read as docs/planner.md states it, "the largest shape that still trains on at
least 20 tokens per non-embedding parameter", so a shape given exactly 20 is
chosen. The counts are worked out by hand (d_model 96: 2 layers, 221,664
non-embedding parameters; d_model 64: 106,816, as tests/plan/test_autosize_rules.py
has them). Then the context's attention FLOPs, the two-variable law's data bound
at its edge, and the notes a user reads: each states what it claims only when it
is true (docs/planner.md, "Sizing a model for a budget")."""

from __future__ import annotations

import pytest

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


# ---------------------------------------------------------------------------
# The context's attention cost, worked out by hand in PaLM's convention (Chowdhery
# et al. 2022, App. B; docs/planner.md "Its speed"): FLOPs per training token =
# 6·N_matmul + 12·L·d·T, tokens/s = MFU × peak / that, D = tokens/s × 0.95 × seconds.
# With a fixed 1,000-token vocabulary (the tied head is a matmul of 1,000·d):
#   d=64,  L=2, f=192: N_matmul = 2 × (4·64² + 3·64·192) + 1,000·64 = 170,496
#   d=96,  L=2, f=256: N_matmul = 2 × (4·96² + 3·96·256) + 1,000·96 = 317,184
#   T=2048: d=64: 1,022,976 + 12·2·64·2048 = 4,168,704; d=96: 1,903,104 + 4,718,592 = 6,621,696
#   T=256:  d=96: 1,903,104 + 12·2·96·256  = 2,492,928
# An A10G (125 TFLOP/s bf16) at MFU 0.005 for 30 s: 28.5 s of training.

def test_a_longer_context_costs_attention_flops_and_buys_a_smaller_model():
    assert A10G.peak_flops == 125e12
    peak = 0.005 * 125e12
    long = size_model(A10G, 30, mfu=0.005, vocab_size=1000, seq_len=2048)
    # d=64 trains 149,927 tokens/s → 4.27M tokens ≥ 20 × 106,816; d=96 only 94,386/s → 2.69M < 20 × 221,664
    assert long.d_model == 64
    assert long.tokens_per_s == pytest.approx(peak / 4_168_704, rel=1e-12)
    assert long.tokens == pytest.approx(peak / 4_168_704 * 0.95 * 30, rel=1e-12)
    # the same budget at a context of 256: d=96 trains 250,709 tokens/s → 7.15M ≥ 4.43M
    short = size_model(A10G, 30, mfu=0.005, vocab_size=1000, seq_len=256)
    assert short.d_model == 96
    assert short.tokens_per_s == pytest.approx(peak / 2_492_928, rel=1e-12)


# ---------------------------------------------------------------------------
# Under the two-variable law (docs/planner.md, "Data"): a shape must train on 20
# tokens per non-embedding parameter within 4 passes over the data; the largest
# such shape is "a model of at most" 4·D/20 parameters, as the data-limited note
# says. With this law every fed shape gets more than 4 passes in 600 s of an A10G,
# so its prediction counts 4·D tokens for each and the bigger N wins among them.
LAW = {"E": 1.0, "A": 10.0, "alpha": 0.3, "B": 1000.0, "beta": 0.5}


def test_under_the_two_variable_law_a_shape_fed_exactly_by_four_passes_is_chosen():
    # 5 × 221,664 tokens of data: 4 passes = 4,433,280 = exactly 20 × 221,664 (d=96)
    size = size_model(A10G, 600, mfu=0.3, ladder={"law": LAW}, data_tokens=5 * 221_664)
    assert (size.d_model, size.non_embedding_params) == (96, 221_664)
    assert size.notes[0].startswith("data-limited: 1,108,320 tokens of data feed a model of at most "
                                    "221,664 non-embedding parameters")


def test_under_the_two_variable_law_too_little_data_for_any_shape_takes_the_smallest():
    # 1e5 tokens: 4 passes feed 20,000 parameters; no shape is that small, so the smallest
    # (d=64), as the compute-optimal rule does, though the law would rank d=96 lower
    size = size_model(A10G, 600, mfu=0.3, ladder={"law": LAW}, data_tokens=1e5)
    assert size.d_model == 64
    assert size.notes[0].startswith("data-limited: 100,000 tokens of data feed a model of at most 20,000 ")


def test_the_data_limited_note_appears_only_when_the_data_left_a_shape_out():
    # two-variable law, 1e12 tokens: 4 passes feed 2e11 parameters, more than the family's
    # largest shape; 600 s train far less than 4e12 tokens, so no note of any kind
    assert size_model(A10G, 600, mfu=0.3, ladder={"law": LAW}, data_tokens=1e12).notes == []
    # the compute-optimal rule with as much data: nothing either
    assert size_model(A10G, 3600, mfu=0.3, data_tokens=1e12).notes == []
    # 1,000 steps of 16 × 256 = 4,096,000 tokens pick d=64 (d=96 would need 4,433,280); 6e5 tokens
    # of data feed up to 4 × 6e5 / 20 = 120,000 parameters, so d=64 (106,816) is fed: the data
    # left nothing out, and only the repetition (4,096,000 / 600,000 = 6.8 passes) is noted
    size = size_model(A10G, 3600, mfu=0.3, max_steps=1000, micro_batch=16, seq_len=256, data_tokens=6e5)
    assert size.d_model == 64 and size.tokens == 4_096_000
    assert not any("data-limited" in n for n in size.notes)
    assert len(size.notes) == 1


def test_the_repetition_note_names_the_chosen_model_and_its_epochs():
    # docs/planner.md: "When the chosen model, trained for the whole budget, would repeat its
    # data more than 4 times, ... say so, naming the epochs and the data's size"
    size = size_model(A10G, 3600, mfu=0.3, max_steps=1000, micro_batch=16, seq_len=256, data_tokens=6e5)
    (note,) = size.notes
    assert note.startswith("the chosen model, trained for the whole budget, would repeat its data 6.8 times "
                           "(4.1M tokens over 600k of data")


# ---------------------------------------------------------------------------
# "If even the smallest shape gets fewer tokens, it is chosen with a note"
# (docs/planner.md): the note names the rule and what to change.

def test_a_budget_too_short_for_the_smallest_shape_says_to_give_more_minutes():
    # MFU 0.001, 1,000-token vocabulary: d=64 trains 1.25e11 / 1,416,192 = 88,264 tokens/s,
    # 838,516 tokens in 9.5 s: fewer than 20 × 106,816 = 2,136,320
    size = size_model(A10G, 10, mfu=0.001, vocab_size=1000)
    assert size.d_model == 64 and size.tokens == pytest.approx(838_516, abs=1)
    (note,) = size.notes
    assert note.startswith("the budget is too small for even the smallest shape at 20 tokens per "
                           "non-embedding parameter: it trains on fewer tokens than the rule asks")
    assert note.endswith("; give more minutes")
    assert "max_steps" not in note



def test_a_step_cap_too_small_for_the_smallest_shape_says_to_raise_max_steps_not_the_minutes():
    # an hour of an A10G trains billions of tokens, but train.max_steps = 1 caps the run at one
    # step of 16 × 256 = 4,096 tokens: more minutes would change nothing
    size = size_model(A10G, 3600, mfu=0.3, max_steps=1)
    assert size.d_model == 64 and size.tokens == 4096
    (note,) = size.notes
    assert note.startswith("the budget is too small for even the smallest shape at 20 tokens per "
                           "non-embedding parameter")
    assert "more minutes" not in note
    assert note.endswith("; raise train.max_steps (it caps the training at 4,096 tokens)")
    # the advice is the smallest shape's: 30 s at a context of 2048 (above) give d=64 its 20 tokens
    # per parameter though not d=96, so a one-step cap of 2,048 tokens is all that stops it
    capped = size_model(A10G, 30, mfu=0.005, vocab_size=1000, seq_len=2048, max_steps=1, micro_batch=1)
    assert capped.d_model == 64 and capped.tokens == 2048
    assert capped.notes[0].endswith("; raise train.max_steps (it caps the training at 2,048 tokens)")
    # a cap of exactly 20 x 106,816 = 16,690 steps x 128 tokens allows what the rule asks: only the
    # time is short (d=64 at 128: 1.25e11 / (1,022,976 + 12·2·64·128) x 9.5 s = 973,700 tokens)
    exact = size_model(A10G, 10, mfu=0.001, vocab_size=1000, seq_len=128, micro_batch=1, max_steps=16_690)
    assert exact.tokens == pytest.approx(1.25e11 / 1_219_584 * 9.5, rel=1e-12)
    assert exact.notes[0].endswith("; give more minutes")
    # both short: 10 s at MFU 0.001 train 838,516 tokens (above), 100 steps cap them at 409,600
    both = size_model(A10G, 10, mfu=0.001, vocab_size=1000, max_steps=100)
    assert both.notes[0].endswith("; give more minutes and raise train.max_steps (it caps the training at "
                                  "409,600 tokens)")
