"""The training loop in-process on a tiny model (a few steps, well under a second
each): resuming, stopping, extending a finished WSD run, the minutes budget, what
is logged and saved, skipped steps, damaged checkpoints and a full disk.

The reference is always another run: an uninterrupted run of the same config, or
a fresh run given the new step count from the start (what the published WSD
recipe promises an extension equals); figures are worked out by hand."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401 - AdamW imports it on first use (3 s); here once, at collection

import fmforge.train.loop as loop
from fmforge.config import RunConfig
from fmforge.rundir import ArtifactError, RunDir, RunDirWriteError, read_metrics
from fmforge.train.checkpoint import CheckpointFormatError, list_checkpoints

TOKENS_PER_STEP = 8 * 32  # micro_batch_size × seq_len of tests/conftest.py's tiny config




def train(cfg: RunConfig, run: RunDir, lineage: str | None = "L", fresh: bool = False) -> dict:
    return loop.run_train_stage(cfg, run, fingerprint=f"fp-{cfg.train.max_steps}", fresh=fresh,
                                lineage=lineage)


def losses(run: RunDir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run.metrics) if not r.get("skipped")}


def said(capsys) -> str:
    """What the trainer printed since the last call, its line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def steps_of(path: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(path)]


def state(run: RunDir, step: int) -> dict:
    return json.loads((run.checkpoints / f"step-{step:06d}" / "trainer_state.json").read_text())


def count_steps(monkeypatch) -> dict:
    """Count the optimizer steps taken from now on (a resume must train only the
    steps after its checkpoint, though training again from the start would log the
    same losses)."""
    taken = {"n": 0}
    step = torch.optim.AdamW.step

    def counting(self, *a, **kw):
        taken["n"] += 1
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    return taken


@pytest.fixture(autouse=True)
def _stop_signals_reach_only_the_trainer():
    """A SIGINT or SIGTERM the trainer did not take must fail the test. Inherited from
    the process that runs the tests, it could end the test quietly instead: mutmut's
    fork server exits 0 on SIGTERM, so a trainer that lost its handlers read as a
    surviving mutant (train/loop.py's _install_stop_handlers 9, 10)."""
    def not_the_trainers(signum, frame):
        raise AssertionError(f"signal {signum} reached a handler the trainer did not install")

    saved = {s: signal.signal(s, not_the_trainers) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def _stop_at(monkeypatch, step: int, signum=signal.SIGINT, twice: bool = False):
    """Send this process ``signum`` while step ``step`` (1-based) runs."""
    lr_at = loop.lr_at

    def lr_at_and_signal(s, max_steps, cfg):
        if s + 1 == step:
            os.kill(os.getpid(), signum)
            if twice:
                os.kill(os.getpid(), signum)
        return lr_at(s, max_steps, cfg)

    monkeypatch.setattr(loop, "lr_at", lr_at_and_signal)


# --------------------------------------------------------------------------- stop and resume


def test_a_stopped_run_resumes_and_reproduces_the_uninterrupted_one(new_run, monkeypatch, capsys):
    settings = dict(max_steps=10, checkpoint_every=4, keep_checkpoints=5, log_every=1)
    cfg, ref = new_run("ref", **settings)
    summary = train(cfg, ref)
    reference = losses(ref)
    assert sorted(reference) == list(range(1, 11))
    assert steps_of(ref.checkpoints) == [4, 8, 10]
    assert summary["last_checkpoint"] == 10 and summary["steps"] == 10

    cfg, run = new_run("run", **settings)
    _stop_at(monkeypatch, 6)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="stopped by SIGINT at step 6"):
        train(cfg, run)
    assert signal.getsignal(signal.SIGINT) is previous  # the handlers are given back
    assert "SIGINT: saving a checkpoint at the end of this step (send again to stop at once)" in said(capsys)
    assert steps_of(run.checkpoints) == [4, 6]  # saved where it stopped
    assert state(run, 6)["step"] == 6 and state(run, 6)["tokens"] == 6 * TOKENS_PER_STEP
    assert sorted(losses(run)) == list(range(1, 7))
    monkeypatch.undo()

    taken = count_steps(monkeypatch)
    summary = train(cfg, run)
    assert taken["n"] == 4  # steps 7..10
    assert losses(run) == reference
    assert summary["steps"] == 10 and summary["last_checkpoint"] == 10
    assert summary["tokens"] == 10 * TOKENS_PER_STEP
    assert summary["final_loss"] == reference[10]
    assert steps_of(run.checkpoints) == [4, 6, 8, 10]


def test_records_a_resume_finds_after_its_checkpoint_are_dropped_and_logging_restarts(new_run, monkeypatch):
    # A run that logged past its last checkpoint (killed at step 7, saved at 4):
    # the resume redoes 5..7 and logs them once, and logs its first step.
    cfg, run = new_run(max_steps=7, checkpoint_every=4, log_every=3)
    train(cfg, run)
    shutil.rmtree(run.checkpoints / "step-000007")
    logged = [r["step"] for r in read_metrics(run.metrics)]
    assert logged == [1, 3, 6, 7]
    taken = count_steps(monkeypatch)
    train(cfg, run)
    assert taken["n"] == 3
    assert [r["step"] for r in read_metrics(run.metrics)] == [1, 3, 5, 6, 7]


