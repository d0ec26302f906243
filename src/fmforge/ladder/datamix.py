"""``fmforge datamix``: which data? Small proxy models trained on variants of the
run's data mixture, scored on one target, with the seed noise measured.

Every variant (``variants.py``) gets a run directory ``RUN/datamix/<variant>/``
with its own ``data`` and ``tokens`` (the base variant links the run's own) and
a link to the run's ``tokenizer``: only the data differs. Its data stage keeps
the curated work in ``RUN/datamix/data.work`` (or ``data.work_dir``), keyed
without the weights, so a variant that changes only weights is not curated
again. Its training split loses the base run's held-out documents and the
target's (``target.py``) before it is encoded.

Each variant trains the same proxy model (``--size``, else the smallest rung of
at least two layers of the ladder's, ``ladder/run.py``) for the same number of
steps with ``S`` seeds: ``RUN/datamix/<variant>/<size>-seed-<seed>/``, seeds ``seed``,
``seed + 1``, ... of the variant's config (the model's initial weights and the
order of the batches; the data's split and mixture draws keep the config's own
seed). The k-th proxy of every variant starts from the same weights. Each proxy
is scored on the target and on every held-out source of the base run, by the
same scorer on the same tokens. ``noise.py`` decides what is called.

The experiment is priced before it trains (the planner's FLOPs and speed for one
proxy, times the proxies), cached like the ladder's rungs (a proxy whose config,
data and target did not change is not trained or scored again), and written to
``RUN/datamix/datamix.json`` (keys: ``/work/notes/datamix_schema.md``'s contract,
documented in docs/datamix.md).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fmforge.config import RunConfig
from fmforge.data.groups import output_weights
from fmforge.data.stage import data_inputs_fingerprint, run_data_stage
from fmforge.inference.loading import load_trained
from fmforge.ladder.noise import pick_best, pooled_noise, source_worth, verdict
from fmforge.ladder.run import Rung, _link_shared, default_rungs, non_embedding_params, parse_sizes, rung_model
from fmforge.ladder.target import Exclusion, Scorer, Target, exclusion_for, trained_on_target
from fmforge.ladder.variants import BASE, DatamixError, Variant, variant_config
from fmforge.model.counting import count_parameters
from fmforge.plan.estimate import plan_for_run
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_write_json, atomic_write_text, fingerprint, run_lock
from fmforge.tokenizer.encode import run_tokenize_stage
from fmforge.train.loop import run_train_stage

DIR = "datamix"
RESULT = "datamix.json"
SCORE = "datamix-score"  # the stage record of a proxy's score in its run directory
DEFAULT_TOKENS_PER_PARAM = 20.0
MIN_SEEDS = 2
VERSION = 1


@dataclass(frozen=True)
class Budget:
    """Each proxy's training: tokens per non-embedding parameter, or a total number
    of minutes for all the proxies (turned into one step count for all of them)."""

    tokens_per_param: float | None = DEFAULT_TOKENS_PER_PARAM
    minutes: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens_per_param is None) == (self.minutes is None):
            raise DatamixError("give the proxies' budget as --tokens-per-param or as --minutes, one of the two")
        for name, v in (("--tokens-per-param", self.tokens_per_param), ("--minutes", self.minutes)):
            if v is not None and not v > 0:
                raise DatamixError(f"{name} must be positive, got {v:g}")


def proxy_rung(cfg: RunConfig, size: str | None = None) -> Rung:
    """``size`` (one ``DxL``), else the smallest rung with at least two layers of
    the config's ladder (``ladder.sizes``, else the default rungs; the smallest
    of all when none has two layers)."""
    if size:
        rungs = parse_sizes(size)
        if len(rungs) != 1:
            raise DatamixError(f"--size {size!r}: give one proxy size, d_model x n_layers (e.g. 64x2)")
        return rungs[0]
    model = cfg.resolved_model()
    rungs = parse_sizes(cfg.ladder.sizes) if cfg.ladder.sizes else default_rungs(model)
    deep = [r for r in rungs if r.n_layers >= 2] or rungs
    return min(deep, key=lambda r: non_embedding_params(rung_model(model, r)))


def proxy_config(vcfg: RunConfig, rung: Rung, root: Path, steps: int, seed: int) -> RunConfig:
    """The variant's config as one proxy: the rung's model, ``steps`` steps, one
    validation and one checkpoint at the end, ``seed``."""
    model = rung_model(vcfg.resolved_model(), rung)
    train = vcfg.train.model_copy(update={
        "max_minutes": None, "max_steps": steps, "warmup_steps": min(vcfg.train.warmup_steps, max(1, steps // 10)),
        "eval_every": steps, "checkpoint_every": steps, "keep_checkpoints": 1, "tensorboard": False})
    return vcfg.model_copy(update={"model": model, "out_dir": str(root), "seed": seed, "train": train})


def proxy_steps(cfg: RunConfig, rung: Rung, budget: Budget, proxies: int, root: Path) -> int:
    """The step count of every proxy. A minutes budget is shared by all the
    proxies at the speed the planner predicts for one; the count is kept in
    ``RUN/datamix/budget.json`` so that a rerun (on a machine measured a little
    differently) finds its proxies cached."""
    model = rung_model(cfg.resolved_model(), rung)
    per_step = cfg.train.tokens_per_step(model.seq_len, 1)
    if budget.minutes is None:
        return max(1, math.ceil(budget.tokens_per_param * non_embedding_params(model) / per_step))
    key = fingerprint("datamix-budget", budget.minutes, proxies, model.model_dump(mode="json"), per_step,
                      cfg.train.device, cfg.train.dtype)
    path = root / "budget.json"
    if path.is_file():
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("key") == key:
            return int(kept["steps"])
    plan = plan_for_run(proxy_config(cfg, rung, root, 1, cfg.seed))
    steps = max(1, int(plan["tokens_per_s"] * 60 * budget.minutes / proxies // per_step))
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "steps": steps, "minutes": budget.minutes, "proxies": proxies,
                             "tokens_per_s": plan["tokens_per_s"]})
    return steps


def _train_fp(rcfg: RunConfig, tokens_fp: str) -> str:
    own = {"model": rcfg.model.model_dump(mode="json"), "seed": rcfg.seed,
           "train": rcfg.train.model_dump(mode="json", exclude={"tensorboard", "num_threads", "device"})}
    return fingerprint("datamix-proxy-v1", own, tokens_fp)


@dataclass
class _Plan:
    """One variant's directories and fingerprints, known before anything runs."""

    variant: Variant
    cfg: RunConfig
    run: RunDir
    data_fp: str | None  # None: the base run's own data
    tokens_fp: str
    proxies: list[tuple[RunConfig, RunDir, str, str]]  # (config, run dir, train fp, score fp)


