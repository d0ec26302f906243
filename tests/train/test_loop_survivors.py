"""Behaviours of the training loop that the full mutation run of train/loop.py
(issue 32) found unchecked by its selected tests, each checked against what a
user sees: docs/training.md's promise, a reference run without the feature, or
a hand count."""

from __future__ import annotations

import functools
import json
import re
import signal

import pytest
import torch

import fmforge.train.loop as loop
from fmforge.rundir import read_metrics


def _train(cfg, run, lineage: str = "L", fresh: bool = False) -> dict:
    return loop.run_train_stage(cfg, run, fingerprint="fp", fresh=fresh, lineage=lineage)


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run.metrics) if "loss" in r and not r.get("skipped")}


def test_compile_true_runs_the_model_through_torch_compile_and_trains_like_eager(new_run, monkeypatch):
    # docs/training.md: `compile: true` "wraps the model in torch.compile";
    # checkpoints and the numbers are unchanged. torch.compile's own eager
    # backend (TorchDynamo traces the model, nothing is code-generated) keeps
    # this to seconds on any CPU; Dynamo's counters say whether the model's
    # forward was traced at all.
    from torch._dynamo.utils import counters

    cfg, eager = new_run("eager", max_steps=3, log_every=1, schedule="constant")
    _train(cfg, eager)

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg, compiled = new_run("compiled", max_steps=3, log_every=1, schedule="constant", compile=True)
    try:
        _train(cfg, compiled)
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()  # no compiled state left for later tests, pass or fail
    assert graphs >= 1  # the model went through Dynamo
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-5)
    assert sorted(_losses(compiled)) == [1, 2, 3]