def test_a_second_signal_stops_at_once_without_saving(new_run, monkeypatch):
    cfg, run = new_run(max_steps=8, checkpoint_every=4)
    _stop_at(monkeypatch, 6, signum=signal.SIGTERM, twice=True)
    with pytest.raises(KeyboardInterrupt) as caught:
        train(cfg, run)
    assert "stopped by" not in str(caught.value)
    assert steps_of(run.checkpoints) == [4]


def test_a_stop_requested_on_the_last_step_finishes_normally(new_run, monkeypatch):
    cfg, run = new_run(max_steps=5)
    _stop_at(monkeypatch, 5, signum=signal.SIGTERM)
    summary = train(cfg, run)
    assert summary["steps"] == 5 and steps_of(run.checkpoints) == [5]


def test_a_finished_run_run_again_trains_nothing(new_run, monkeypatch):
    cfg, run = new_run(max_steps=4, log_every=1)
    train(cfg, run)
    before = losses(run)
    taken = count_steps(monkeypatch)
    summary = train(cfg, run)
    assert taken["n"] == 0
    assert losses(run) == before
    assert summary["steps"] == 4 and summary["tokens_per_s"] is None
    assert summary["final_loss"] == before[4] and summary["last_checkpoint"] == 4


# --------------------------------------------------------------------------- WSD: extend a finished run


WSD = dict(schedule="wsd", decay_fraction=0.25, warmup_steps=2, log_every=1)


def test_a_finished_wsd_run_extended_equals_a_run_given_the_longer_count(new_run, monkeypatch, capsys):
    # 20 steps decaying over the last 5: the decay begins at step 15, whose
    # checkpoint is kept whatever keep_checkpoints says.
    cfg20, run = new_run(max_steps=20, checkpoint_every=4, keep_checkpoints=1, eval_every=10, **WSD)
    train(cfg20, run, lineage="wsd")
    assert steps_of(run.checkpoints) == [15, 20]
    assert state(run, 15)["max_steps"] == 20
    # evaluations of both checkpoints, as the eval stage leaves them
    ev = {"steps": {str(s): {"overall": {"loss": 1.0 / s}, "per_source": {}} for s in (15, 20)}}
    run.eval_json.write_text(json.dumps(ev))

    cfg40, _ = new_run("cfg40", max_steps=40, checkpoint_every=4, keep_checkpoints=1, eval_every=10, **WSD)
    taken = count_steps(monkeypatch)
    capsys.readouterr()
    summary = train(cfg40, run, lineage="wsd")
    assert taken["n"] == 25  # from step 15
    assert ("train.max_steps changed from 20 to 40: continuing from step 15 or before, where the "
            "learning-rate decay had not begun; the later checkpoints (and their evaluations) are "
            "kept in") in said(capsys)
    cfg40, fresh = new_run("fresh", max_steps=40, checkpoint_every=4, keep_checkpoints=1, eval_every=10, **WSD)
    train(cfg40, fresh, lineage="wsd")
    # Continued from step 15 (not 20, which had decayed): the same losses and
    # rates as a run of 40 steps from the start, at every step.
    assert losses(run) == losses(fresh)
    assert [r["lr"] for r in read_metrics(run.metrics)] == [r["lr"] for r in read_metrics(fresh.metrics)]
    assert summary["steps"] == 40 and summary["tokens"] == 40 * TOKENS_PER_STEP
    # 40 steps decay from step 30 on; that checkpoint is kept
    assert steps_of(run.checkpoints) == steps_of(fresh.checkpoints) == [30, 40]
    # step 20 is set aside (kept, not deleted) with its evaluation; step 15's stays
    asides = list((run.root / "checkpoints.previous").iterdir())
    assert len(asides) == 1 and steps_of(asides[0]) == [20]
    reason = (asides[0] / "reason.txt").read_text()
    assert "train.max_steps changed from 20 to 40" in reason and "from step 15 or before" in reason
    assert list(json.loads((asides[0] / "eval.json").read_text())["steps"]) == ["20"]
    assert list(json.loads(run.eval_json.read_text())["steps"]) == ["15"]


def test_a_wsd_run_shortened_continues_from_before_the_earlier_decay(new_run, monkeypatch):
    # 40 steps → 30: 30 steps decay from step 22 (a quarter of 30 is 7.5, rounded
    # to 8), so the run continues from the last checkpoint at or before 22.
    base = dict(checkpoint_every=4, keep_checkpoints=20, **WSD)
    cfg, run = new_run(max_steps=40, **base)
    train(cfg, run, lineage="wsd")
    assert steps_of(run.checkpoints) == [4, 8, 12, 16, 20, 24, 28, 30, 32, 36, 40]
    cfg30, _ = new_run("c30", max_steps=30, **base)
    taken = count_steps(monkeypatch)
    train(cfg30, run, lineage="wsd")
    assert taken["n"] == 10  # from step 20
    _, fresh = new_run("fresh", max_steps=30, **base)
    train(cfg30, fresh, lineage="wsd")
    assert losses(run) == losses(fresh)
    aside = next((run.root / "checkpoints.previous").iterdir())
    assert steps_of(aside) == [24, 28, 30, 32, 36, 40]
    assert "from step 22 or before" in (aside / "reason.txt").read_text()


