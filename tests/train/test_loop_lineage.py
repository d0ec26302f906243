"""What the training loop records for a user to read back, checked by hand or
against another run: the seconds and throughput of each record (with a clock
that ticks whole seconds), the minutes budget's decision across --force and a
change of lineage (docs/training.md, "A budget in minutes"), a skipped step
whose loss alone is not finite, and the tokens a checkpoint says it was trained
on (what `generate` checks)."""

from __future__ import annotations

import json

import pytest

import fmforge.train.loop as loop
from fmforge.rundir import atomic_write_json, read_metrics
from fmforge.train.budget import StepBudget

TOKENS_PER_STEP = 8 * 32  # micro_batch_size × seq_len of tests/conftest.py's tiny config


def _train(cfg, run, lineage: str = "L", fresh: bool = False) -> dict:
    return loop.run_train_stage(cfg, run, fingerprint="fp", fresh=fresh, lineage=lineage)


def test_each_records_seconds_and_throughput_worked_out_by_hand(new_run, one_second_per_reading):
    # docs/training.md's metrics.jsonl: `elapsed_s` is the training seconds so far
    # (a fresh run has none before its first step) and `tokens_per_s` the tokens
    # trained since the record before over the seconds since then. With a clock
    # that moves exactly one second at each reading, the records' rounding (10 ms,
    # 0.1 token/s) is exact, so each record's throughput is, to the digit, its
    # tokens less the previous record's over its seconds less the previous
    # record's, starting from 0 tokens at 0 s.
    cfg, run = new_run(max_steps=4, log_every=1)
    _train(cfg, run)
    records = [r for r in read_metrics(run.metrics) if "loss" in r]
    assert [r["tokens"] for r in records] == [s * TOKENS_PER_STEP for s in (1, 2, 3, 4)]
    tokens, seconds = 0, 0.0
    for r in records:
        assert r["elapsed_s"] == int(r["elapsed_s"]) > seconds, r  # whole ticks, each record later
        assert r["tokens_per_s"] == round((r["tokens"] - tokens) / (r["elapsed_s"] - seconds), 1), r
        tokens, seconds = r["tokens"], r["elapsed_s"]


# 0.002 min less 3% is 0.1164 s. Validation: eval_batches=2 forward passes every
# eval_every=1000 steps, a third of a step each: 2·t/3/1000 a step.
BUDGET = dict(max_steps=None, max_minutes=0.002, warmup_steps=8, log_every=1)


_DECIDE = StepBudget.decide


def _steps_take(monkeypatch, seconds: float):
    """The budget's measure as if every timed step took ``seconds`` and nothing
    else took time (its arithmetic is tested in test_step_budget.py)."""

    def scripted(self, done, elapsed_s, accum):
        self._durations = [seconds] * len(self._durations)
        return _DECIDE(self, done, 0.0, accum)

    monkeypatch.setattr(StepBudget, "decide", scripted)


def test_force_and_a_changed_lineage_decide_the_budget_again(new_run, monkeypatch):
    # docs/training.md: the decision is written to train_budget.json with the
    # run's lineage and a resumed run keeps it; `--force` decides afresh, and so
    # does a run whose lineage changed (its checkpoints are set aside). Each new
    # decision here is taken on a slower machine, so a kept one shows.
    cfg, run = new_run(**BUDGET)
    _steps_take(monkeypatch, 0.01)  # 0.1164 / (0.01 + 7e-6) = 11.6: 11 steps after the 8 timed
    assert _train(cfg, run, lineage="L")["steps"] == 19
    record = json.loads((run.root / "train_budget.json").read_text())
    assert (record["lineage"], record["max_steps"]) == ("L", 19)

    _steps_take(monkeypatch, 0.02)  # 0.1164 / 0.020013 = 5.8: 8 + 5
    assert _train(cfg, run, lineage="L", fresh=True)["steps"] == 13
    record = json.loads((run.root / "train_budget.json").read_text())
    assert (record["lineage"], record["max_steps"]) == ("L", 13)

    _steps_take(monkeypatch, 0.04)  # 0.1164 / 0.040027 = 2.9: 8 + 2, at least warmup + 1 = 9
    assert _train(cfg, run, lineage="M")["steps"] == 10
    record = json.loads((run.root / "train_budget.json").read_text())
    assert (record["lineage"], record["max_steps"]) == ("M", 10)
    assert [r["step"] for r in read_metrics(run.metrics)] == list(range(1, 11))


def test_a_non_finite_loss_with_a_finite_gradient_logs_that_norm_and_its_board_point(new_run,
                                                                                     nan_added_to_the_loss_of_step):
    # docs/training.md, "Non-finite steps": the skipped step's record has its
    # loss and gradient norm, `null` only for a value that is not finite; its
    # `skipped_steps` is TensorBoard's train/skipped_steps. Reference: the same
    # step of a run without the NaN (the same weights and batch up to it), whose
    # logged norm is the gradient's to 4 decimals.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, clean = new_run("clean", max_steps=4, log_every=1)
    _train(cfg, clean)
    norms = {r["step"]: r["grad_norm"] for r in read_metrics(clean.metrics)}

    nan_added_to_the_loss_of_step(3)
    cfg, run = new_run("nan", max_steps=4, log_every=1, tensorboard=True)
    _train(cfg, run)
    records = read_metrics(run.metrics)
    skipped = [r for r in records if r.get("skipped")]
    assert [(r["step"], r["reason"], r["loss"]) for r in skipped] == [(3, "non-finite loss", None)]
    assert skipped[0]["grad_norm"] == pytest.approx(norms[3], abs=1e-4)
    events = EventAccumulator(str(run.root / "tb"))
    events.Reload()
    board = [(e.step, e.value) for e in events.Scalars("train/skipped_steps")]
    assert board == [(r["step"], r["skipped_steps"]) for r in records if "skipped_steps" in r] == [(3, 1), (4, 1)]


def test_a_checkpoint_names_its_tokens_as_generate_checks_them(new_run):
    # stages.json: a stage's `fingerprint` hashes its inputs, its `output` what it
    # produced, and later stages chain on `output` (docs/pipeline.md; the data
    # stage's two differ). `generate` loads a checkpoint only while the tokenize
    # stage's output is the one it was trained on. A tokenize record whose two
    # fingerprints differ: the model trained on those tokens loads, and is
    # refused once the tokens are rebuilt.
    from fmforge.inference.loading import StaleCheckpointError, load_trained

    cfg, run = new_run(max_steps=2)
    records = json.loads(run.stages_json.read_text())
    records["tokenize"]["output"] = "tokens-content-1"
    assert records["tokenize"]["fingerprint"] != "tokens-content-1"
    atomic_write_json(run.stages_json, records)
    _train(cfg, run)
    assert load_trained(run, device="cpu").step == 2
    records["tokenize"]["output"] = "tokens-content-2"
    atomic_write_json(run.stages_json, records)
    with pytest.raises(StaleCheckpointError, match="trained on tokens that have since been rebuilt"):
        load_trained(run, device="cpu")
