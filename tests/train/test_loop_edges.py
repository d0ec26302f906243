"""Edges of the training loop's resume path that the main loop tests leave open,
each checked against the documented contract (docs/training.md), not against the
loop's own arithmetic."""

from __future__ import annotations

import json
import shutil

import pytest

import fmforge.train.loop as loop
from fmforge.rundir import read_metrics


def test_elapsed_seconds_count_every_session_after_a_resume(new_run):
    # docs/training.md: a record's (and a checkpoint's) elapsed_s is "training
    # seconds so far, over all sessions". A first session that trained for 1000 s
    # (its checkpoint says so), continued for two more steps: every record the
    # second session logs, its checkpoint and the stage's wall time start from
    # those 1000 s, not from 0.
    cfg, run = new_run(max_steps=2, log_every=1, schedule="constant")
    loop.run_train_stage(cfg, run, fingerprint="fp-2", lineage="L")
    state_path = run.checkpoints / "step-000002" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["elapsed_s"] = 1000.0
    state_path.write_text(json.dumps(state))

    cfg4, _ = new_run("cfg4", max_steps=4, log_every=1, schedule="constant")
    summary = loop.run_train_stage(cfg4, run, fingerprint="fp-4", lineage="L")
    records = {r["step"]: r for r in read_metrics(run.metrics)}
    assert sorted(records) == [1, 2, 3, 4]
    assert records[1]["elapsed_s"] < 1000 and records[2]["elapsed_s"] < 1000  # the first session's own
    assert 1000 <= records[3]["elapsed_s"] <= records[4]["elapsed_s"] < 1000 + 600
    after = json.loads((run.checkpoints / "step-000004" / "trainer_state.json").read_text())
    assert 1000 <= after["elapsed_s"] < 1000 + 600
    assert 1000 <= summary["wall_s"] < 1000 + 600


def test_mfu_of_several_processes_is_over_the_peak_of_all_their_devices(new_run, monkeypatch):
    # Model FLOPs utilisation (Chowdhery et al. 2022, PaLM, appendix B): the FLOPs
    # the whole job achieves over the peak of all its devices. Two processes (one
    # stood in for here: the loop sees a world of 2) log the tokens of both, so the
    # MFU divides by twice one device's peak.
    import torch

    from fmforge.hardware import device_peak_flops
    from fmforge.launch import Launch
    from fmforge.train.distributed import Parallel

    world = Parallel(launch=Launch(rank=0, local_rank=0, world_size=2), mode="none", device=torch.device("cpu"))
    monkeypatch.setattr(loop, "setup_parallel", lambda *a, **kw: world)
    cfg, run = new_run(max_steps=3, log_every=1)
    loop.run_train_stage(cfg, run, fingerprint="fp", lineage="L")
    peak = device_peak_flops("cpu", "float32")
    records = read_metrics(run.metrics)
    assert [r["tokens"] for r in records] == [s * 8 * 32 * 2 for s in (1, 2, 3)]  # both processes' tokens
    for r in records:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / (2 * peak), abs=1e-4)


def test_tensorboard_after_a_resume_shows_each_step_once(new_run):
    # Killed after logging step 4 but before its checkpoint: the rerun resumes from
    # step 2 and trains 3 and 4 again. TensorBoard's own reader (with its default
    # purge of orphaned data) must then see every step once, as metrics.jsonl does,
    # not the killed session's 3 and 4 beside the new ones.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run = new_run(max_steps=4, log_every=1, checkpoint_every=2, keep_checkpoints=5, tensorboard=True)
    loop.run_train_stage(cfg, run, fingerprint="fp", lineage="L")
    shutil.rmtree(run.checkpoints / "step-000004")
    loop.run_train_stage(cfg, run, fingerprint="fp", lineage="L")
    assert [r["step"] for r in read_metrics(run.metrics)] == [1, 2, 3, 4]
    events = EventAccumulator(str(run.root / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_each_logged_record_carries_a_real_gradient_norm_throughput_and_figure(new_run):
    # docs/training.md's metrics.jsonl: every logged step has its gradient norm and
    # tokens/s, a validation its bits per byte. The throughput is the tokens of the
    # interval over its seconds, as the records' own tokens and elapsed_s show (to
    # within a factor of 5: the records round elapsed_s to 10 ms); a throughput of
    # tokens × seconds, a norm that is always null or a figure rounded to a whole
    # number would each mislead a user reading the run.
    cfg, run = new_run(max_steps=6, log_every=1, eval_every=6, schedule="constant")
    loop.run_train_stage(cfg, run, fingerprint="fp", lineage="L")
    records = [r for r in read_metrics(run.metrics) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert isinstance(r["grad_norm"], float) and 0 < r["grad_norm"] < 1e4, r
    # over steps 2-6 together (a step of this tiny model takes milliseconds)
    first, last = records[0], records[-1]
    expected = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    median = sorted(r["tokens_per_s"] for r in records[1:])[2]
    assert expected / 5 < median < expected * 5, (median, expected)
    val = [r for r in read_metrics(run.metrics) if "val_bits_per_byte" in r][-1]
    bpb = val["val_bits_per_byte"]
    assert 0 < bpb < 16 and abs(bpb - round(bpb)) > 1e-6 and round(bpb, 5) == bpb


def test_a_run_continued_from_its_first_step_keeps_that_steps_record(new_run):
    # docs/training.md: a resumed run keeps metrics.jsonl up to the step it resumes
    # from and drops only what came after. Continued from step 1 (a checkpoint at
    # every step), the first session's record of step 1 stays.
    cfg, run = new_run(max_steps=1, log_every=1, checkpoint_every=1, schedule="constant", warmup_steps=0)
    loop.run_train_stage(cfg, run, fingerprint="fp-1", lineage="L")
    first = [r for r in read_metrics(run.metrics) if r.get("step") == 1 and "loss" in r]
    assert len(first) == 1
    cfg3, _ = new_run("cfg3", max_steps=3, log_every=1, checkpoint_every=1, schedule="constant", warmup_steps=0)
    loop.run_train_stage(cfg3, run, fingerprint="fp-3", lineage="L")
    records = [r for r in read_metrics(run.metrics) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0] == first[0]