def test_a_wsd_run_stopped_before_its_decay_continues_with_the_new_count(new_run, monkeypatch):
    # Stopped at step 6 of 20 (decay from 15); rerun with 30 steps: nothing had
    # decayed, so it continues from step 6 with the new count, as a 30-step run.
    base = dict(checkpoint_every=4, keep_checkpoints=5, **WSD)
    cfg, run = new_run(max_steps=20, **base)
    _stop_at(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, lineage="wsd")
    monkeypatch.undo()
    cfg30, _ = new_run("c30", max_steps=30, **base)
    taken = count_steps(monkeypatch)
    train(cfg30, run, lineage="wsd")
    assert taken["n"] == 24  # from step 6
    _, fresh = new_run("fresh", max_steps=30, **base)
    train(cfg30, fresh, lineage="wsd")
    assert losses(run) == losses(fresh)
    assert not (run.root / "checkpoints.previous").exists()  # nothing set aside


def test_a_checkpoint_without_a_step_count_resumes_as_it_is(new_run, monkeypatch):
    # (checkpoints written before the step count was recorded)
    cfg, run = new_run(max_steps=8, checkpoint_every=2, keep_checkpoints=5, **WSD)
    train(cfg, run, lineage="wsd")
    shutil.rmtree(run.checkpoints / "step-000008")
    path = run.checkpoints / "step-000006" / "trainer_state.json"
    record = json.loads(path.read_text())
    record.pop("max_steps")
    path.write_text(json.dumps(record))
    cfg12, _ = new_run("c12", max_steps=12, checkpoint_every=2, keep_checkpoints=5, **WSD)
    taken = count_steps(monkeypatch)
    train(cfg12, run, lineage="wsd")
    assert taken["n"] == 6  # from step 6
    assert sorted(losses(run)) == list(range(1, 13))
    assert not (run.root / "checkpoints.previous").exists()


# --------------------------------------------------------------------------- another lineage, --force


def test_a_changed_lineage_or_force_sets_every_checkpoint_aside(new_run, capsys):
    cfg, run = new_run(max_steps=4, checkpoint_every=2)
    train(cfg, run, lineage="A")
    ev = {"steps": {"4": {"overall": {"loss": 1.0}, "per_source": {}}}}
    run.eval_json.write_text(json.dumps(ev))
    capsys.readouterr()
    train(cfg, run, lineage="B")
    assert ("the model, training settings or data changed since the last checkpoint: starting afresh; "
            "the earlier checkpoints (and their evaluations) are kept in") in said(capsys)
    asides = sorted((run.root / "checkpoints.previous").iterdir())
    assert len(asides) == 1 and steps_of(asides[0]) == [2, 4]
    assert "changed since the last checkpoint" in (asides[0] / "reason.txt").read_text()
    assert "4" in json.loads((asides[0] / "eval.json").read_text())["steps"]
    assert not json.loads(run.eval_json.read_text()).get("steps")
    assert steps_of(run.checkpoints) == [2, 4]
    train(cfg, run, lineage="B", fresh=True)
    assert "--force: starting afresh; the earlier checkpoints (and their evaluations) are kept in" in said(capsys)
    asides = sorted((run.root / "checkpoints.previous").iterdir())
    assert len(asides) == 2 and "--force" in (asides[1] / "reason.txt").read_text()
    assert steps_of(asides[1]) == [2, 4] and steps_of(run.checkpoints) == [2, 4]


# --------------------------------------------------------------------------- what is logged and saved


def test_the_logged_records_checkpoints_and_summary(new_run):
    cfg, run = new_run(max_steps=12, log_every=3, eval_every=5, checkpoint_every=4, keep_checkpoints=2,
                       warmup_steps=4, lr=0.01, schedule="constant")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        summary = train(cfg, run, lineage=None)  # no lineage of its own: the fingerprint
        assert torch.get_num_threads() == 1  # train.num_threads of the tiny config
    finally:
        torch.set_num_threads(threads)
    records = read_metrics(run.metrics)
    # the first step, every 3rd, every validation (5, 10) and the last (a validation too)
    assert [r["step"] for r in records] == [1, 3, 5, 6, 9, 10, 12]
    with_val = [r["step"] for r in records if "val_loss" in r]
    assert with_val == [5, 10, 12]
    # warmup over 4 steps: 0.0025, 0.005, 0.0075, then 0.01 (the rate of step n is lr_at(n - 1))
    assert [r["lr"] for r in records] == pytest.approx([0.0025, 0.0075, 0.01, 0.01, 0.01, 0.01, 0.01])
    for r in records:
        assert r["tokens"] == r["step"] * TOKENS_PER_STEP
        assert r["loss"] > 0 and math.isfinite(r["grad_norm"]) and r["tokens_per_s"] > 0
        assert r["flops_per_token"] > 0 and "skipped_steps" not in r
    # 12 steps of 8 windows over the loader's windows per epoch
    windows = loop.EpochWindowLoader(loop.open_tokens(run, "train"), 32, 8, 1, cfg.seed).n_windows
    assert records[-1]["epoch"] == round(12 * 8 / windows, 4)
    assert summary["epochs"] == round(12 * 8 / windows, 3)
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)
    assert steps_of(run.checkpoints) == [8, 12]  # keep_checkpoints=2
    st = state(run, 12)
    assert (st["step"], st["max_steps"], st["tokens"], st["skipped_steps"], st["seed"]) == \
        (12, 12, 12 * TOKENS_PER_STEP, 0, cfg.seed)
    assert st["lineage"] == "fp-12" and st["fingerprint"] == "fp-12"
    tokenize = run.stage_record("tokenize")
    assert st["tokens_fingerprint"] == tokenize.get("output", tokenize["fingerprint"]) is not None
    assert st["model"]["d_model"] == 32 and st["params"] == summary["params"]
    assert summary["final_loss"] == records[-1]["loss"] and summary["val_loss"] == records[-1]["val_loss"]
    assert summary["steps"] == 12 and summary["tokens"] == 12 * TOKENS_PER_STEP
    assert summary["processes"] == 1 and summary["skipped_steps"] == 0 and summary["device"] == "cpu"
    assert summary["tokens_per_s"] > 0 and summary["wall_s"] >= records[-1]["elapsed_s"] - 0.05
    assert summary["flops_per_token"] == records[-1]["flops_per_token"]