def test_a_stop_signal_is_the_trainers_own_whatever_handler_came_before(new_run, monkeypatch):
    # docs/training.md: SIGINT or SIGTERM saves a checkpoint at the end of the
    # step and stops; the handlers are given back afterwards. Before training, the
    # test process's own handlers raise an error of their own: a trainer that
    # installed none would meet it (under mutmut's fork server SIGTERM's inherited
    # handler ends the process with exit status 0, which read as a pass).
    class ReachedTheTestsHandler(Exception):
        """A stop signal met the test's own handler: the trainer had installed none."""

    def tests_handler(signum, frame):
        raise ReachedTheTestsHandler(signal.Signals(signum).name)

    before = {sig: signal.signal(sig, tests_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cfg, run = new_run(max_steps=5, checkpoint_every=100)
        lr_at = loop.lr_at

        def lr_at_and_signal(s, max_steps, tcfg):
            if s == 1:  # while step 2 runs
                signal.raise_signal(signal.SIGTERM)
            return lr_at(s, max_steps, tcfg)

        monkeypatch.setattr(loop, "lr_at", lr_at_and_signal)
        with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM at step 2"):
            _train(cfg, run)
        assert (run.checkpoints / "step-000002").is_dir()  # saved where it stopped
        assert signal.getsignal(signal.SIGINT) is tests_handler
        assert signal.getsignal(signal.SIGTERM) is tests_handler
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            return set(f.read().split())
    except OSError:
        return set()


def test_dtype_auto_trains_at_the_documented_precision_and_float16_is_refused(new_run, capsys):
    # docs/training.md, "Precision": `auto` (the default) is bfloat16 on CPUs
    # with AVX512-BF16 or AMX (the kernel's cpuinfo flags), else float32; float16
    # is CUDA only, "an error elsewhere". Every other test here trains in float32,
    # so the default's path is checked here.
    from fmforge.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("the CPU's default is checked where there is no CUDA device")
    expected = "bfloat16" if _cpu_flags() & {"avx512_bf16", "amx_bf16"} else "float32"
    cfg, run = new_run("auto", max_steps=2, log_every=1, dtype="auto")
    capsys.readouterr()
    assert _train(cfg, run)["steps"] == 2
    # the start line as the README shows it
    said = " ".join(capsys.readouterr().err.split())
    assert re.search(r"model: [\d,]+ parameters; 256 tokens per step \(1 × 1 × 8 × 32\); "
                     rf"device cpu, {expected}; [\d,]+ windows per epoch", said), said
    assert sorted(_losses(run)) == [1, 2]

    cfg, run = new_run("fp16", max_steps=2, dtype="float16")
    with pytest.raises(UserError, match="float16 needs CUDA"):
        _train(cfg, run)
    assert not run.checkpoints.exists() or not any(run.checkpoints.iterdir())


def test_a_tokenize_record_without_an_output_fingerprint_still_guards_generate(new_run):
    # A stages.json written before stages recorded an `output` fingerprint has
    # only the tokenize stage's `fingerprint`, which is then what later stages
    # and `generate` chain on (rundir.mark_complete's default, loading's
    # fallback). The model trained on those tokens loads, and is refused once
    # the tokens are rebuilt (another fingerprint), as for a new record.
    from fmforge.inference.loading import StaleCheckpointError, load_trained
    from fmforge.rundir import atomic_write_json

    cfg, run = new_run(max_steps=2)
    records = json.loads(run.stages_json.read_text())
    del records["tokenize"]["output"]
    atomic_write_json(run.stages_json, records)
    _train(cfg, run)
    assert load_trained(run, device="cpu").step == 2
    records["tokenize"]["fingerprint"] = "tokens-rebuilt"
    atomic_write_json(run.stages_json, records)
    with pytest.raises(StaleCheckpointError, match="trained on tokens that have since been rebuilt"):
        load_trained(run, device="cpu")


def test_tokens_without_a_tokenize_record_train_and_load(new_run):
    # A run folder whose stages.json has no tokenize record (tokens/ brought in
    # by hand, stages.json lost): training needs only tokens/ and the tokenizer,
    # and its checkpoint names no tokens, so `generate` loads it.
    from fmforge.inference.loading import load_trained
    from fmforge.rundir import atomic_write_json

    cfg, run = new_run(max_steps=2)
    records = json.loads(run.stages_json.read_text())
    del records["tokenize"]
    atomic_write_json(run.stages_json, records)
    assert _train(cfg, run)["steps"] == 2
    assert load_trained(run, device="cpu").step == 2


def test_global_batch_tokens_set_the_accumulation_as_documented(new_run):
    # docs/training.md: accumulation = global_batch_tokens / (micro_batch_size ×
    # seq_len × processes). 512 tokens on one process of 8 × 32: 2 micro-batches
    # a step, the same training as grad_accum_steps=2 given directly.
    cfg, by_tokens = new_run("tokens", max_steps=2, log_every=1, global_batch_tokens=512)
    summary = _train(cfg, by_tokens)
    assert summary["tokens"] == 2 * 512
    assert [r["tokens"] for r in read_metrics(by_tokens.metrics) if "loss" in r] == [512, 1024]
    cfg, by_steps = new_run("steps", max_steps=2, log_every=1, grad_accum_steps=2)
    _train(cfg, by_steps)
    assert _losses(by_tokens) == _losses(by_steps)


def test_bfloat16_trains_under_autocast_near_float32_with_float32_weights_and_its_own_peak(new_run, monkeypatch):
    # docs/training.md, "Precision": `bfloat16` works on any device through
    # torch.autocast(bfloat16), with the weights (and checkpoints) in float32.
    # Its losses are then float32's to within bf16's rounding (8 bits of
    # mantissa, ~0.4%) but not equal to them: a run that left autocast off
    # would log float32's numbers exactly.
    from safetensors.torch import load_file

    # docs/planner.md: the CPU's peak (MFU's denominator, docs/training.md) is its
    # matmul rate "in the run's precision (fp32, or bf16 for a bf16 run)". A CPU
    # stood in whose bf16 rate is 4× its fp32 rate (and no time spent measuring).
    peaks = {("cpu", "float32"): 1e10, ("cpu", "bfloat16"): 4e10}
    monkeypatch.setattr(loop, "device_peak_flops", lambda device, dtype: peaks[device, dtype])
    cfg, fp32 = new_run("fp32", max_steps=3, log_every=1, eval_every=3, schedule="constant")
    _train(cfg, fp32)
    cfg, bf16 = new_run("bf16", max_steps=3, log_every=1, eval_every=3, schedule="constant", dtype="bfloat16")
    _train(cfg, bf16)
    ref, got = _losses(fp32), _losses(bf16)
    assert sorted(got) == [1, 2, 3]
    assert got == pytest.approx(ref, rel=2e-2)
    assert got != ref
    val = {r["step"]: r["val_loss"] for r in read_metrics(bf16.metrics) if "val_loss" in r}
    val_ref = {r["step"]: r["val_loss"] for r in read_metrics(fp32.metrics) if "val_loss" in r}
    assert val == pytest.approx(val_ref, rel=2e-2) and val != val_ref
    for run, peak in ((fp32, 1e10), (bf16, 4e10)):
        for r in (r for r in read_metrics(run.metrics) if "loss" in r):
            assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / peak, abs=1e-4), r
    weights = load_file(str(bf16.checkpoints / "step-000003" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}


def test_a_checkpoints_trainer_state_has_the_documented_fields_worked_out_by_hand(new_run):
    # docs/training.md, "Checkpoints": trainer_state.json holds `step,
    # fingerprint, lineage, max_steps, tokens, elapsed_s, params, seed,
    # tokens_fingerprint, skipped_steps, model` (the architecture, so loading
    # never needs config.yaml). Each against its source: the call's fingerprint
    # and lineage, 3 steps × 8 × 32 tokens, the weights' own element count (a
    # tied head stored once), the config's seed, stages.json's tokens.
    from safetensors.torch import load_file

    from fmforge.config import ModelConfig

    cfg, run = new_run(max_steps=3)
    loop.run_train_stage(cfg, run, fingerprint="fp-3", lineage="L-3")
    ckpt = run.checkpoints / "step-000003"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert set(state) == {"step", "fingerprint", "lineage", "max_steps", "tokens", "elapsed_s", "params",
                          "seed", "tokens_fingerprint", "skipped_steps", "model"}
    assert (state["step"], state["fingerprint"], state["lineage"], state["max_steps"]) == (3, "fp-3", "L-3", 3)
    assert state["tokens"] == 3 * 8 * 32
    assert state["params"] == sum(t.numel() for t in load_file(str(ckpt / "model.safetensors")).values())
    assert state["seed"] == cfg.seed == 7
    tokenize = json.loads(run.stages_json.read_text())["tokenize"]
    assert state["tokens_fingerprint"] == tokenize["output"]
    assert state["skipped_steps"] == 0 and 0 < state["elapsed_s"] < 600
    assert ModelConfig.model_validate(state["model"]) == cfg.resolved_model()
    assert json.loads(json.dumps(state["model"])) == state["model"]


def test_a_cosine_run_keeps_only_its_newest_checkpoints(new_run):
    # docs/training.md: pruning keeps "the newest keep_checkpoints, plus the step
    # where the WSD decay begins": no other schedule protects a step, not even
    # the end of a cosine warmup.
    cfg, run = new_run(max_steps=8, schedule="cosine", warmup_steps=2, checkpoint_every=2, keep_checkpoints=2)
    _train(cfg, run)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-000006", "step-000008"]


def test_a_full_disk_names_the_checkpoint_folder_and_the_step_a_rerun_resumes_from(new_run, monkeypatch):
    # docs/training.md: a checkpoint that cannot be written stops the run "with a
    # message naming the directory and the step a rerun resumes from". The
    # message's last words are that step, and a rerun on a disk with room again
    # does resume from it.
    import errno

    from fmforge.rundir import RunDirWriteError
    from fmforge.train.checkpoint import list_checkpoints

    save = loop.save_checkpoint

    def full_at_6(root, step, *a, **kw):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(root, step, *a, **kw)

    monkeypatch.setattr(loop, "save_checkpoint", full_at_6)
    cfg, run = new_run(max_steps=8, checkpoint_every=3)
    with pytest.raises(RunDirWriteError) as caught:
        _train(cfg, run)
    message = "".join(str(caught.value).split())  # the console may wrap a path anywhere
    assert "".join(str(run.checkpoints).split()) in message
    assert message.endswith("trainingresumesfromstep3")
    monkeypatch.setattr(loop, "save_checkpoint", save)
    assert [s for s, _ in list_checkpoints(run.checkpoints)] == [3]
    _train(cfg, run)
    assert [s for s, _ in list_checkpoints(run.checkpoints)][-1] == 8


def test_a_held_out_split_of_two_tokens_is_validated_on_its_one_prediction(new_run, monkeypatch):
    # Two tokens are the fewest that hold a prediction: the validation of such a
    # split is the loss of predicting the second from the first, here worked out
    # from the final checkpoint's weights with the model's forward and
    # cross_entropy (the last step validates: docs/training.md's `eval_every`
    # "and at the end").
    import numpy as np
    import torch.nn.functional as F

    from fmforge.model.transformer import Transformer
    from fmforge.train.checkpoint import load_checkpoint

    open_tokens = loop.open_tokens
    kept = {}

    def two_val_tokens(run, split):
        tokens = open_tokens(run, split)
        if split == "val":
            tokens = kept["val"] = np.asarray(tokens[0:2], dtype=np.int64)
        return tokens

    monkeypatch.setattr(loop, "open_tokens", two_val_tokens)
    cfg, run = new_run(max_steps=2, log_every=1)
    _train(cfg, run)
    logged = [r for r in read_metrics(run.metrics) if "val_loss" in r]
    assert [r["step"] for r in logged] == [2]
    model = Transformer(cfg.resolved_model())
    load_checkpoint(run.checkpoints / "step-000002", model)
    model.eval()
    first, second = (int(t) for t in kept["val"])
    with torch.no_grad():
        logits = model(torch.tensor([[first]]))
    expected = float(F.cross_entropy(logits[0].float(), torch.tensor([second])))
    assert logged[0]["val_loss"] == pytest.approx(expected, abs=2e-5)


def test_skips_at_the_very_start_count_from_one(new_run, nan_added_to_the_loss_of_step, capsys):
    # docs/training.md: "this many consecutive non-finite steps stop the run".
    # With max_skipped_steps=2, a run whose first step alone is not finite has
    # one skip in a row, not two: it trains on to its end.
    nan_added_to_the_loss_of_step(1)
    cfg, run = new_run(max_steps=3, log_every=1, max_skipped_steps=2, schedule="constant", warmup_steps=0)
    capsys.readouterr()
    summary = _train(cfg, run)
    assert summary["steps"] == 3 and summary["skipped_steps"] == 1
    assert "1 in a row" in " ".join(capsys.readouterr().err.split())
    assert sorted(_losses(run)) == [2, 3]
    # its record, as docs/training.md lists it: {"step", "skipped": true, "reason",
    # "loss", "grad_norm", "skipped_steps", "lr"}; a constant rate without warmup is train.lr
    skipped = [r for r in read_metrics(run.metrics) if r.get("skipped")]
    assert len(skipped) == 1 and set(skipped[0]) == {"step", "skipped", "reason", "loss", "grad_norm",
                                                     "skipped_steps", "lr"}
    assert (skipped[0]["step"], skipped[0]["reason"], skipped[0]["loss"]) == (1, "non-finite loss", None)
    assert skipped[0]["lr"] == cfg.train.lr and skipped[0]["skipped_steps"] == 1


def test_the_default_clip_of_one_clips(new_run):
    # docs/training.md: `grad_clip` (default 1.0) clips the global gradient norm
    # to this; 0 is no clipping. The tiny model's gradient norms go above 1
    # (the unclipped run logs them), so a clip at 1.0 trains like a clip a hair
    # above it, and unlike no clip.
    cfg, off = new_run("off", max_steps=3, log_every=1, grad_clip=0.0, schedule="constant", warmup_steps=0)
    _train(cfg, off)
    norms = [r["grad_norm"] for r in read_metrics(off.metrics) if "loss" in r]
    assert max(norms) > 1.05, norms
    cfg, one = new_run("one", max_steps=3, log_every=1, grad_clip=1.0, schedule="constant", warmup_steps=0)
    _train(cfg, one)
    cfg, near = new_run("near", max_steps=3, log_every=1, grad_clip=1.000001, schedule="constant", warmup_steps=0)
    _train(cfg, near)
    # (Adam's updates barely feel a gradient's scale: the weights show it, not the losses)
    from safetensors.torch import load_file

    w = {name: load_file(str(run.checkpoints / "step-000003" / "model.safetensors"))
         for name, run in (("off", off), ("one", one), ("near", near))}
    gap = lambda a, b: max(float((w[a][k] - w[b][k]).abs().max()) for k in w[a])  # noqa: E731
    assert gap("one", "near") < 1e-6 < 1e-5 < gap("one", "off"), (gap("one", "near"), gap("one", "off"))


def test_accumulated_micro_batches_log_the_gradient_norm_of_their_mean_loss(new_run):
    # docs/training.md: `loss` is the mean over the step's micro-batches and
    # `grad_norm` the global gradient norm (before clipping) of that step's
    # loss. Two micro-batches of 4 windows hold the same 8 windows as one of 8,
    # so the same mean loss, the same gradient and the same norm.
    cfg, one = new_run("one", max_steps=3, log_every=1, grad_clip=0.0)
    _train(cfg, one)
    cfg, two = new_run("two", max_steps=3, log_every=1, grad_clip=0.0, micro_batch_size=4, grad_accum_steps=2)
    _train(cfg, two)
    def norms(run):
        return [r["grad_norm"] for r in read_metrics(run.metrics) if "loss" in r]

    assert len(norms(one)) == 3
    assert norms(two) == pytest.approx(norms(one), rel=1e-3)


def test_throughput_over_several_steps_counts_all_their_tokens(new_run, one_second_per_reading):
    # docs/training.md: `tokens_per_s` is the training tokens since the last
    # record over the seconds since then. With log_every=2 a record covers two
    # steps (512 tokens); a clock that moves one second at each reading makes
    # the figure exact to its rounding: the records' own tokens and elapsed_s.
    cfg, run = new_run(max_steps=6, log_every=2)
    _train(cfg, run)
    records = [r for r in read_metrics(run.metrics) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 4, 6]  # the first step is always logged
    for before, r in zip(records, records[1:]):
        assert r["tokens_per_s"] == round((r["tokens"] - before["tokens"]) / (r["elapsed_s"] - before["elapsed_s"]), 1), r


def test_a_minutes_budget_decides_on_the_seconds_since_the_stage_began(new_run, monkeypatch):
    # docs/training.md, "A budget in minutes": the step count is decided from the
    # measured step time and the time already spent; train_budget.json records
    # that time (`elapsed_s_at_decision`). The loop's clock here starts where a
    # machine up for 11 days has its perf_counter (1e6 s) and moves 1 ms at each
    # reading, so the time spent at the decision is at most 1 ms per reading
    # taken by then, whatever the clock's origin.
    import time
    from types import SimpleNamespace

    from fmforge.train.budget import StepBudget

    readings = {"n": 0}

    def perf_counter():
        readings["n"] += 1
        return 1e6 + readings["n"] * 1e-3

    clock = SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.perf_counter = perf_counter
    monkeypatch.setattr(loop, "time", clock)  # the loop's own clock only
    decide, seen = StepBudget.decide, {}

    def watched(self, done, elapsed_s, accum):
        seen["readings"] = readings["n"]
        return decide(self, done, elapsed_s, accum)

    monkeypatch.setattr(StepBudget, "decide", watched)
    cfg, run = new_run(max_steps=None, max_minutes=0.002, warmup_steps=8, log_every=1)
    summary = _train(cfg, run)
    record = json.loads((run.root / "train_budget.json").read_text())
    assert 0 < record["elapsed_s_at_decision"] <= seen["readings"] * 1e-3 + 0.01
    assert summary["steps"] == record["max_steps"] > cfg.train.warmup_steps + 1


def test_a_diverged_run_says_what_to_lower_or_raise_and_where_it_resumes(new_run, monkeypatch):
    # docs/training.md: `max_skipped_steps` consecutive skips stop the run "with a
    # message naming the last good checkpoint; rerunning resumes from it (lower
    # `lr` or raise `warmup_steps` first)".
    forward = loop.Transformer.forward
    calls = {"n": 0}

    def nan_from_the_third_training_forward(self, *a, **kw):
        out = forward(self, *a, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                return out + torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(loop.Transformer, "forward", nan_from_the_third_training_forward)
    cfg, run = new_run(max_steps=8, checkpoint_every=2, max_skipped_steps=2)
    with pytest.raises(loop.TrainingDiverged) as caught:
        _train(cfg, run)
    message = " ".join(str(caught.value).split())
    assert "lower train.lr, raise train.warmup_steps or check the data" in message
    assert "the last good checkpoint (step 2) is intact and a rerun resumes from it" in message
