"""``fmforge ladder``: train a series of small models of the config's family on
the run's own data and tokenizer, measure each one's held-out bits per byte,
and fit the scaling law to them (``ladder/ladder.json``).

Each rung is a run directory of its own under ``RUN/ladder/<rung>/`` whose
``data``, ``tokenizer`` and ``tokens`` are links to the run's: the rungs train
and evaluate with the trainer and the eval stage as they are, resume when
killed, and a rung whose model, budget and tokens did not change is not trained
again (its record in its ``stages.json`` says so).

The token budget of a rung: ``tokens_per_param`` × N, with N the rung's
non-embedding parameters (Kaplan et al. 2020: with the vocabulary fixed, the
embedding adds parameters but little predictive power at small sizes, and the
law in non-embedding N is the cleaner one), or a share of a total ``minutes``
budget. With one rule for all rungs the one-variable law L(N) is fitted; with a
minutes budget (D differs in ratio), L(N, D).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from fmforge.config import ModelConfig, RunConfig
from fmforge.errors import UserError
from fmforge.eval.stage import run_eval_stage
from fmforge.ladder.fit import Point, bootstrap, fit_law, residual_noise
from fmforge.ladder.plot import plot_ladder
from fmforge.model.counting import count_parameters
from fmforge.plan.scaling import REPEAT_LIMIT_EPOCHS, ScalingLaw, ladder_prediction
from fmforge.progress import log
from fmforge.rundir import RunDir, atomic_write_json, atomic_write_text, fingerprint, run_lock
from fmforge.train.loop import run_train_stage

# The rungs when the config names none follow the target's own shape rule, as
# published ladders do (Kaplan et al. 2020 keep d_model/n_layers fixed; Hoffmann et
# al. 2022 and Pythia scale width and depth together): the target's aspect ratio
# d_model/n_layers and its head dimension, so the config's model lies on the rungs'
# family curve. Up to DEFAULT_RUNGS of them, spread over about DEFAULT_SPAN in
# non-embedding parameters, the largest at most 1/TARGET_REACH of the target (the
# law is then asked for about 2x its largest rung, the reach measured in
# benchmarks/README.md; whole layers make small families coarse, hence 1.8, not 2).
DEFAULT_RUNGS = 5
DEFAULT_SPAN = 16.0
TARGET_REACH = 1.8
# A rung is on the target's family when its heads have the target's dimension and
# its aspect ratio is within this factor of the target's (widths come in whole
# heads and depths in whole layers, so small rungs round).
ASPECT_TOLERANCE = 1.3
SHARED = ("data", "tokenizer", "tokens")
STAGE_OF = {"data": "data", "tokenizer": "tokenizer", "tokens": "tokenize"}  # the stage that writes each


class LadderError(UserError, ValueError):
    """A ladder that cannot run as asked: sizes that do not parse or fit, too few rungs,
    or a run without tokens yet; the message names ladder.sizes / --sizes or the
    commands to run first."""


@dataclass(frozen=True)
class Rung:
    d_model: int
    n_layers: int

    @property
    def name(self) -> str:
        return f"d{self.d_model}-l{self.n_layers}"


def parse_sizes(spec: str | Sequence[str]) -> list[Rung]:
    """``"64x2,96x3"`` (or a list of such items): d_model × n_layers per rung."""
    items = [s for s in (spec.split(",") if isinstance(spec, str) else spec)]
    rungs = []
    for item in items:
        text = str(item).strip().lower()
        try:
            d, layers = (int(x) for x in text.split("x"))
        except ValueError:
            raise LadderError(f"ladder size {item!r}: write d_model x n_layers, e.g. 64x2") from None
        if d <= 0 or layers <= 0:
            raise LadderError(f"ladder size {item!r}: d_model and n_layers must be positive")
        rungs.append(Rung(d, layers))
    if len({r.name for r in rungs}) != len(rungs):
        raise LadderError(f"ladder sizes repeat a rung: {', '.join(r.name for r in rungs)}")
    return rungs


def default_rungs(model: ModelConfig, count: int = DEFAULT_RUNGS, span: float = DEFAULT_SPAN) -> list[Rung]:
    """Rungs on ``model``'s family curve (its aspect ratio d_model/n_layers and
    head dimension), the largest at most half of ``model``, which the ladder then
    predicts: up to ``count`` of them spread evenly in log N over ``span``."""
    target = non_embedding_params(model)
    head, aspect = model.head_dim, model.d_model / model.n_layers
    found: dict[int, Rung] = {}
    for layers in range(1, model.n_layers + 1):
        width = head * max(1, round(aspect * layers / head))
        rung = Rung(width, layers)
        if on_family(model, rung):
            n = non_embedding_params(rung_model(model, rung))
            if n <= target / TARGET_REACH:
                found.setdefault(n, rung)
    sizes = sorted(found)
    if len(sizes) < 3:
        # Too shallow for 3 smaller models of its own shape: the nearest shapes (the
        # same heads, the width per layer least off), which the ladder warns about.
        near: dict[int, tuple[float, Rung]] = {}
        for layers in range(1, model.n_layers + 1):
            for heads in range(1, model.d_model // head + 1):
                rung = Rung(head * heads, layers)
                n = non_embedding_params(rung_model(model, rung))
                off = abs(math.log(rung.d_model / layers / aspect))
                if n <= target / TARGET_REACH and n not in found and (n not in near or off < near[n][0]):
                    near[n] = (off, rung)
        for n, (_, rung) in sorted(near.items(), key=lambda kv: (kv[1][0], kv[0]))[:count - len(sizes)]:
            found[n] = rung
        sizes = sorted(found)
    if len(sizes) < 3:
        raise LadderError(
            f"the config's model (d_model {model.d_model} x {model.n_layers} layers, heads of {head}, "
            f"{target:,} non-embedding parameters) has {len(sizes)} smaller model(s) with its heads at most "
            f"1/{TARGET_REACH:g} its size; a ladder needs 3 or more: make the model larger, or name rungs "
            "with ladder.sizes or --sizes (d_model x n_layers, e.g. 32x1,32x2,64x2)")
    if len(sizes) <= count:
        return [found[n] for n in sizes]
    largest = sizes[-1]
    picked: list[int] = []
    for i in range(count):  # evenly in log N from largest/span up to largest, nearest distinct
        want = math.log(largest) - math.log(span) * (count - 1 - i) / (count - 1)
        left = [n for n in sizes if n not in picked]
        if left:
            picked.append(min(left, key=lambda n: abs(math.log(n) - want)))
    return [found[n] for n in sorted(picked)]


def on_family(target: ModelConfig, rung: Rung) -> bool:
    """Whether ``rung`` has ``target``'s head dimension and (within
    ``ASPECT_TOLERANCE``) its aspect ratio d_model/n_layers."""
    if rung.d_model % target.head_dim:
        return False
    ratio = (rung.d_model / rung.n_layers) / (target.d_model / target.n_layers)
    return 1 / ASPECT_TOLERANCE <= ratio <= ASPECT_TOLERANCE


def rung_model(base: ModelConfig, rung: Rung) -> ModelConfig:
    """The config's model at the rung's width and depth: heads of the config's
    dimension where it divides d_model (else 64 or 32, off the family), the
    config's query-per-KV-head ratio where it divides, everything else
    (vocabulary, context, RoPE, ties) as is."""
    head_dim = next((h for h in (base.head_dim, 64, 32) if rung.d_model % h == 0), None)
    if head_dim is None:
        raise LadderError(f"ladder rung {rung.name}: d_model must be a multiple of the config's head "
                          f"dimension ({base.head_dim}) or of 32")
    heads = rung.d_model // head_dim
    ratio = base.n_heads // base.kv_heads
    kv = heads // ratio if ratio > 1 and heads % ratio == 0 else heads
    return base.model_copy(update={"d_model": rung.d_model, "n_layers": rung.n_layers, "n_heads": heads,
                                   "n_kv_heads": kv, "d_ff": None})


def non_embedding_params(model: ModelConfig) -> int:
    return count_parameters(model).non_embedding


def _rung_config(cfg: RunConfig, rung: Rung, root: Path, tokens_per_param: float | None,
                 minutes_each: float | None) -> RunConfig:
    model = rung_model(cfg.resolved_model(), rung)
    per_step = cfg.train.tokens_per_step(model.seq_len, 1)
    train: dict[str, Any] = {"tensorboard": False}
    if minutes_each is not None:
        train.update(max_minutes=minutes_each, max_steps=None)
        steps_hint = None
    else:
        steps = max(1, math.ceil(tokens_per_param * non_embedding_params(model) / per_step))
        train.update(max_minutes=None, max_steps=steps)
        steps_hint = steps
    if steps_hint is not None:
        train.update(warmup_steps=min(cfg.train.warmup_steps, max(1, steps_hint // 10)),
                     eval_every=steps_hint, checkpoint_every=max(1, min(cfg.train.checkpoint_every, steps_hint)))
    return cfg.model_copy(update={"model": model, "out_dir": str(root),
                                  "train": cfg.train.model_copy(update=train)})


def _link_shared(run: RunDir, rung_run: RunDir, names: Sequence[str] = SHARED) -> None:
    """The rung reads the run's data, tokenizer and tokens (or those of ``names``)
    through relative links, and carries their stages' records."""
    rung_run.root.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = rung_run.root / name
        target = os.path.relpath(run.root / name, rung_run.root)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    records = run.stage_records()
    for name in names:  # the stages whose records the rung's trainer and eval check
        stage = STAGE_OF[name]
        r = records[stage]
        if rung_run.stage_record(stage) != r:
            rung_run.mark_complete(stage, r["fingerprint"], r.get("summary", {}), output=r.get("output"))