def test_the_rates_trained_with_follow_the_schedule_by_hand(new_run, monkeypatch):
    # cosine over 6 steps, warmup 2, lr 1e-2 → 1e-3: steps 1..6 run at
    # 0.005, 0.01, then 1e-3 + 9e-3·(1 + cos(π·k/4))/2 for k = 1, 2, 3, 4 (the
    # rate the optimizer actually used, read from its groups at each step).
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    cfg, run = new_run(max_steps=6, warmup_steps=2, lr=1e-2, min_lr_ratio=0.1)
    train(cfg, run)
    cos = [1e-3 + 9e-3 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert [g[0] for g in seen] == pytest.approx([0.005, 0.01] + cos, rel=1e-12)
    assert all(g[0] == g[1] for g in seen)  # both groups (decay and no decay)


def test_gradient_accumulation_logs_the_mean_loss_of_its_micro_batches(new_run):
    # micro-batches of 4, two per step: the same 8 windows a step as micro-batches
    # of 8, so the same mean loss and the same update (to float32 rounding).
    cfg, one = new_run("one", max_steps=3, log_every=1)
    train(cfg, one)
    cfg, two = new_run("two", max_steps=3, log_every=1, micro_batch_size=4, grad_accum_steps=2)
    summary = train(cfg, two)
    assert list(losses(two).values()) == pytest.approx(list(losses(one).values()), rel=1e-4)
    assert summary["tokens"] == 3 * TOKENS_PER_STEP


def test_clipping_off_trains_like_an_unreachable_clip_and_a_tight_clip_differs(new_run):
    cfg, a = new_run("a", max_steps=4, log_every=1, grad_clip=0.0)
    train(cfg, a)
    cfg, b = new_run("b", max_steps=4, log_every=1, grad_clip=1e9)
    train(cfg, b)
    cfg, c = new_run("c", max_steps=4, log_every=1, grad_clip=1e-3)
    train(cfg, c)
    assert losses(a) == losses(b)
    assert losses(a)[4] != losses(c)[4]


def test_activation_checkpointing_changes_memory_not_the_losses(new_run):
    cfg, a = new_run("a", max_steps=3, log_every=1)
    train(cfg, a)
    cfg, b = new_run("b", max_steps=3, log_every=1, activation_checkpointing=True)
    train(cfg, b)
    assert list(losses(b).values()) == pytest.approx(list(losses(a).values()), rel=1e-6)


def test_tokens_encoded_for_another_vocabulary_are_refused(new_run):
    cfg, run = new_run(max_steps=2)
    cfg.model.vocab_size = 301
    with pytest.raises(ArtifactError, match="vocab_size=300 but the model has vocab_size=301"):
        train(cfg, run)


# --------------------------------------------------------------------------- the minutes budget


def _scripted_clock(monkeypatch):
    """The budget's measures as if every timed step took 10 ms and nothing else
    took time (the budget's own arithmetic is tested in test_step_budget.py)."""
    from fmforge.train.budget import StepBudget

    decide = StepBudget.decide

    def scripted(self, done, elapsed_s, accum):
        self._durations = [0.01] * len(self._durations)
        return decide(self, done, 0.0, accum)

    monkeypatch.setattr(StepBudget, "decide", scripted)


# 0.002 min less 3% is 0.1164 s; 10 ms a step (validation: 2 batches / 3 / 1000
# steps, 7e-6 s a step) → 11 more steps after the 8 timed ones: 19.
BUDGET = dict(max_steps=None, max_minutes=0.002, warmup_steps=8, log_every=1)


def test_a_minutes_budget_decides_after_warmup_and_trains_that_schedule(new_run, monkeypatch):
    _scripted_clock(monkeypatch)
    cfg, run = new_run(checkpoint_every=5, keep_checkpoints=5, **BUDGET)
    summary = train(cfg, run)
    assert json.loads((run.root / "train_budget.json").read_text())["decided_after_steps"] == 8
    assert summary["steps"] == 19 and summary["tokens"] == 19 * TOKENS_PER_STEP
    assert sorted(losses(run)) == list(range(1, 20))
    assert steps_of(run.checkpoints)[-1] == 19 and state(run, 19)["max_steps"] == 19
    assert state(run, 15)["max_steps"] == 19 and state(run, 5)["max_steps"] is None  # before the decision
    # a run given 19 steps from the start trains the same steps at the same rates
    fixed, ref = new_run("ref", max_steps=19, warmup_steps=8, log_every=1)
    train(fixed, ref)
    assert losses(run) == losses(ref)
    assert [r["lr"] for r in read_metrics(run.metrics)] == [r["lr"] for r in read_metrics(ref.metrics)]


def test_a_budget_run_stopped_after_its_decision_resumes_to_the_same_count(new_run, monkeypatch):
    _scripted_clock(monkeypatch)
    cfg, run = new_run(checkpoint_every=1000, **BUDGET)
    _stop_at(monkeypatch, 12)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run)
    monkeypatch.undo()
    assert state(run, 12)["max_steps"] == 19
    # the checkpoint alone must keep the count (the record is gone; the machine is
    # now so slow that a new decision would give fewer steps)
    (run.root / "train_budget.json").unlink()
    monkeypatch.setattr("fmforge.train.budget.StepBudget.decide",
                        lambda *a: pytest.fail("decided again"))
    taken = count_steps(monkeypatch)
    summary = train(cfg, run)
    assert taken["n"] == 7 and summary["steps"] == 19
    assert sorted(losses(run)) == list(range(1, 20))


