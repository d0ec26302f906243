"""Runs the stages in order and skips those whose inputs did not change.

A stage's fingerprint hashes its own config section(s) together with the
fingerprint of the stage before it (for the data stage: the listing of the source
files), so a change anywhere reruns exactly that stage and the ones after it.
Completed stages are recorded in ``stages.json`` in the run directory.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fmforge.config import EmptyHeldOutError, RunConfig
from fmforge.errors import UserError
from fmforge.launch import current_launch
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_write_text, fingerprint, run_lock

STAGES = ("data", "tokenizer", "tokenize", "train", "eval")
UPSTREAM = {"tokenizer": "data", "tokenize": "tokenizer", "train": "tokenize", "eval": "train"}
COMMAND = {"data": "data", "tokenizer": "tokenizer", "tokenize": "tokenize", "train": "train",
           "eval": "eval"}

# Train settings that do not change what is learned, so changing them does not
# retrain: batches depend only on seed and step, and validation changes no state.
# How the work is spread and computed (processes, compile, recomputation) does not
# change the batches or the schedule either, so a run resumes across them.
_TRAIN_NON_SEMANTIC = {"log_every", "keep_checkpoints", "num_threads", "device",
                       "checkpoint_every", "eval_every", "eval_batches", "tensorboard",
                       "compile", "activation_checkpointing", "parallel", "max_skipped_steps"}


class StageOrderError(UserError, RuntimeError):
    """A stage was asked for before the stage it reads from completed."""


@dataclass
class StageOutcome:
    stage: str
    status: str  # "ran" | "skipped"
    seconds: float
    summary: dict = field(default_factory=dict)


def training_lineage(cfg: RunConfig, upstream: str) -> str:
    """What a checkpoint must share with the config to be continued: the train
    fingerprint less ``max_steps`` under WSD, whose learning rate until the decay
    does not depend on it, so a finished run can be extended."""
    own = own_config(cfg, "train")
    if cfg.train.schedule == "wsd":
        own["train"].pop("max_steps", None)
    # The batches depend on the global batch, which grad_accum_steps (unlike
    # global_batch_tokens) leaves to the number of processes.
    own["global_batch_tokens"] = cfg.train.tokens_per_step(cfg.model.seq_len,
                                                           current_launch().world_size)
    return fingerprint("train-lineage", own, upstream)


def own_config(cfg: RunConfig, stage: str) -> dict:
    """The parts of the config a stage's output depends on."""
    if stage == "data":
        from fmforge.data.stage import data_inputs_fingerprint

        # the data config (less how the work is scheduled: executor, workers,
        # work_dir), the seed and every listed file's size and mtime
        return {"inputs": data_inputs_fingerprint(cfg)}
    if stage == "tokenizer":
        own = {"tokenizer": cfg.tokenizer.model_dump(mode="json")}
        if cfg.tokenizer.path is not None:  # a brought tokenizer: its content, not just its path
            import hashlib

            from fmforge.tokenizer.byo import resolve_tokenizer_file

            own["file_sha256"] = hashlib.sha256(resolve_tokenizer_file(cfg.tokenizer.path, cfg.config_dir).read_bytes()).hexdigest()
        return own
    if stage == "tokenize":
        own = {"vocab_size": cfg.vocab_size, "eos": cfg.tokenizer.eos_token}
        if cfg.data.token_budget is not None:  # the token-budget mixture is applied when encoding
            own.update(budget=cfg.data.token_budget, total_tokens=cfg.data.total_tokens, seed=cfg.seed)
        return own
    if stage == "train":
        return {"model": cfg.resolved_model().model_dump(mode="json"), "seed": cfg.seed,
                "train": cfg.train.model_dump(mode="json", exclude=_TRAIN_NON_SEMANTIC)}
    if stage == "eval":
        return {"eval": cfg.eval.model_dump(mode="json", exclude={"sample_prompt", "sample_max_new_tokens", "sample_temperature", "sample_top_k", "report_prompts", "report_max_new_tokens"})}
    raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def stage_fingerprint(cfg: RunConfig, run: RunDir, stage: str, upstream: str | None) -> str:
    """Hash of the stage's own config and of what the stage before it produced
    (``upstream``; read from that stage's record when not given)."""
    if stage != "data" and upstream is None:
        up = UPSTREAM[stage]
        record = run.stage_record(up)
        if record is None:
            raise StageOrderError(
                f"stage {stage!r} reads the output of {up!r}, which is not complete and up to "
                f"date in {run.root}: run `fmforge {COMMAND[up]} CONFIG` (or `fmforge run CONFIG`) first"
            )
        upstream = record.get("output", record["fingerprint"])
    return fingerprint(stage, own_config(cfg, stage), upstream)


