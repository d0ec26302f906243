"""The minutes budget (train/budget.py) in-process, with a scripted clock: which
steps are timed, when the decision is taken, the step count worked out by hand,
the record a resumed run keeps, and the warning about a busy CPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from fmforge.config import TrainConfig
from fmforge.rundir import RunDir
from fmforge.train.budget import StepBudget


def _par(is_main=True, mean=None, device="cpu"):
    """One process, or what a process of a group sees: ``mean`` returns the
    group's agreed value (here: a scripted one)."""
    return SimpleNamespace(is_main=is_main, device=torch.device(device),
                           mean=mean or (lambda v: v))


def _cfg(**kw):
    base = dict(max_minutes=1.0, warmup_steps=8, eval_every=10, eval_batches=6)
    return TrainConfig(**{**base, **kw})


def _clock(budget, ends):
    """Record the end of each step at the given clock readings."""
    for i, t in enumerate(ends, start=1):
        budget.record_step(i, t)


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_the_step_count_worked_out_by_hand(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fmforge.train.budget.os.getloadavg", lambda: (0.0, 0.0, 0.0))
    b = StepBudget(RunDir(tmp_path), _cfg(), "L1", _par())
    assert b.known_steps() is None and b.probing(0)
    # 8 steps end at these times: the first two are not timed (allocator warm-up:
    # step 2 took 9 s); the six after take 0.5 s each, but one took 5 s.
    _clock(b, [1.0, 10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 17.5])
    assert b.ready(8)
    steps = b.decide(8, elapsed_s=3.1, accum=2)
    # By hand: the median step is 0.5 s (not the mean, 1.25); a validation scores
    # 6 micro-batches forward (1/3 of a training micro-batch's work) every 10
    # steps of 2 micro-batches: 6 · 0.5 / 2 / 3 / 10 = 0.05 s a step. The budget
    # less 3% is 58.2 s, 3.1 s are spent: 55.1 / 0.55 = 100.2 → 100 more steps.
    assert steps == 108 == b.max_steps == b.known_steps()
    assert not b.probing(8)
    record = json.loads((tmp_path / "train_budget.json").read_text())
    assert {k: v for k, v in record.items() if k != "decided_at"} == {
        "lineage": "L1", "max_steps": 108, "max_minutes": 1.0, "measured_step_s": 0.5,
        "estimated_validation_s_per_step": 0.05, "decided_after_steps": 8,
        "elapsed_s_at_decision": 3.1, "capped_by_max_steps": False}
    err = _err(capsys)
    assert err.endswith("budget: 0.500 s per step measured over 6 steps; 1 min → 108 steps")  # not capped


def test_only_steps_after_the_first_two_are_timed_and_probing_lasts_through_warmup(tmp_path):
    b = StepBudget(RunDir(tmp_path), _cfg(warmup_steps=12), "L", _par())
    assert b.probe_steps == 12
    _clock(b, [100.0, 200.0] + [200.0 + 0.25 * i for i in range(1, 10)])  # 11 steps
    assert not b.ready(11)  # 9 timed steps of the 10 needed
    b.record_step(12, 202.5)
    assert b.ready(12)
    # the 100 s of the first two steps are not in the measure: 0.25 s per step
    assert b.decide(12, 0.0, 1) == 12 + int((58.2 - 0.0) // (0.25 + 6 * 0.25 / 3 / 10))


@pytest.mark.parametrize("warmup,probe", [(0, 8), (8, 8), (9, 9), (50, 50), (51, 50), (400, 50)])
def test_probe_steps_are_the_warmup_between_8_and_50(tmp_path, warmup, probe):
    cfg = _cfg(warmup_steps=warmup, schedule="constant" if warmup < 8 else "cosine")
    b = StepBudget(RunDir(tmp_path), cfg, "L", _par())
    assert b.probe_steps == probe
    _clock(b, [float(i) for i in range(probe - 1)])
    assert not b.ready(probe - 1)
    b.record_step(probe, float(probe))
    assert b.ready(probe)


def test_the_group_agrees_on_the_measures_and_only_the_main_process_writes(tmp_path):
    # The other process was slower: the agreed (mean) step time is 1.0 s and the
    # agreed elapsed time 10 s, whatever this process measured.
    agreed = iter([1.0, 10.0])
    b = StepBudget(RunDir(tmp_path), _cfg(eval_batches=3), "L", _par(is_main=False, mean=lambda v: next(agreed)))
    _clock(b, [float(i) for i in range(8)])
    # 58.2 − 10 = 48.2 s at 1 + 3/3/10 = 1.1 s a step: 43 more steps after 8
    assert b.decide(8, 2.0, 1) == 51
    assert not (tmp_path / "train_budget.json").exists()


def test_max_steps_caps_the_decision_and_says_so(tmp_path, capsys):
    b = StepBudget(RunDir(tmp_path), _cfg(max_steps=40), "L", _par(device="meta"))
    assert b.known_steps() is None  # a cap, not the count
    assert b.placeholder_steps == 40
    _clock(b, [0.1 * i for i in range(8)])  # 0.1 s a step: 500-odd steps would fit
    assert b.decide(8, 1.0, 1) == 40
    assert json.loads((tmp_path / "train_budget.json").read_text())["capped_by_max_steps"] is True
    assert "(capped by train.max_steps=40)" in _err(capsys)
    # exactly at the cap: not capped
    b = StepBudget(RunDir(tmp_path), _cfg(max_steps=48), "L", _par(device="meta"), fresh=True)
    _clock(b, [0.5 * i for i in range(8)])  # 58.2 − 1 = 57.2 s at 0.5 + 0.1 = 0.6 s: 95 more
    b.decide(8, 1.0, 1)
    assert b.max_steps == 48
    b = StepBudget(RunDir(tmp_path), _cfg(max_steps=103), "L", _par(device="meta"), fresh=True)
    _clock(b, [0.5 * i for i in range(8)])
    assert b.decide(8, 1.0, 1) == 103
    assert json.loads((tmp_path / "train_budget.json").read_text())["capped_by_max_steps"] is False


def test_a_spent_budget_still_trains_past_warmup(tmp_path):
    # 2 minutes already gone at the decision: no time left, but the run never
    # stops inside warmup (whose rates do not depend on the step count) nor
    # before the steps it has done.
    b = StepBudget(RunDir(tmp_path), _cfg(warmup_steps=10), "L", _par(device="meta"))
    _clock(b, [float(i) for i in range(10)])
    assert b.decide(10, 120.0, 1) == 11
    b = StepBudget(RunDir(tmp_path), _cfg(warmup_steps=8), "L", _par(device="meta"), fresh=True)
    _clock(b, [float(i) for i in range(14)])
    assert b.decide(14, 120.0, 1) == 14


def test_without_a_budget_the_step_count_is_the_configs(tmp_path):
    b = StepBudget(RunDir(tmp_path), TrainConfig(max_steps=70, warmup_steps=5), "L", _par())
    assert b.known_steps() == 70 and b.max_steps == 70 and not b.probing(0)
    assert b.placeholder_steps == 70
    b.adopt(90)
    assert b.known_steps() == 90
    assert StepBudget(RunDir(tmp_path), _cfg(), "L", _par()).placeholder_steps == 10**9


def _decided(tmp_path, lineage="L", **cfg):
    b = StepBudget(RunDir(tmp_path), _cfg(**cfg), lineage, _par(device="meta"))
    _clock(b, [0.5 * i for i in range(8)])
    return b.decide(8, 1.0, 1)


def test_a_resumed_run_keeps_the_decision_of_its_own_lineage_only(tmp_path, capsys):
    steps = _decided(tmp_path)
    capsys.readouterr()
    again = StepBudget(RunDir(tmp_path), _cfg(), "L", _par())
    assert again.known_steps() == steps and not again.probing(0)
    assert f"budget: 1 min → {steps} steps, as decided when this run started (train_budget.json)" in _err(capsys)
    # another lineage (the model or data changed), --force, or no budget: decide afresh
    assert StepBudget(RunDir(tmp_path), _cfg(), "other", _par()).known_steps() is None
    assert StepBudget(RunDir(tmp_path), _cfg(), "L", _par(), fresh=True).known_steps() is None
    assert StepBudget(RunDir(tmp_path), TrainConfig(max_steps=30, warmup_steps=8), "L",
                      _par()).known_steps() == 30


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe", "null", "[1]", '{"lineage": "L"}',
                                  '{"lineage": "L", "max_steps": "many"}'])