# --------------------------------------------------------------------------- skipped steps


def _infinite_gradient_at(monkeypatch, steps: set[int]):
    build = loop.build_model
    calls = {"n": 0}

    def build_with_hook(cfg, device):
        model = build(cfg, device)

        def hook(grad):
            calls["n"] += 1
            return grad * math.inf if calls["n"] in steps else grad

        next(model.parameters()).register_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model", build_with_hook)


def test_skipped_steps_are_logged_counted_and_do_not_reach_the_weights(new_run, monkeypatch, capsys):
    _infinite_gradient_at(monkeypatch, {3, 4, 6, 7})  # never 3 in a row
    cfg, run = new_run(max_steps=8, log_every=1, max_skipped_steps=3, checkpoint_every=4)
    summary = train(cfg, run)
    records = read_metrics(run.metrics)
    skipped = [r for r in records if r.get("skipped")]
    assert [r["step"] for r in skipped] == [3, 4, 6, 7]
    assert skipped[0]["reason"] == "non-finite gradient norm" and skipped[0]["grad_norm"] is None
    assert math.isfinite(skipped[0]["loss"]) and [r["skipped_steps"] for r in skipped] == [1, 2, 3, 4]
    assert "loss_scale" not in skipped[0]
    kept = [r for r in records if not r.get("skipped")]
    assert [r["step"] for r in kept] == [1, 2, 5, 8]
    assert [r.get("skipped_steps") for r in kept] == [None, None, 2, 4]
    assert summary["skipped_steps"] == 4 and state(run, 8)["skipped_steps"] == 4
    err = said(capsys)
    assert ("step 4: non-finite gradient norm, step skipped (weights and optimizer unchanged; "
            "2 in a row)") in err and "loss scale" not in err
    optim = torch.load(run.checkpoints / "step-000008" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optim["state"].values()} == {4}  # 8 steps, 4 skipped


def test_consecutive_skips_stop_the_run_naming_the_last_good_checkpoint(new_run, monkeypatch):
    _infinite_gradient_at(monkeypatch, set(range(5, 100)))
    cfg, run = new_run(max_steps=12, checkpoint_every=2, keep_checkpoints=5, max_skipped_steps=3)
    with pytest.raises(loop.TrainingDiverged, match=r"3 consecutive steps .*up to step 7\).*\(step 6\) is intact"):
        train(cfg, run)
    assert steps_of(run.checkpoints) == [2, 4, 6]