def _train_and_evaluate(rcfg: RunConfig, rung_run: RunDir, fp: str, force: bool) -> tuple[dict, dict]:
    train = rung_run.stage_record("train")
    if force or train is None or train["fingerprint"] != fp:
        rung_run.invalidate("eval")
        atomic_write_text(rung_run.config, rcfg.to_yaml())
        summary = run_train_stage(rcfg, rung_run, fp, fresh=force, lineage=fp)
        rung_run.mark_complete("train", fp, summary)
        train = rung_run.stage_record("train")
    evaluated = rung_run.stage_record("eval")
    if evaluated is None or evaluated["fingerprint"] != fp:
        summary = run_eval_stage(rcfg, rung_run)
        rung_run.mark_complete("eval", fp, summary)
        evaluated = rung_run.stage_record("eval")
    return train["summary"], evaluated["summary"]


def run_ladder(cfg: RunConfig, run: RunDir, rungs: Sequence[Rung], tokens_per_param: float | None = 20.0,
               minutes: float | None = None, force: bool = False, samples: int = 200) -> dict[str, Any]:
    """Train and evaluate every rung (cached), fit the law, write ``ladder/ladder.json``."""
    if len(rungs) < 3:
        raise LadderError(f"a ladder needs at least 3 rungs to fit a law, got {len(rungs)}: "
                          "list more sizes (ladder.sizes or --sizes)")
    if (minutes is None) == (tokens_per_param is None):
        raise ValueError("give the rungs' budget as tokens per parameter or as total minutes, one of the two")
    tokenize = run.stage_record("tokenize")
    if tokenize is None or run.stage_record("tokenizer") is None or run.stage_record("data") is None:
        raise LadderError(f"the ladder trains on the run's own tokens, and {run.root} has none yet: run "
                          "`fmforge data CONFIG`, `fmforge tokenizer CONFIG` and `fmforge tokenize CONFIG` first")
    tokens_fp = tokenize.get("output", tokenize["fingerprint"])
    data_tokens = int(run.tokens_meta()["train_tokens"])  # what "epochs" counts against
    minutes_each = minutes / len(rungs) if minutes is not None else None
    points, rows = [], []
    with run_lock(run.root, "fmforge ladder"):
        for i, rung in enumerate(rungs):
            root = run.root / "ladder" / rung.name
            rcfg = _rung_config(cfg, rung, root, tokens_per_param, minutes_each)
            rung_run = RunDir(root)
            _link_shared(run, rung_run)
            own = {"model": rcfg.model.model_dump(mode="json"), "seed": rcfg.seed,
                   "train": rcfg.train.model_dump(mode="json", exclude={"tensorboard", "num_threads", "device"})}
            fp = fingerprint("ladder-rung", own, tokens_fp)
            n = non_embedding_params(rcfg.model)
            log(f"[bold cyan]▶ ladder rung {i + 1}/{len(rungs)}: {rung.name}[/bold cyan] "
                f"({n:,} non-embedding parameters"
                + (f", {rcfg.train.max_steps:,} steps)" if rcfg.train.max_steps else f", {minutes_each:g} min)"))
            t0 = time.perf_counter()
            train, evaluated = _train_and_evaluate(rcfg, rung_run, fp, force)
            bpb = evaluated.get("bits_per_byte")
            if bpb is None:
                raise ValueError(f"ladder rung {rung.name}: its evaluation gave no bits per byte "
                                 f"({rung_run.eval_json}); the held-out split may be empty")
            points.append(Point(params=n, tokens=float(train["tokens"]), loss=float(bpb)))
            rows.append({"name": rung.name, **asdict(rung), "n_heads": rcfg.model.n_heads,
                         "non_embedding_params": n, "params": count_parameters(rcfg.model).total,
                         "steps": train["steps"], "tokens": train["tokens"],
                         "tokens_per_param": round(train["tokens"] / n, 3),
                         "epochs": round(train["tokens"] / data_tokens, 4), "bits_per_byte": bpb,
                         "loss": evaluated.get("loss"), "train_seconds": train.get("wall_s"),
                         "seconds": round(time.perf_counter() - t0, 2)})
        rule = None
        if minutes is None:
            # the rule the rungs realised: whole steps round each rung's tokens up
            ratios = [p.tokens / p.params for p in points]
            rule = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        result = fit_ladder(points, rule, samples=samples, seed=cfg.seed)
        if rule is not None and max(ratios) > 1.05 * min(ratios):
            result["warnings"].append(
                f"the rungs trained on {min(ratios):.3g} to {max(ratios):.3g} tokens per parameter (whole steps "
                f"round the asked {tokens_per_param:g} up): the law is labelled with their mean, {rule:.3g}; "
                "lower train.micro_batch_size for smaller steps")
        result["warnings"] += _shape_warnings(cfg.resolved_model(), rungs, rows)
        repeated = [r for r in rows if r["epochs"] > REPEAT_LIMIT_EPOCHS]
        if repeated:
            named = ", ".join("{} ({:.1f} epochs)".format(r["name"], r["epochs"]) for r in repeated)
            result["warnings"].append(
                f"rung(s) {named} repeat the "
                f"run's {data_tokens:,} training tokens more than {REPEAT_LIMIT_EPOCHS:g} times: past that "
                "repeated tokens are worth less and less (Muennighoff et al. 2023), and the law fitted to them "
                "mixes repetition into its slope; predictions beyond the data are declined")
        if result["backtest"] is not None:
            result["backtest"]["rung"] = next(r["name"] for r, p in zip(rows, points)
                                              if p.params == result["backtest"]["non_embedding_params"])
        law = ScalingLaw.from_dict(result["law"])
        for row, point in zip(rows, points):
            row["fit"] = law.predict(point.params, None if law.one_variable else point.tokens)
        result["rungs"] = rows
        result["data_tokens"] = data_tokens
        result["budget"] = ({"tokens_per_param": tokens_per_param, "realised_tokens_per_param": rule}
                            if minutes is None else {"minutes": minutes, "minutes_per_rung": minutes_each})
        result["target"] = ladder_prediction(result, non_embedding_params(cfg.resolved_model()),
                                             _planned_tokens(cfg))
        result["target"]["model"] = cfg.resolved_model().model_dump(mode="json")
        out = run.root / "ladder" / "ladder.json"
        atomic_write_json(out, result)
        plot_ladder(result, run.root / "ladder" / "ladder.png")
    log(f"ladder: {_describe(law)} over {len(points)} rungs -> {out}")
    bt = result["backtest"]
    if bt is not None:
        log(f"ladder backtest: fitted without its largest rung ({bt['rung']}), the law predicts it at "
            f"{bt['predicted']:.4f} bits/byte; measured {bt['measured']:.4f}: {bt['error']:+.1%}")
    for w in result["warnings"] + result["target"].get("warnings", []):
        log(f"[yellow]ladder: {w}[/yellow]")
    return result