class _Experiment:
    def __init__(self, cfg: RunConfig, run: RunDir, variants: Sequence[Variant], rung: Rung, budget: Budget,
                 seeds: int, target: Target, force: bool):
        if seeds < MIN_SEEDS:
            raise DatamixError(f"--seeds {seeds}: the seed noise needs at least {MIN_SEEDS} seeds per variant")
        if variants[0] != BASE:
            raise ValueError("the first variant is the base")
        for stage in ("data", "tokenizer", "tokenize"):
            if run.stage_record(stage) is None:
                raise DatamixError(
                    f"datamix trains on variants of the run's own data with its tokenizer, and {run.root} has "
                    f"no {stage} stage yet: run `fmforge data CONFIG`, `fmforge tokenizer CONFIG` and "
                    "`fmforge tokenize CONFIG` first")
        built_from = run.read_data_card().get("inputs_fingerprint")
        if built_from != data_inputs_fingerprint(cfg):
            raise DatamixError(
                f"the base run's data ({run.data}) was built from other sources, files or data settings than "
                "the config's: every variant is compared with the base, so rebuild it first with `fmforge run "
                "CONFIG` (or `fmforge data CONFIG` and `fmforge tokenize CONFIG`)")
        self.cfg, self.run, self.variants, self.rung, self.budget = cfg, run, list(variants), rung, budget
        self.seeds, self.target, self.force = seeds, target, force
        self.root = run.root / DIR
        self.work_dir = cfg.data.work_dir or str(self.root / "data.work")
        self.scorer = Scorer(run, target, cfg.vocab_size, cfg.eval.batch_size, cfg.eval.max_tokens,
                             cfg.eval.stride)
        if target.kind == "files":
            leaked = trained_on_target(run, self.scorer.target_texts)
            if leaked:
                raise DatamixError(
                    f"--target: {leaked} of the target files' documents are in the base run's training split "
                    f"({run.data}): a proxy would be scored on text it trained on. Choose files outside the "
                    "corpus, or leave them out of the sources (exclude:)")
        self.exclusion: Exclusion = exclusion_for(run, target, self.scorer.target_texts)
        self.steps = proxy_steps(cfg, rung, budget, len(self.variants) * seeds, self.root)
        self.plans = [self._plan(v) for v in self.variants]

    def _plan(self, variant: Variant) -> _Plan:
        vcfg = self.cfg if variant == BASE else variant_config(self.cfg, variant)
        vroot = self.root / variant.dirname
        vrun = RunDir(vroot)
        if variant == BASE:
            record = self.run.stage_record("tokenize")
            data_fp, tokens_fp = None, record.get("output", record["fingerprint"])
        else:
            data_fp = fingerprint("datamix-data-v1", data_inputs_fingerprint(vcfg), self.exclusion.key)
            tok = self.run.stage_record("tokenizer")
            own = {"vocab_size": vcfg.vocab_size, "eos": vcfg.tokenizer.eos_token,
                   "budget": vcfg.data.token_budget, "total_tokens": vcfg.data.total_tokens, "seed": vcfg.seed}
            tokens_fp = fingerprint("datamix-tokens-v1", data_fp, tok.get("output", tok["fingerprint"]), own)
        proxies = []
        for k in range(self.seeds):
            seed = vcfg.seed + k
            sroot = vroot / f"{self.rung.name}-seed-{seed}"  # each proxy size cached on its own
            rcfg = proxy_config(vcfg, self.rung, sroot, self.steps, seed)
            train_fp = _train_fp(rcfg, tokens_fp)
            score_fp = fingerprint("datamix-score-v1", train_fp, self.scorer.key)
            proxies.append((rcfg, RunDir(sroot), train_fp, score_fp))
        return _Plan(variant, vcfg, vrun, data_fp, tokens_fp, proxies)

    def cached(self, score_fp: str, srun: RunDir) -> bool:
        record = srun.stage_record(SCORE)
        return not self.force and record is not None and record["fingerprint"] == score_fp

    # ---------------------------------------------------------------- price

    def price(self) -> dict[str, Any]:
        """The planner's price of one proxy, times the proxies (all of them, and
        those not cached)."""
        one = plan_for_run(self.plans[0].proxies[0][0])
        total = len(self.plans) * self.seeds
        todo = sum(not self.cached(fp, srun) for p in self.plans for (_, srun, _, fp) in p.proxies)
        seconds = one["wall_hours"] * 3600
        return {"proxies": total, "to_train": todo, "flops": total * one["train_flops"],
                "seconds_estimated": total * seconds, "seconds_to_train": todo * seconds,
                "device": one["gpu_name"], "mfu": one["mfu"],
                "dollars": total * one["cost_usd"] if one["price_per_gpu_hour"] else None,
                "seconds_measured": None,
                "data_stages": sum(p.data_fp is not None for p in self.plans),
                "not_priced": "each variant that changes the data also runs a data and a tokenize stage "
                              f"(the base run's took {self._stage_seconds()})"}

    def _stage_seconds(self) -> str:
        records = self.run.stage_records()
        parts = [f"{s} {records[s]['summary'].get('stage_seconds', 0):.0f} s"
                 for s in ("data", "tokenize") if s in records and "summary" in records[s]]
        return ", ".join(parts) or "unknown"

    # ------------------------------------------------------------------ run

    def prepare(self, plan: _Plan) -> None:
        """The variant's data and tokens (base: links to the run's own)."""
        vrun = plan.run
        if plan.variant == BASE:
            _link_shared(self.run, vrun)
            return
        _link_shared(self.run, vrun, names=("tokenizer",))
        data = vrun.stage_record("data")
        if self.force or data is None or data["fingerprint"] != plan.data_fp:
            vrun.invalidate("data")
            vrun.invalidate("tokenize")
            shutil.rmtree(vrun.root / "tokens.work", ignore_errors=True)
            log(f"[bold cyan]▶ datamix {plan.variant.name}: data[/bold cyan]")
            wcfg = plan.cfg.model_copy(update={
                "out_dir": str(vrun.root), "data": plan.cfg.data.model_copy(update={"work_dir": self.work_dir})})
            summary = run_data_stage(wcfg, vrun, keep_curated=True)
            moved = self.exclusion.take_base_split(vrun.data, plan.cfg.data, plan.cfg.seed)
            removed = sum(moved["held_out_removed_from_train"].values())
            if removed:
                log(f"datamix {plan.variant.name}: {removed} of the base run's held-out (or target) documents "
                    "left out of its training split, where its own split had put them")
            summary.update(target_documents_removed=removed, moved_to_train=moved["own_held_out_moved_to_train"])
            vrun.mark_complete("data", plan.data_fp, summary)
        tokens = vrun.stage_record("tokenize")
        if self.force or tokens is None or tokens["fingerprint"] != plan.tokens_fp:
            log(f"[bold cyan]▶ datamix {plan.variant.name}: tokenize[/bold cyan]")
            summary = run_tokenize_stage(plan.cfg, vrun)
            vrun.mark_complete("tokenize", plan.tokens_fp, summary)

    def proxy(self, plan: _Plan, rcfg: RunConfig, srun: RunDir, train_fp: str, score_fp: str) -> dict:
        """Train (cached) and score (cached) one proxy."""
        if self.cached(score_fp, srun):
            return srun.stage_record(SCORE)["summary"]
        _link_shared(plan.run, srun)
        train = srun.stage_record("train")
        if self.force or train is None or train["fingerprint"] != train_fp:
            srun.invalidate(SCORE)
            atomic_write_text(srun.config, rcfg.to_yaml())
            log(f"[bold cyan]▶ datamix {plan.variant.name}: proxy seed {rcfg.seed}[/bold cyan] "
                f"({self.steps:,} steps)")
            summary = run_train_stage(rcfg, srun, train_fp, fresh=self.force, lineage=train_fp)
            srun.mark_complete("train", train_fp, summary)
            train = srun.stage_record("train")
        t0 = time.perf_counter()
        trained = load_trained(srun, device=rcfg.train.device)
        scored = self.scorer.score(trained.model, trained.device)
        run = {"seed": rcfg.seed, **scored, "tokens": train["summary"]["tokens"],
               "steps": train["summary"]["steps"], "seconds": train["summary"].get("wall_s"),
               "score_seconds": round(time.perf_counter() - t0, 2)}
        srun.mark_complete(SCORE, score_fp, run)
        return run