def test_a_non_finite_loss_is_skipped_and_named(new_run, monkeypatch, capsys):
    forward = loop.Transformer.forward
    calls = {"n": 0}

    def nan_on_second(self, *a, **kw):
        out = forward(self, *a, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return out * math.nan
        return out

    monkeypatch.setattr(loop.Transformer, "forward", nan_on_second)
    cfg, run = new_run(max_steps=3, log_every=1)
    train(cfg, run)
    bad = [r for r in read_metrics(run.metrics) if r.get("skipped")]
    assert len(bad) == 1 and bad[0]["step"] == 2 and bad[0]["reason"] == "non-finite loss"
    assert bad[0]["loss"] is None
    assert "step 2: non-finite loss, step skipped" in said(capsys)


# --------------------------------------------------------------------------- damaged checkpoints, errors


@pytest.mark.parametrize("damage", [b"{trunc", b"\xff\xfe{"])  # not JSON; not even UTF-8
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_one_before_used(new_run, monkeypatch, damage,
                                                                        capsys):
    cfg, run = new_run(max_steps=8, checkpoint_every=2, keep_checkpoints=4, log_every=1)
    train(cfg, run)
    reference = losses(run)
    (run.checkpoints / "step-000008" / "trainer_state.json").write_bytes(damage)
    (run.checkpoints / "step-000006" / "model.safetensors").write_bytes(b"\0" * 10)
    (run.checkpoints / "step-000006.unreadable").mkdir()  # from an earlier time
    (run.checkpoints / "step-000006.unreadable" / "old").write_text("x")
    taken = count_steps(monkeypatch)
    capsys.readouterr()
    summary = train(cfg, run)
    assert taken["n"] == 4  # from step 4
    err = said(capsys)
    assert ("cannot be loaded (its trainer_state.json is not valid JSON); set aside as "
            "step-000008.unreadable, trying the one before it") in err
    assert "the latest checkpoint " in err and "set aside as step-000006.unreadable" in err
    assert (run.checkpoints / "step-000008.unreadable" / "trainer_state.json").read_bytes() == damage
    assert (run.checkpoints / "step-000006.unreadable" / "model.safetensors").stat().st_size == 10
    assert losses(run) == reference  # resumed from step 4, trained 5..8 again
    assert summary["last_checkpoint"] == 8 and steps_of(run.checkpoints) == [2, 4, 6, 8]


def test_a_load_error_that_is_not_damage_stops_and_sets_nothing_aside(new_run, monkeypatch):
    cfg, run = new_run(max_steps=4, checkpoint_every=2)
    train(cfg, run)

    def oom(*a, **kw):
        raise MemoryError("out of memory")

    monkeypatch.setattr(loop, "load_checkpoint", oom)
    with pytest.raises(MemoryError):
        train(cfg, run)
    assert steps_of(run.checkpoints) == [2, 4] and not list(run.checkpoints.glob("*.unreadable"))

    def check_fails(ckpt):  # the damage check failing too is not damage
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(loop, "checkpoint_damage", check_fails)
    with pytest.raises(MemoryError):
        train(cfg, run)
    assert steps_of(run.checkpoints) == [2, 4] and not list(run.checkpoints.glob("*.unreadable"))

    def unsupported(*a, **kw):
        raise CheckpointFormatError("sharded: consolidate it first")

    monkeypatch.setattr(loop, "load_checkpoint", unsupported)
    with pytest.raises(CheckpointFormatError):
        train(cfg, run)
    assert steps_of(run.checkpoints) == [2, 4]


@pytest.mark.parametrize("stop_at", [3, 6])
def test_a_full_disk_at_a_save_says_where_training_resumes(new_run, monkeypatch, stop_at):
    save = loop.save_checkpoint

    def full(root, step, *a, **kw):
        if step == stop_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(root, step, *a, **kw)

    monkeypatch.setattr(loop, "save_checkpoint", full)
    cfg, run = new_run(max_steps=8, checkpoint_every=3)
    with pytest.raises(RunDirWriteError) as caught:
        train(cfg, run)
    message = " ".join(str(caught.value).split())
    assert f"The checkpoint of step {stop_at} was not written" in message
    if stop_at == 3:
        assert "training resumes from step 0 (the start)" in message
    else:
        assert "training resumes from step 3" in message and "(the start)" not in message

    def broken(*a, **kw):  # not a storage error: as it is
        raise ValueError("a bug")

    monkeypatch.setattr(loop, "save_checkpoint", broken)
    with pytest.raises(ValueError, match="a bug"):
        train(*new_run("b", max_steps=2))


def test_set_aside_of_some_checkpoints_moves_their_evaluations_and_later_ones(tmp_path):
    run = RunDir(tmp_path)
    for s in (2, 4, 6):
        (run.checkpoints / f"step-{s:06d}").mkdir(parents=True)
    ev = {"steps": {str(s): {"overall": {"loss": 1.0}, "per_source": {}} for s in (2, 4, 6)}}
    run.eval_json.write_text(json.dumps(ev))
    loop.set_aside(run, "why", [run.checkpoints / "step-000004", run.checkpoints / "step-000006"])
    aside = next((tmp_path / "checkpoints.previous").iterdir())
    assert sorted(p.name for p in aside.iterdir() if p.is_dir()) == ["step-000004", "step-000006"]
    assert [p.name for p in run.checkpoints.iterdir()] == ["step-000002"]
    assert sorted(json.loads((aside / "eval.json").read_text())["steps"]) == ["4", "6"]
    assert list(json.loads(run.eval_json.read_text())["steps"]) == ["2"]
    assert (aside / "reason.txt").read_text() == "why\n"


# --------------------------------------------------------------------------- more of what a user sees


def _edit_state(run: RunDir, step: int, **changes) -> None:
    path = run.checkpoints / f"step-{step:06d}" / "trainer_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_resume_carries_the_time_and_the_skipped_steps_of_the_run_before(new_run, monkeypatch):
    cfg, run = new_run(max_steps=8, checkpoint_every=4, keep_checkpoints=3, log_every=1)
    train(cfg, run)
    shutil.rmtree(run.checkpoints / "step-000008")
    _edit_state(run, 4, elapsed_s=1000.0, skipped_steps=5)  # as if 1000 s and 5 skips before
    summary = train(cfg, run)
    after = [r for r in read_metrics(run.metrics) if r["step"] > 4]
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    assert all(1000.0 <= r["elapsed_s"] < 1000.0 + 600 for r in after)
    assert all(r["skipped_steps"] == 5 for r in after)
    assert summary["wall_s"] >= 1000.0 and summary["skipped_steps"] == 5
    assert state(run, 8)["skipped_steps"] == 5 and state(run, 8)["elapsed_s"] >= 1000.0


def test_what_the_trainer_says(new_run, monkeypatch, capsys):
    cfg, run = new_run(max_steps=6, eval_every=3, checkpoint_every=3, keep_checkpoints=3)
    train(cfg, run)
    err = " ".join(capsys.readouterr().err.split())
    assert "model: 40,480 parameters; 256 tokens per step (1 × 1 × 8 × 32); device cpu, float32" in err
    assert "193 windows per epoch" in err
    assert "step 3/6: loss " in err and "step 6/6: loss " in err and ", val loss " in err
    assert " tokens/s" in err and "MFU" in err
    assert "replicas" not in err and "process(es)" not in err  # one process: no parallel layout named
    shutil.rmtree(run.checkpoints / "step-000006")
    train(cfg, run)
    err = " ".join(capsys.readouterr().err.split())
    flat = "".join(err.split())  # (the console wraps a long path anywhere)
    assert "resuming training from " in err and "step-000003(step3)" in flat
    assert "step 6/6" in err and "step 3/6" not in err


def test_mfu_is_the_achieved_flops_over_the_measured_peak_and_absent_without_a_peak(new_run, monkeypatch,
                                                                                  capsys):
    from fmforge.hardware import HardwareError, device_peak_flops

    cfg, run = new_run(max_steps=3, log_every=1)
    train(cfg, run)
    peak = device_peak_flops("cpu", "float32")
    for r in read_metrics(run.metrics):
        # model FLOPs utilisation (PaLM): tokens/s × FLOPs per token / peak FLOP/s
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / peak, abs=1e-4)

    def unknown(*a):
        raise HardwareError("no peak known for this device")

    monkeypatch.setattr(loop, "device_peak_flops", unknown)
    cfg, run = new_run("b", max_steps=2, log_every=1)
    capsys.readouterr()
    train(cfg, run)
    assert all("mfu" not in r for r in read_metrics(run.metrics))
    err = said(capsys)
    assert "MFU not logged: no peak known for this device" in err and "MFU 0" not in err


