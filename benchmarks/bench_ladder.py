"""How far a ladder's law can be trusted: fit it to rungs on the demo corpus,
then train a model about twice the largest rung by the same rule and compare its
measured held-out bits per byte with the prediction.

    python benchmarks/bench_ladder.py --run runs/demo [--sizes 32x1,32x2,64x1,64x2,64x3]
                                      [--holdout 96x3] [--tokens-per-param 10]

RUN must have the demo's data, tokenizer and tokens (`fmforge run configs/demo.yaml`,
or its first three stages). The rungs are `fmforge ladder`'s own (cached under
RUN/ladder/); the held-out size is trained the same way into RUN/ladder/<size>/
but left out of the fit. Prints the fit, the prediction with its interval, the
measurement and the error; results are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

from fmforge.config import config_from_dict
from fmforge.ladder import run as ladder_run
from fmforge.model.counting import count_parameters
from fmforge.plan.scaling import ladder_prediction
from fmforge.rundir import RunDir, fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run with the demo's data, tokenizer and tokens")
    ap.add_argument("--sizes", default="32x1,32x2,64x1,64x2,64x3")
    ap.add_argument("--holdout", default="96x3", help="a size about twice the largest rung")
    ap.add_argument("--tokens-per-param", type=float, default=10.0)
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()

    run = RunDir(args.run)
    cfg = config_from_dict(yaml.safe_load(run.config.read_text(encoding="utf-8")))
    rungs = ladder_run.parse_sizes(args.sizes)
    t0 = time.perf_counter()
    result = ladder_run.run_ladder(cfg, run, rungs, tokens_per_param=args.tokens_per_param,
                                   samples=args.samples)
    fit_s = time.perf_counter() - t0

    (holdout,) = ladder_run.parse_sizes(args.holdout)
    root = run.root / "ladder" / holdout.name
    rcfg = ladder_run._rung_config(cfg, holdout, root, args.tokens_per_param, None)
    held = RunDir(root)
    ladder_run._link_shared(run, held)
    tokens_fp = run.stage_record("tokenize")["output"]
    own = {"model": rcfg.model.model_dump(mode="json"), "seed": rcfg.seed,
           "train": rcfg.train.model_dump(mode="json", exclude={"tensorboard", "num_threads", "device"})}
    t1 = time.perf_counter()
    train, evaluated = ladder_run._train_and_evaluate(rcfg, held, fingerprint("ladder-rung", own, tokens_fp),
                                                      force=False)
    held_s = time.perf_counter() - t1
    n = count_parameters(rcfg.model).non_embedding
    predicted = ladder_prediction(result, n, float(train["tokens"]))
    measured = evaluated["bits_per_byte"]
    error = (predicted["bits_per_byte"] - measured) / measured
    report = {
        "law": result["law"], "warnings": result["warnings"],
        "rungs": [{k: r[k] for k in ("name", "non_embedding_params", "tokens", "bits_per_byte", "fit")}
                  for r in result["rungs"]],
        "holdout": {"name": holdout.name, "non_embedding_params": n, "tokens": train["tokens"],
                    "times_largest_rung": predicted.get("extrapolation"), "measured_bits_per_byte": measured,
                    "predicted_bits_per_byte": predicted["bits_per_byte"],
                    "interval_90": predicted.get("interval_90"), "error": error},
        "seconds": {"ladder": round(fit_s, 1), "holdout": round(held_s, 1)},
    }
    print(json.dumps(report, indent=2))
    out = run.root / "ladder" / "holdout.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nholdout {holdout.name}: predicted {predicted['bits_per_byte']:.4f}, measured {measured:.4f} "
          f"bits/byte: error {error:+.2%} at {predicted.get('extrapolation')}x the largest rung")


if __name__ == "__main__":
    main()