def _shape_warnings(target: ModelConfig, rungs: Sequence[Rung], rows: Sequence[dict]) -> list[str]:
    """A warning when the config's model is off the rungs' family (another head
    dimension or aspect ratio than some rung), or the rungs mix head sizes."""
    out = []
    off = [r for r in rungs if not on_family(target, r)]
    if off:
        out.append(
            f"the config's model (d_model {target.d_model} x {target.n_layers} layers: "
            f"{target.d_model / target.n_layers:.3g} wide per layer, heads of {target.head_dim}) is off the "
            f"family of rung(s) {', '.join(r.name for r in off)} (another head dimension, or a width per layer "
            f"more than {ASPECT_TOLERANCE:g}x off): a law fitted across shapes may not transfer to it "
            "(issue 29 measured +18% at 2x). Leave ladder.sizes/--sizes out for rungs of its own shape; a "
            "model too shallow to have 3 smaller ones of its shape gets the nearest shapes: make it deeper")
    head_dims = sorted({r["d_model"] // r["n_heads"] for r in rows})
    if len(head_dims) > 1:
        out.append(f"the rungs mix heads of {' and '.join(map(str, head_dims))} dimensions: they are not one "
                   "family, and the law bends between them")
    return out


def _planned_tokens(cfg: RunConfig) -> float | None:
    if cfg.train.max_steps is None:
        return None
    return float(cfg.train.max_steps * cfg.train.tokens_per_step(cfg.resolved_model().seq_len, 1))


# The rung-to-rung noise of held-out bits per byte, measured: one rung of the demo
# corpus (d32-l4, heads of 8, 5 tokens per parameter) trained with three seeds
# gave 2.2368, 2.2076 and 2.2069, a standard deviation of 0.77% (benchmarks/README.md,
# "Scaling ladder"). The interval's noise never goes below it.
SEED_NOISE = 0.0077


def fit_ladder(points: Sequence[Point], tokens_per_param: float | None, samples: int = 200,
               seed: int = 0, noise_floor: float = SEED_NOISE) -> dict[str, Any]:
    """The law through ``points``, its bootstrap fits (``bootstrap``), the
    backtest (the law fitted without the largest rung, predicting it) and the
    warnings a user must read; the dict ``ladder.json`` holds, less the rungs."""
    law, theta, objective = fit_law(points, tokens_per_param)
    laws, sigma = bootstrap(points, law, samples=samples, seed=seed, noise_floor=noise_floor)
    residual, dof = residual_noise(points, law)
    residuals = [p.loss - law.predict(p.params, None if law.one_variable else p.tokens) for p in points]
    warnings = []
    by_size = sorted(points, key=lambda p: p.params)
    if law.one_variable and any(b.loss >= a.loss for a, b in zip(by_size, by_size[1:])):
        warnings.append("a larger rung did not reach a lower loss than a smaller one: the rungs are too "
                        "few tokens per parameter, too close in size, or the held-out split too small; "
                        "the law describes these points but do not extrapolate from it")
    if not 0 < law.alpha < 2 or (not law.one_variable and not 0 < law.beta < 2):
        warnings.append(f"the fitted exponents (alpha {law.alpha:.3g}"
                        + ("" if law.one_variable else f", beta {law.beta:.3g}")
                        + ") are outside (0, 2), where published fits lie: do not extrapolate")
    if not laws:
        warnings.append(f"no interval: an interval needs {5 if law.one_variable else 7} rungs or more "
                        f"(two more than the law's {3 if law.one_variable else 5} parameters, to estimate "
                        f"the rungs' noise), this ladder has {len(points)}")
    mean = sum(p.loss for p in points) / len(points)
    if max(abs(r) for r in residuals) > 0.02 * mean:
        warnings.append(f"the law misses a rung by {max(abs(r) for r in residuals):.3f} bits per byte "
                        f"({max(abs(r) for r in residuals) / mean:.1%}): the points do not follow it closely")
    backtest = _backtest(points, law)
    if backtest is None:
        warnings.append("no backtest: the law fitted without the largest rung needs 3 other sizes; with "
                        "fewer than 4 sizes nothing checks the law beyond its rungs")
    return {"law": law.to_dict(), "warnings": warnings, "form": "L(N) = E + A/N^alpha" if law.one_variable
            else "L(N, D) = E + A/N^alpha + B/D^beta",
            "objective": objective, "max_abs_residual": max(abs(r) for r in residuals),
            "bootstrap": [b.to_dict() for b in laws], "bootstrap_resamples": samples, "n_points": len(points),
            "noise": {"residual": None if math.isnan(residual) else residual, "dof": dof,
                      "floor": noise_floor, "used": None if math.isnan(sigma) else sigma},
            "backtest": backtest,
            "parameters": "N counts non-embedding parameters; the loss is held-out bits per byte"}


def _backtest(points: Sequence[Point], law: ScalingLaw) -> dict[str, Any] | None:
    """The same law fitted without the largest rung, predicting it: its signed
    relative error (positive: the law was pessimistic) and how far beyond the other
    rungs it had to reach. None with fewer than 4 sizes."""
    sizes = sorted({p.params for p in points})
    if len(sizes) < 4:
        return None
    rest = [p for p in points if p.params < sizes[-1]]
    held = [p for p in points if p.params == sizes[-1]]
    partial, _, _ = fit_law(rest, law.tokens_per_param)
    predicted = sum(partial.predict(p.params, None if partial.one_variable else p.tokens) for p in held) / len(held)
    measured = sum(p.loss for p in held) / len(held)
    return {"non_embedding_params": sizes[-1], "measured": measured, "predicted": predicted,
            "error": (predicted - measured) / measured, "reach": sizes[-1] / sizes[-2],
            "law": partial.to_dict()}


def _describe(law: ScalingLaw) -> str:
    if law.one_variable:
        return (f"L(N) = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} at {law.tokens_per_param:.3g} "
                "tokens per parameter")
    return f"L(N, D) = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}"