def test_a_damaged_decision_record_is_decided_again(tmp_path, text):
    # (bytes that are not UTF-8, or JSON of another shape: a damaged file, not a
    # reason to stop the run)
    (tmp_path / "train_budget.json").write_bytes(text.encode("latin-1"))
    b = StepBudget(RunDir(tmp_path), _cfg(), "L", _par())
    assert b.known_steps() is None


def test_a_busy_cpu_during_the_timed_steps_is_reported_counting_every_local_process(
        tmp_path, monkeypatch, capsys):
    threads = torch.get_num_threads()
    # two training processes on this node: 2·threads of training; a load 0.5 above
    # that is training's own noise, 1.5 above a single process's is another program.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    load = 2 * threads + 0.5
    monkeypatch.setattr("fmforge.train.budget.os.getloadavg", lambda: (load, load, load))
    b = StepBudget(RunDir(tmp_path), _cfg(), "L", _par())
    _clock(b, [0.5 * i for i in range(8)])
    b.decide(8, 1.0, 1)
    assert "load average" not in _err(capsys)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    b = StepBudget(RunDir(tmp_path), _cfg(), "L", _par(), fresh=True)
    _clock(b, [0.5 * i for i in range(8)])
    b.decide(8, 1.0, 1)
    err = _err(capsys)
    assert (f"warning: the load average was {load:.1f} while the budget timed its steps, with {threads} "
            "threads of training: other programs were using the CPU, so the run trains fewer steps than "
            "an idle machine would in the same minutes. For the demo's figures, run it on an idle "
            "machine.") in err
    # only the main process says it, and only on a CPU
    b = StepBudget(RunDir(tmp_path), _cfg(), "L", _par(is_main=False), fresh=True)
    _clock(b, [0.5 * i for i in range(8)])
    b.decide(8, 1.0, 1)
    b = StepBudget(RunDir(tmp_path), _cfg(), "L", _par(device="meta"), fresh=True)
    _clock(b, [0.5 * i for i in range(8)])
    b.decide(8, 1.0, 1)
    assert "load average" not in _err(capsys)


def test_the_record_keeps_four_decimals_of_the_measures(tmp_path):
    b = StepBudget(RunDir(tmp_path), _cfg(), "L", _par(device="meta"))
    _clock(b, [0.123456 * i for i in range(8)])
    b.decide(8, 3.14159, 1)
    record = json.loads((tmp_path / "train_budget.json").read_text())
    # 0.123456 s a step; validation 6 · 0.123456 / 3 / 10 = 0.0246912 s a step
    assert record["measured_step_s"] == 0.1235
    assert record["estimated_validation_s_per_step"] == 0.0247
    assert record["elapsed_s_at_decision"] == 3.14
