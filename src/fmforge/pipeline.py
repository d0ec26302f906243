"""Runs the stages in order and skips those whose inputs did not change.

A stage's fingerprint hashes its own config section(s) together with the
fingerprint of the stage before it (for the data stage: the listing of the source
files), so a change anywhere reruns exactly that stage and the ones after it.
Completed stages are recorded in ``stages.json`` in the run directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from fmforge.config import RunConfig
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_write_text, fingerprint

STAGES = ("data", "tokenizer", "tokenize", "train", "eval")
UPSTREAM = {"tokenizer": "data", "tokenize": "tokenizer", "train": "tokenize", "eval": "train"}
COMMAND = {"data": "data", "tokenizer": "tokenizer", "tokenize": "tokenize", "train": "train",
           "eval": "eval"}

# Train settings that do not change what is learned, so changing them does not retrain.
_TRAIN_NON_SEMANTIC = {"log_every", "keep_checkpoints", "num_threads", "device"}


class StageOrderError(RuntimeError):
    """A stage was asked for before the stage it reads from completed."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran" | "skipped"
    seconds: float
    summary: dict = field(default_factory=dict)


def own_config(cfg: RunConfig, stage: str) -> dict:
    """The parts of the config a stage's output depends on."""
    if stage == "data":
        from fmforge.data.stage import data_inputs_fingerprint

        return {"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed,
                "files": data_inputs_fingerprint(cfg)}
    if stage == "tokenizer":
        return {"tokenizer": cfg.tokenizer.model_dump(mode="json", exclude={"encode_batch_docs"})}
    if stage == "tokenize":
        return {"vocab_size": cfg.vocab_size, "eos": cfg.tokenizer.eos_token}
    if stage == "train":
        return {"model": cfg.resolved_model().model_dump(mode="json"), "seed": cfg.seed,
                "train": cfg.train.model_dump(mode="json", exclude=_TRAIN_NON_SEMANTIC)}
    if stage == "eval":
        return {"eval": cfg.eval.model_dump(mode="json", exclude={"sample_prompt", "sample_max_new_tokens", "sample_temperature", "sample_top_k"})}
    raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def stage_fingerprint(cfg: RunConfig, run: RunDir, stage: str, upstream_fp: str | None) -> str:
    if stage != "data" and upstream_fp is None:
        up = UPSTREAM[stage]
        record = run.stage_record(up)
        if record is None:
            raise StageOrderError(
                f"stage {stage!r} reads the output of {up!r}, which has not completed in "
                f"{run.root}: run `fmforge {COMMAND[up]} CONFIG` (or `fmforge run CONFIG`) first"
            )
        upstream_fp = record["fingerprint"]
    return fingerprint(stage, own_config(cfg, stage), upstream_fp)


def _runner(stage: str) -> Callable[[RunConfig, RunDir, str], dict]:
    # Imported lazily so `fmforge --help` does not load torch.
    if stage == "data":
        from fmforge.data.stage import run_data_stage

        return lambda cfg, run, fp: run_data_stage(cfg, run)
    if stage == "tokenizer":
        from fmforge.tokenizer.train import run_tokenizer_stage

        return lambda cfg, run, fp: run_tokenizer_stage(cfg, run)
    if stage == "tokenize":
        from fmforge.tokenizer.encode import run_tokenize_stage

        return lambda cfg, run, fp: run_tokenize_stage(cfg, run)
    if stage == "train":
        from fmforge.train.loop import run_train_stage

        return run_train_stage
    if stage == "eval":
        from fmforge.eval.stage import run_eval_stage

        return lambda cfg, run, fp: run_eval_stage(cfg, run)
    raise ValueError(f"unknown stage {stage!r}")


def prepare_run_dir(cfg: RunConfig) -> RunDir:
    run = RunDir(cfg.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, cfg.to_yaml())
    return run


def run_stage(cfg: RunConfig, run: RunDir, stage: str, force: bool = False,
              upstream_fp: str | None = None) -> tuple[StageOutcome, str]:
    fp = stage_fingerprint(cfg, run, stage, upstream_fp)
    record = run.stage_record(stage)
    if not force and record is not None and record["fingerprint"] == fp:
        log(f"[dim]{stage}: up to date, skipped (use --force to redo)[/dim]")
        return StageOutcome(stage, "skipped", 0.0, record.get("summary", {})), fp
    log(f"[bold cyan]▶ {stage}[/bold cyan]")
    if force and stage == "train" and run.checkpoints.exists():
        import shutil

        shutil.rmtree(run.checkpoints)
    run.invalidate(stage)
    if stage == "train":
        record_plan(cfg, run, fp)
    t0 = time.perf_counter()
    summary = _runner(stage)(cfg, run, fp)
    seconds = time.perf_counter() - t0
    run.mark_complete(stage, fp, {**summary, "stage_seconds": round(seconds, 2)})
    return StageOutcome(stage, "ran", seconds, summary), fp


def record_plan(cfg: RunConfig, run: RunDir, train_fp: str) -> None:
    """Write the plan (predicted tokens/s, time, cost, memory) before training starts,
    so the run can be compared with it afterwards. A resumed run keeps its plan."""
    import json

    from fmforge.plan.estimate import plan_for_run
    from fmforge.rundir import atomic_write_json

    from fmforge.train.device import configure_threads

    configure_threads(cfg.train)  # the CPU peak is measured with the threads training uses
    if run.plan_json.exists():
        existing = json.loads(run.plan_json.read_text(encoding="utf-8"))
        if existing.get("train_fingerprint") == train_fp:
            return
    plan = plan_for_run(cfg)
    plan["train_fingerprint"] = train_fp
    atomic_write_json(run.plan_json, plan)
    log(f"plan: {plan['tokens_per_s']:,.0f} tokens/s predicted on {plan['gpu']} "
        f"at MFU {plan['mfu']:.2f}; {plan['tokens']:,.0f} tokens in about "
        f"{plan['tokens'] / plan['tokens_per_s'] / 60:.1f} min")


def run_pipeline(cfg: RunConfig, force: bool = False,
                 stages: tuple[str, ...] = STAGES) -> tuple[RunDir, list[StageOutcome]]:
    run = prepare_run_dir(cfg)
    outcomes: list[StageOutcome] = []
    upstream_fp: str | None = None
    for stage in stages:
        outcome, upstream_fp = run_stage(cfg, run, stage, force=force, upstream_fp=upstream_fp)
        outcomes.append(outcome)
    return run, outcomes