def run_datamix(cfg: RunConfig, run: RunDir, variants: Sequence[Variant], *, rung: Rung, budget: Budget,
                seeds: int = MIN_SEEDS, target: Target = Target("heldout", "heldout"), force: bool = False,
                price_only: bool = False, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Price, then train and score every variant's proxies (cached), call the
    differences against the seed noise and write ``RUN/datamix/datamix.json``.
    ``price_only``: return the price (``{"price": ...}``) and train nothing."""
    with run_lock(run.root, "fmforge datamix"):
        exp = _Experiment(cfg, run, variants, rung, budget, seeds, target, force)
        price = exp.price()
        model = exp.plans[0].proxies[0][0].model
        n = non_embedding_params(model)
        log(f"datamix: {len(exp.plans)} variants x {seeds} seeds = {price['proxies']} proxies of "
            f"{rung.name} ({n:,} non-embedding parameters, {exp.steps:,} steps each) on the target "
            f"{target.label}; {price['proxies'] - price['to_train']} cached")
        log(f"datamix: priced by the planner: {price['flops']:.3g} FLOPs, about {_duration(price['seconds_estimated'])}"
            f" on {price['device']}" + (f" (${price['dollars']:.2f})" if price["dollars"] is not None else "")
            + f"; still to train: {price['to_train']} proxies, about {_duration(price['seconds_to_train'])}. "
            + price["not_priced"].capitalize())
        if price_only:
            return {"price": price, "variants": [p.variant.name for p in exp.plans], "steps": exp.steps,
                    "proxy": rung.name}
        t0 = time.perf_counter()
        trained_seconds, trained = 0.0, 0
        each = price["seconds_estimated"] / price["proxies"]
        rows = []
        for plan in exp.plans:
            if not all(exp.cached(fp, srun) for (_, srun, _, fp) in plan.proxies):
                exp.prepare(plan)
            runs = []
            for rcfg, srun, train_fp, score_fp in plan.proxies:
                was_cached = exp.cached(score_fp, srun)
                r = exp.proxy(plan, rcfg, srun, train_fp, score_fp)
                if not was_cached:
                    trained_seconds += float(r.get("seconds") or 0.0)
                    trained += 1
                    if trained == 1 and price["to_train"] > 1:
                        log(f"datamix: the first proxy trained in {_duration(trained_seconds)}, "
                            f"{trained_seconds / each:.1f}x the planner's estimate; the other "
                            f"{price['to_train'] - 1} at that speed: about "
                            f"{_duration(trained_seconds * (price['to_train'] - 1))}")
                runs.append(r)
            rows.append(_row(plan, runs))
        price["seconds_measured"] = round(trained_seconds, 2)
        if trained and trained_seconds / (trained * each) > 2:
            notes = [*notes, f"the proxies trained {trained_seconds / (trained * each):.1f}x slower than the "
                             f"planner priced them (its MFU {price['mfu']:g} is for larger models, and a machine "
                             "shared with other work is slower still): set plan.mfu for a closer price"]
        result = _result(exp, rows, price, n, notes)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(exp.root / RESULT, result)
    log(f"datamix: {exp.root / RESULT}")
    return result


def _row(plan: _Plan, runs: list[dict]) -> dict[str, Any]:
    vrun = plan.run
    meta = vrun.tokens_meta()
    train = meta.get("per_source", {}).get("train", {})
    weights = output_weights(plan.cfg.data, list(train))
    bpb = [r["bits_per_byte"] for r in runs]
    per_source = {s: sum(r["per_source"][s] for r in runs) / len(runs) for s in runs[0]["per_source"]}
    return {"name": plan.variant.name, "kind": plan.variant.kind, "overrides": list(plan.variant.overrides),
            "removed_source": plan.variant.removed_source,
            "sources": {s: {"bytes": int(v["bytes"]), "tokens": int(v["tokens"]), "weight": weights.get(s)}
                        for s, v in train.items()},
            "runs": [{k: r[k] for k in ("seed", "bits_per_byte", "per_source", "tokens", "steps", "seconds")}
                     for r in runs],
            "bits_per_byte": sum(bpb) / len(bpb), "per_source": per_source, "spread": max(bpb) - min(bpb),
            "_target": {"target_bytes": runs[0]["target_bytes"], "target_tokens": runs[0]["target_tokens"]}}


def _result(exp: _Experiment, rows: list[dict], price: dict, n: int, notes: Sequence[str]) -> dict[str, Any]:
    noise = pooled_noise([[r["bits_per_byte"] for r in row["runs"]] for row in rows])
    base = rows[0]
    for row in rows:
        if row is base:
            row.update(delta=None, delta_over_noise=None, verdict="base")
            continue
        delta = row["bits_per_byte"] - base["bits_per_byte"]
        row.update(delta=delta, delta_over_noise=noise.times(delta), verdict=verdict(delta, noise))
    best, warnings = pick_best(rows, noise)
    warnings = list(notes) + warnings
    if noise.seed_sd == 0:
        warnings.append("the seeds gave identical figures: no seed noise to measure (is the proxy deterministic "
                        "whatever its seed?); every difference is called")
    worth = []
    base_train = base["sources"]
    for row in rows:
        if row["kind"] == "ablate":
            removed = row["removed_source"]
            parts = [s for s in base_train if s == removed or s.startswith(removed + "/")]
            contribution = {"bytes": sum(base_train[s]["bytes"] for s in parts),
                            "tokens": sum(base_train[s]["tokens"] for s in parts)}
            worth.append(source_worth(base, row, noise, contribution))
    per_source_sd = {s: pooled_noise([[r["per_source"][s] for r in row["runs"]] for row in rows]).seed_sd
                     for s in base["per_source"]}
    target_info = exp.scorer.describe(rows[0].pop("_target"))
    for row in rows[1:]:
        row.pop("_target", None)
    rcfg = exp.plans[0].proxies[0][0]
    tokens = exp.steps * rcfg.train.tokens_per_step(rcfg.model.seq_len, 1)
    return {
        "version": VERSION,
        "base_run": str(exp.run.root),
        "target": target_info,
        "proxy": {"model": rcfg.model.model_dump(mode="json"), "name": exp.rung.name, "non_embedding_params": n,
                  "params": count_parameters(rcfg.model).total, "tokens": tokens, "steps": exp.steps,
                  "tokens_per_param": exp.budget.tokens_per_param,
                  "minutes_each": exp.budget.minutes / price["proxies"] if exp.budget.minutes else None,
                  "seeds": [r["seed"] for r in base["runs"]],
                  "seeds_are": "each proxy's model initialisation and batch order (config seed + k); the data's "
                               "split and mixture draws keep the variant config's own seed"},
        "price": price,
        "noise": {**noise.to_dict(), "per_source_sd": per_source_sd},
        "variants": rows,
        "sources_worth": worth,
        "best": best,
        "warnings": warnings,
    }


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------ tables


def render(result: dict[str, Any]) -> list[Any]:
    """The verdict table (and, with ablations, the sources' worth) as rich renderables."""
    from rich.table import Table

    noise = result["noise"]
    proxy = result["proxy"]
    title = (f"datamix: bits per byte on the target ({result['target']['name']}, "
             f"{result['target']['bytes']:,} bytes), proxies {proxy['name']} x {proxy['steps']:,} steps, "
             f"{len(proxy['seeds'])} seeds")
    table = Table(title=title, title_justify="left")
    for col in ("variant", "bits/byte", "per seed", "delta", "x seed noise", "verdict"):
        table.add_column(col, justify="left" if col in ("variant", "verdict") else "right")
    style = {"better": "green", "worse": "red", "within noise": "dim"}
    for row in result["variants"]:
        times = row["delta_over_noise"]
        table.add_row(row["name"] + (" [bold](best)[/bold]" if row["name"] == result["best"] else ""),
                      f"{row['bits_per_byte']:.4f}",
                      ", ".join(f"{r['bits_per_byte']:.4f}" for r in row["runs"]),
                      "-" if row["delta"] is None else f"{row['delta']:+.4f}",
                      "-" if times is None else f"{times:.1f}x",
                      f"[{style.get(row['verdict'], 'bold')}]{row['verdict']}[/]")
    out: list[Any] = [table]
    out.append(f"seed noise: {noise['seed_sd']:.4f} bits/byte (pooled over {noise['dof']} degrees of freedom); "
               f"a difference is called beyond {noise['threshold']:.4f} "
               f"({noise['threshold'] / noise['seed_sd']:.1f}x the seed noise)" if noise["seed_sd"] else
               "seed noise: none measured")
    if result["sources_worth"]:
        worth = Table(title="what each source is worth to the target (target bits/byte without it minus "
                            "with it: > 0 the source helps)", title_justify="left")
        others = list(result["variants"][0]["per_source"])
        for col in ("source", "train bytes", "train tokens", "effect", "x seed noise", "verdict",
                    *[f"on {s}" for s in others]):
            worth.add_column(col, justify="left" if col in ("source", "verdict") else "right")
        for w in result["sources_worth"]:
            times = w["effect_over_noise"]
            worth.add_row(w["source"], f"{w['bytes']:,}", f"{w['tokens']:,}", f"{w['effect']:+.4f}",
                          "-" if times is None else f"{times:.1f}x", w["verdict"],
                          *[f"{w['per_source_effect'][s]:+.4f}" if s in w["per_source_effect"] else "-"
                            for s in others])
        out.append(worth)
    if result["best"]:
        b = next(r for r in result["variants"] if r["name"] == result["best"])
        out.append(f"[bold green]best: {b['name']}[/bold green]: {b['delta']:+.4f} bits/byte on the target, "
                   f"{b['delta_over_noise']:.1f}x the seed noise")
    else:
        out.append("[bold]best: none[/bold]: no variant beats the base beyond the seed noise")
    for w in result["warnings"]:
        out.append(f"[yellow]datamix: {w}[/yellow]")
    return out