def test_validation_records_bits_per_byte_and_tensorboard_only_when_asked(new_run):
    cfg, run = new_run(max_steps=2, eval_every=2, log_every=1)
    train(cfg, run)
    last = read_metrics(run.metrics)[-1]
    assert last["val_bits_per_byte"] > 0 and last["val_loss"] > 0
    assert not (run.root / "tb").exists()  # tensorboard: false
    cfg, run = new_run("tb", max_steps=2, tensorboard=True)
    train(cfg, run)
    assert list((run.root / "tb").glob("events.out.tfevents.*"))


def test_training_started_from_another_thread_runs_without_signal_handlers(new_run):
    import threading

    cfg, run = new_run(max_steps=2)
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=train(cfg, run)))
    worker.start()
    worker.join(timeout=300)
    assert result["summary"]["steps"] == 2


def test_activation_checkpointing_recomputes_each_block_and_only_when_asked(new_run, monkeypatch):
    import torch.utils.checkpoint as ckpt

    calls = {"n": 0}
    checkpoint = ckpt.checkpoint

    def counting(*a, **kw):
        calls["n"] += 1
        assert kw.get("use_reentrant") is False
        return checkpoint(*a, **kw)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    cfg, run = new_run(max_steps=2, eval_every=1000)
    train(cfg, run)
    assert calls["n"] == 0
    cfg, run = new_run("ac", max_steps=2, eval_every=1000, activation_checkpointing=True)
    train(cfg, run)
    # 2 blocks, 2 steps of one micro-batch, plus the final validation's 2 batches
    assert calls["n"] == 2 * 2 + 2 * 2


def test_float16_with_its_scaler_skips_overflows_and_counts_only_incurable_ones(new_run, monkeypatch, capsys):
    # Float16 training needs CUDA; the trainer is told it has float16 here and the
    # gradient scaler runs on the CPU. Every gradient is infinite from step 3 on:
    # the scaler halves its scale of 2^16 at each overflow (16 of them bring it to
    # 1), and only then do the skips count towards the limit of 3.
    _infinite_gradient_at(monkeypatch, set(range(3, 1000)))
    monkeypatch.setattr(loop, "resolve_dtype", lambda device, cfg: "float16")
    cfg, run = new_run(max_steps=40, max_skipped_steps=3, warmup_steps=2, checkpoint_every=1000)
    with pytest.raises(loop.TrainingDiverged, match="3 consecutive steps"):
        train(cfg, run)
    skipped = [r for r in read_metrics(run.metrics) if r.get("skipped")]
    assert [r["step"] for r in skipped] == list(range(3, 3 + 16 + 3))
    assert [r["loss_scale"] for r in skipped] == [2.0 ** (16 - i) for i in range(16)] + [1.0, 0.5, 0.25]
    err = said(capsys)
    assert "step 3: non-finite gradient norm, step skipped (weights and optimizer unchanged; 0 in a row; " \
        "float16 loss scale 65536, halved)" in err
    assert "(weights and optimizer unchanged; 3 in a row; float16 loss scale 0.25, halved)" in err


def test_float16_trains_through_the_scaler_like_float32(new_run, monkeypatch):
    cfg, a = new_run("a", max_steps=3, log_every=1)
    train(cfg, a)
    monkeypatch.setattr(loop, "resolve_dtype", lambda device, cfg: "float16")
    monkeypatch.setattr(loop, "autocast", lambda device, cfg: torch.autocast("cpu", enabled=False))
    cfg, b = new_run("b", max_steps=3, log_every=1)
    train(cfg, b)
    # the scaler multiplies the loss by 2^16 and divides the gradients back: the
    # same steps (to float32 rounding of the scaling)
    assert list(losses(b).values()) == pytest.approx(list(losses(a).values()), rel=1e-5)


def test_a_checkpoint_that_fails_halfway_through_loading_leaves_no_trace_in_the_model(new_run, monkeypatch):
    # Its weights load, then its optimizer state does not: with no checkpoint
    # before it, training starts afresh, from the seed's weights, not the half-load.
    cfg, run = new_run(max_steps=4, checkpoint_every=4, log_every=1)
    train(cfg, run)
    reference = losses(run)
    optim = run.checkpoints / "step-000004" / "optimizer.pt"
    optim.write_bytes(optim.read_bytes()[:100])
    taken = count_steps(monkeypatch)
    train(cfg, run)
    assert taken["n"] == 4 and (run.checkpoints / "step-000004.unreadable").is_dir()
    assert losses(run) == reference