def output_fingerprint(stage: str, run: RunDir, fp: str) -> str:
    """What later stages chain on. For the data stage it is the content of the
    shards, so a source file that is touched (or reinstalled) without changing
    reruns only the cheap data stage, not the tokenizer and training after it.
    The other stages are deterministic functions of their fingerprint."""
    if stage != "data":
        return fp
    import hashlib

    digest = hashlib.sha256()
    for shard in sorted(run.data.glob("*.parquet")):
        digest.update(shard.name.encode())
        with open(shard, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _runner(stage: str) -> Callable[[RunConfig, RunDir, str, bool], dict]:
    # Imported lazily so `fmforge --help` does not load torch.
    if stage == "data":
        from fmforge.data.stage import run_data_stage

        return lambda cfg, run, fp, force: run_data_stage(cfg, run)
    if stage == "tokenizer":
        from fmforge.tokenizer.train import run_tokenizer_stage

        return lambda cfg, run, fp, force: run_tokenizer_stage(cfg, run)
    if stage == "tokenize":
        from fmforge.tokenizer.encode import run_tokenize_stage

        return lambda cfg, run, fp, force: run_tokenize_stage(cfg, run)
    if stage == "train":
        from fmforge.train.loop import run_train_stage

        def train(cfg, run, fp, force):
            record = run.stage_record("tokenize")
            lineage = training_lineage(cfg, record.get("output", record["fingerprint"]))
            return run_train_stage(cfg, run, fp, fresh=force, lineage=lineage)

        return train
    if stage == "eval":
        from fmforge.eval.stage import run_eval_stage

        return lambda cfg, run, fp, force: run_eval_stage(cfg, run)
    raise ValueError(f"unknown stage {stage!r}")


def prepare_run_dir(cfg: RunConfig) -> RunDir:
    run = RunDir(cfg.run_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    return run


# The file each data-side stage leaves last; a record without it is not up to date.
_ARTIFACTS = {"data": lambda run: run.data_card, "tokenizer": lambda run: run.tokenizer / "tokenizer.json",
              "tokenize": lambda run: run.tokens / "meta.json"}


def _missing_artifact(run: RunDir, stage: str) -> Path | None:
    artifact = _ARTIFACTS.get(stage)
    if artifact is None or artifact(run).is_file():
        return None
    return artifact(run)


def run_stage(cfg: RunConfig, run: RunDir, stage: str, force: bool = False,
              upstream: str | None = None) -> tuple[StageOutcome, str]:
    """Run one stage unless it is up to date. Returns the outcome and the stage's
    output fingerprint (what the next stage chains on)."""
    launch = current_launch()
    if launch.distributed and stage != "train":
        raise StageOrderError(
            f"under torchrun only `fmforge train` runs ({launch.world_size} processes were "
            f"started for {stage!r}): run the earlier stages once, without torchrun "
            "(`fmforge run CONFIG train.max_steps=...` or stage by stage), then launch training"
        )
    with locked(run, f"fmforge {COMMAND[stage]}", launch.is_main):
        fp = stage_fingerprint(cfg, run, stage, upstream)
        record = run.stage_record(stage)
        missing = _missing_artifact(run, stage)
        if not force and record is not None and record["fingerprint"] == fp and missing is None:
            log(f"[dim]{stage}: up to date, skipped (use --force to redo)[/dim]")
            return StageOutcome(stage, "skipped", 0.0, record.get("summary", {})), record.get("output", fp)
        if record is not None and missing is not None:
            log(f"[yellow]{stage}: {missing} is gone (removed by hand?): building it again[/yellow]")
        log(f"[bold cyan]▶ {stage}[/bold cyan]")
        if launch.is_main:  # the other processes of a torchrun launch only train
            # The config of the stages that ran last is the run's config (a skipped
            # stage does not overwrite it with overrides it ignored).
            atomic_write_text(run.config, cfg.to_yaml())
            run.invalidate(stage)
            if stage == "train":
                record_plan(cfg, run, fp)
        t0 = time.perf_counter()
        summary = _runner(stage)(cfg, run, fp, force)
        seconds = time.perf_counter() - t0
        out = output_fingerprint(stage, run, fp)
        if launch.is_main:
            if record is None or record.get("output", record["fingerprint"]) != out:
                # Later stages were built on something else: they are out of date now,
                # also for single-stage commands and `generate`.
                for later in STAGES[STAGES.index(stage) + 1:]:
                    run.invalidate(later)
            run.mark_complete(stage, fp, {**summary, "stage_seconds": round(seconds, 2)}, output=out)
        return StageOutcome(stage, "ran", seconds, summary), out


_HELD: set[Path] = set()


@contextlib.contextmanager
def locked(run: RunDir, command: str, is_main: bool = True):
    """Hold the run's lock (once per process, however deeply nested): a second
    fmforge process on the same run refuses with a message naming this one."""
    root = run.root.resolve()
    if not is_main or root in _HELD:
        yield
        return
    with run_lock(root, command):
        _HELD.add(root)
        try:
            yield
        finally:
            _HELD.discard(root)


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
    upstream: str | None = None
    with locked(run, "fmforge run", current_launch().is_main):
        for stage in stages:
            if stage == "train" and "eval" in stages:
                require_heldout_tokens(run)
            outcome, upstream = run_stage(cfg, run, stage, force=force, upstream=upstream)
            outcomes.append(outcome)
        if "eval" in stages and current_launch().is_main:
            try:
                write_run_report(run, device=cfg.train.device)
            except ImportError as exc:  # matplotlib is in the eval extra
                log(f"[yellow]no report.html ({exc}): pip install 'fmforge[eval]'[/yellow]")
    return run, outcomes


def write_run_report(run: RunDir, out: Path | None = None, device: str = "auto") -> Path:
    """``report.html`` for the run, with the planner's plan-versus-actual figures
    (computed here: the report's package and the planner are siblings)."""
    from fmforge.eval.report import write_report
    from fmforge.plan.actual import compare_plan_to_actual

    try:
        plan_actual, missing = compare_plan_to_actual(run.root), None
    except ValueError as exc:  # PlanError included: no plan.json, nothing measured yet
        plan_actual, missing = None, f"plan versus actual unavailable: {exc}"
    return write_report(run, plan_actual, missing, out=out, device=device, decision=_decision(run))


def plan_figures(run: RunDir) -> tuple[dict | None, dict | None]:
    """(plan against actual, the planner's quality-beside-cost comparison) of a run,
    None where there is none: what the model card of `fmforge export hf` shows
    beside the run's own artifacts (the planner and the exports are siblings)."""
    from fmforge.plan.actual import compare_plan_to_actual

    try:
        plan_actual = compare_plan_to_actual(run.root) if run.plan_json.is_file() else None
    except ValueError:  # PlanError included: nothing measured yet, a damaged plan
        plan_actual = None
    return plan_actual, _decision(run)


def _decision(run: RunDir) -> dict | None:
    """The planner's quality-beside-cost table for the report, when there is more
    to compare than the run itself (other models scored on its bytes, a ladder)."""
    import json

    from fmforge.config import config_from_dict
    from fmforge.hardware import HardwareError, get_hardware
    from fmforge.plan.quality import quality_table

    ev = json.loads(run.eval_json.read_text(encoding="utf-8")) if run.eval_json.is_file() else {}
    if not ev.get("against") and not (run.root / "ladder" / "ladder.json").is_file():
        return None
    import yaml

    cfg = config_from_dict(yaml.safe_load(run.config.read_text(encoding="utf-8")))
    plan = json.loads(run.plan_json.read_text(encoding="utf-8")) if run.plan_json.is_file() else {}
    try:
        return quality_table(run.root, cfg, plan, get_hardware(plan.get("gpu") or cfg.plan.gpu))
    except (ValueError, HardwareError):  # PlanError included: nothing to compare
        return None


def require_heldout_tokens(run: RunDir) -> None:
    """Fail before hours of training, not after, when evaluation will find nothing."""
    meta = run.tokens_meta()
    if meta.get("val_tokens", 0) < 2:
        raise EmptyHeldOutError(
            f"the held-out split in {run.tokens} is empty ({meta.get('val_documents', 0)} "
            "documents), so evaluation would fail after training: raise data.val_fraction "
            "(or add documents), or run the stages you need one by one"
        )
