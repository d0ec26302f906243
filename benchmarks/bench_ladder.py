"""How far a ladder's law can be trusted: fit it to rungs on the demo corpus,
then train the config's model (about twice the largest rung) by the same rule and
compare its measured held-out bits per byte with the prediction and its interval;
optionally train one rung with several seeds for the rung-to-rung noise.

    python benchmarks/bench_ladder.py --run runs/ladderdemo [--sizes 16x2,24x3,...]
        [--holdout 56x7] [--tokens-per-param 5] [--seeds 3 --seed-rung 32x4]
        [key=value ...]

RUN must have the demo's data, tokenizer and tokens (`fmforge data|tokenizer|tokenize
configs/demo.yaml name=ladderdemo`). key=value overrides apply to the run's config
(the measurement in benchmarks/README.md: model.d_model=56 model.n_layers=7
model.n_heads=7 model.n_kv_heads=7 train.micro_batch_size=4). Without --sizes the
rungs are `fmforge ladder`'s default (the config model's own family); without
--holdout the held-out model is the config's. The rungs are cached under
RUN/ladder/ (the same as `fmforge ladder`'s); the held-out model trains the same
way into RUN/ladder/<size>/ but is left out of the fit, extra seeds into
RUN/seeds/. Prints the fit, the backtest, the prediction with its interval, the
measurement and the error; the JSON records the machine and its load, and the wall
and CPU seconds of the ladder and of the held-out run (the shared harness's ``Timer``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import yaml

from harness import Timer, machine  # benchmarks/, beside this script
from fmforge.config import apply_overrides, config_from_dict
from fmforge.ladder import run as ladder_run
from fmforge.model.counting import count_parameters
from fmforge.plan.scaling import ladder_prediction
from fmforge.rundir import RunDir, fingerprint


def _train(cfg, run: RunDir, rung, root, tokens_per_param: float):
    rcfg = ladder_run._rung_config(cfg, rung, root, tokens_per_param, None)
    held = RunDir(root)
    ladder_run._link_shared(run, held)
    tokens_fp = run.stage_record("tokenize")["output"]
    own = {"model": rcfg.model.model_dump(mode="json"), "seed": rcfg.seed,
           "train": rcfg.train.model_dump(mode="json", exclude={"tensorboard", "num_threads", "device"})}
    return rcfg, *ladder_run._train_and_evaluate(rcfg, held, fingerprint("ladder-rung", own, tokens_fp),
                                                 force=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run with the demo's data, tokenizer and tokens")
    ap.add_argument("--sizes", default=None, help="rungs (default: the config model's own family)")
    ap.add_argument("--holdout", default=None, help="the size to predict (default: the config's model)")
    ap.add_argument("--tokens-per-param", type=float, default=5.0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=1, help="train --seed-rung with this many seeds")
    ap.add_argument("--seed-rung", default=None, help="the rung trained with --seeds seeds")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the run's config")
    args = ap.parse_args()

    run = RunDir(args.run)
    raw = apply_overrides(yaml.safe_load(run.config.read_text(encoding="utf-8")), args.overrides)
    cfg = config_from_dict(raw)
    target = cfg.resolved_model()
    rungs = ladder_run.parse_sizes(args.sizes) if args.sizes else ladder_run.default_rungs(target)
    report: dict = {"machine": machine()}
    if args.seeds > 1:
        (rung,) = ladder_run.parse_sizes(args.seed_rung) if args.seed_rung else [rungs[len(rungs) // 2]]
        seeds = {}
        for k in range(args.seeds):
            seed = cfg.seed if k == 0 else k  # the config's seed, then 1, 2, ...
            root = run.root / "ladder" / rung.name if k == 0 else run.root / "seeds" / f"{rung.name}-s{seed}"
            _, _, evaluated = _train(cfg.model_copy(update={"seed": seed}), run, rung, root, args.tokens_per_param)
            seeds[seed] = evaluated["bits_per_byte"]
        values = list(seeds.values())
        report["seeds"] = {"rung": rung.name, "bits_per_byte": seeds,
                           "sd": statistics.stdev(values), "relative_sd": statistics.stdev(values) / statistics.mean(values),
                           "log_sd": statistics.stdev([math.log(v) for v in values])}
    with Timer() as fit:
        result = ladder_run.run_ladder(cfg, run, rungs, tokens_per_param=args.tokens_per_param, samples=args.samples)

    if args.holdout:
        (holdout,) = ladder_run.parse_sizes(args.holdout)
    else:
        holdout = ladder_run.Rung(target.d_model, target.n_layers)
    with Timer() as held:
        rcfg, train, evaluated = _train(cfg, run, holdout, run.root / "ladder" / holdout.name, args.tokens_per_param)
    n = count_parameters(rcfg.model).non_embedding
    predicted = ladder_prediction(result, n, float(train["tokens"]))
    measured = evaluated["bits_per_byte"]
    lo, hi = predicted.get("interval_90", (None, None))
    error = (predicted["bits_per_byte"] - measured) / measured if "bits_per_byte" in predicted else None
    report.update({
        "law": result["law"], "warnings": result["warnings"], "noise": result["noise"],
        "backtest": {k: v for k, v in (result["backtest"] or {}).items() if k != "law"},
        "rungs": [{k: r[k] for k in ("name", "non_embedding_params", "tokens", "epochs", "bits_per_byte", "fit")}
                  for r in result["rungs"]],
        "holdout": {"name": holdout.name, "non_embedding_params": n, "tokens": train["tokens"],
                    "times_largest_rung": predicted.get("extrapolation"), "measured_bits_per_byte": measured,
                    "predicted_bits_per_byte": predicted.get("bits_per_byte"),
                    "interval_90": predicted.get("interval_90"),
                    "interval_bootstrap": predicted.get("interval_bootstrap"), "error": error,
                    "inside": lo is not None and lo <= measured <= hi, "warnings": predicted["warnings"]},
        "seconds": {"ladder": round(fit.wall_s, 1), "holdout": round(held.wall_s, 1)},
        "cpu_seconds": {"ladder": round(fit.cpu_s, 1), "holdout": round(held.cpu_s, 1)},
    })
    print(json.dumps(report, indent=2))
    (run.root / "ladder" / "holdout.json").write_text(json.dumps(report, indent=2) + "\n")
    if error is not None:
        print(f"\nholdout {holdout.name}: predicted {predicted['bits_per_byte']:.4f}"
              + (f" (90% interval {lo:.4f}-{hi:.4f})" if lo is not None else "")
              + f", measured {measured:.4f} bits/byte: error {error:+.2%} at {predicted.get('extrapolation')}x "
              f"the largest rung; {'inside' if report['holdout']['inside'] else 'OUTSIDE'} the interval")


if __name__ == "__main__":
    main()