class _Bar:
    """A progress bar that remembers what it was shown."""

    def __init__(self, description, total):
        self.description, self.totals, self.completed, self.infos = description, [total], 0, []

    def advance(self, n: float = 1) -> None:
        self.completed += n

    def update(self, completed=None, info=None) -> None:
        if completed is not None:
            self.completed = completed
        if info is not None:
            self.infos.append(info)

    def set_total(self, total) -> None:
        self.totals.append(total)


def _recording_bars(monkeypatch) -> list:
    import contextlib

    bars = []

    @contextlib.contextmanager
    def progress_bar(description, total, unit=""):
        bars.append(_Bar(description, total))
        yield bars[-1]

    monkeypatch.setattr(loop, "progress_bar", progress_bar)
    return bars


def test_the_progress_bar_counts_the_steps_of_a_resumed_run_and_shows_the_losses(new_run, monkeypatch):
    bars = _recording_bars(monkeypatch)
    cfg, run = new_run(max_steps=6, checkpoint_every=3, keep_checkpoints=3, eval_every=3, log_every=1)
    train(cfg, run)
    shutil.rmtree(run.checkpoints / "step-000006")
    train(cfg, run)
    first, resumed = bars
    assert first.description == "training" and first.totals == [6] and first.completed == 6
    assert resumed.totals == [6] and resumed.completed == 6  # from 3, then 3 steps
    assert len(resumed.infos) == 3
    assert all(i.startswith("loss ") and " tok/s" in i for i in resumed.infos)
    assert " · val " in resumed.infos[-1] and " · val " not in resumed.infos[0]
    last = read_metrics(run.metrics)[-1]
    assert resumed.infos[-1].startswith(f"loss {last['loss']:.3f} · ")
    assert resumed.infos[-1].endswith(f" · val {last['val_loss']:.3f}")


def test_the_progress_bar_of_a_budget_learns_its_total_at_the_decision(new_run, monkeypatch):
    _scripted_clock(monkeypatch)
    bars = _recording_bars(monkeypatch)
    cfg, run = new_run(checkpoint_every=1000, **BUDGET)
    train(cfg, run)
    assert bars[0].totals == [None, 19] and bars[0].completed == 19


def test_a_save_that_fails_without_an_errno_on_a_full_disk_is_a_full_disk(new_run, monkeypatch):
    # torch.save reports a full disk only as "unexpected pos": the free space says it.
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return usage(10 << 30, (10 << 30) - 4096, 4096)  # 4 KiB left

    def torch_save_on_a_full_disk(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1152 vs 1044")

    save = loop.save_checkpoint
    monkeypatch.setattr(loop.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(loop, "save_checkpoint", torch_save_on_a_full_disk)
    cfg, run = new_run(max_steps=2)
    with pytest.raises(RunDirWriteError) as caught:
        train(cfg, run)
    assert caught.value.errno == errno.ENOSPC
    assert "no space left on device" in str(caught.value).lower()
    assert asked == [run.checkpoints.parent]  # checkpoints/ not made yet: the disk under the run
    # once checkpoints/ exists, the disk under it is asked
    monkeypatch.setattr(loop, "save_checkpoint",
                        lambda root, step, *a, **kw: save(root, step, *a, **kw) if step < 4
                        else torch_save_on_a_full_disk())
    asked.clear()
    cfg, run = new_run("a2", max_steps=4, checkpoint_every=2)
    with pytest.raises(RunDirWriteError, match="The checkpoint of step 4 was not written"):
        train(cfg, run)
    assert asked == [run.checkpoints]
    monkeypatch.setattr(loop, "save_checkpoint", torch_save_on_a_full_disk)
    # with 1 MiB or more left (or no way to tell), the error is the error
    for free in (1 << 20, 3 << 19):
        monkeypatch.setattr(loop.shutil, "disk_usage", lambda p, free=free: usage(10 << 30, 0, free))
        with pytest.raises(RuntimeError, match="unexpected pos"):
            train(*new_run(f"b{free}", max_steps=2))

    def unknown(p):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(loop.shutil, "disk_usage", unknown)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        train(*new_run("c", max_steps=2))


def test_set_aside_of_a_run_without_checkpoints_only_records_why(tmp_path):
    run = RunDir(tmp_path)
    loop.set_aside(run, "--force")
    aside = next((tmp_path / "checkpoints.previous").iterdir())
    assert [p.name for p in aside.iterdir()] == ["reason.txt"]
    assert not run.checkpoints.exists()


def test_force_on_a_run_without_checkpoints_sets_nothing_aside(new_run):
    cfg, run = new_run(max_steps=2)
    train(cfg, run, fresh=True)
    assert not (run.root / "checkpoints.previous").exists()
    assert steps_of(run.checkpoints) == [2]


def test_the_summary_s_throughput_is_its_tokens_over_its_wall_time(new_run):
    # train.json's tokens_per_s is what the run trained over the time it took: for a
    # fresh run, its tokens over its wall_s, which is rounded to 10 ms (the bound's
    # 0.006 s) and also holds the few milliseconds after the last step (its 1%).
    cfg, run = new_run("speed", max_steps=6, log_every=2)
    summary = train(cfg, run)
    assert summary["wall_s"] > 0 and summary["tokens"] > 0
    rel = 0.01 + 0.006 / summary["wall_s"]
    assert summary["tokens_per_s"] == pytest.approx(summary["tokens"] / summary["wall_s"], rel=rel)
