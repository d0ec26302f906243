"""The decision with quality beside cost: train your own, customize, or use a
model as it is, each with its held-out bits per byte on the user's own data.

Read from the run directory (no stage is imported): the run's own figure from
``eval.json``; other models scored on the same bytes from ``eval.json``'s
``against`` (``fmforge eval RUN --against``): a Hugging Face model is "use as
is", a PEFT adapter or a fine-tune's whole model "customize" (its cost from the
fine-tune's ``summary.json`` beside it), another fmforge run "train" (its cost from its own plan and
metrics); the run's ladder (``ladder/ladder.json``) predicts the config's model
and, with a budget, the compute-optimal one, with their 90% intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fmforge.hardware import Hardware, get_hardware
from fmforge.model.counting import count_parameters
from fmforge.plan.actual import compare_plan_to_actual
from fmforge.plan.decide import serving_cost
from fmforge.plan.errors import PlanError
from fmforge.plan.autosize import budget_optimum
from fmforge.plan.scaling import ScalingLaw, ladder_prediction, read_ladder
from fmforge.plan.sizing import repetition_note
from fmforge.rundir import RunDir, against_stale


def _eval(root: Path) -> dict[str, Any]:
    path = RunDir(root).eval_json
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _actual_cost(root: Path) -> float | None:
    try:
        rows = compare_plan_to_actual(root)["rows"]
    except (PlanError, KeyError, ValueError, OSError):
        return None
    return next((r["actual"] for r in rows if r["metric"] == "cost_usd"), None)


def _customize_cost(adapter: Path, hardware: Hardware) -> tuple[float | None, str | None]:
    """One-time cost of the fine-tune that made ``adapter`` (an adapter or a whole
    model): its wall time on the device it ran on (``summary.json`` beside it), at
    ``hardware``'s price when that is the same kind of device (the user's price),
    else at the catalogue's."""
    summary = adapter.parent / "summary.json"
    if not summary.is_file():
        return None, None
    s = json.loads(summary.read_text(encoding="utf-8"))
    if not s.get("wall_s"):
        return None, None
    device = "cpu" if not str(s.get("device", "cpu")).startswith("cuda") else "h100-sxm"
    hw = hardware if hardware.key == device else get_hardware(device, measure_cpu=False)
    what = "continued pretraining" if s.get("train_on") == "tokens" else f"{s.get('method', 'lora')} fine-tune"
    return float(s["wall_s"]) / 3600 * hw.price_per_hour, f"{what}, {s['wall_s']:.0f} s"


def _per_source(r: dict[str, Any]) -> dict[str, float | None]:
    return {k: v.get("bits_per_byte") for k, v in (r.get("per_source") or {}).items()}


def optimum_prediction(ladder: dict[str, Any], compute: float, model: Any) -> dict[str, Any]:
    """What the ladder predicts for the model ``compute`` training FLOPs buy among the
    real shapes of ``model``'s family (``autosize.budget_optimum``), with that
    model's tokens, FLOPs per token, total parameters and how it was found."""
    opt = budget_optimum(ScalingLaw.from_dict(ladder["law"]), compute, model)
    return {"compute_flops": compute, **ladder_prediction(ladder, opt["non_embedding_params"], opt["tokens"]),
            **{k: opt[k] for k in ("tokens", "flops_per_token", "params", "shape", "how")}}


def _cautions(predicted: dict[str, Any], tokens: float | None, data_tokens: float | None, what: str) -> list[str]:
    """The prediction's own warnings (the ladder's), and one when its training repeats the data."""
    warnings = list(predicted.get("warnings") or [])
    if not any("epoch" in w or "repeat" in w for w in warnings):
        note = repetition_note(tokens or 0.0, data_tokens, what)
        if note:
            warnings.append(note)
    return warnings


def _configs_row(ladder: dict[str, Any], model: Any, plan: dict[str, Any], data_tokens: float | None,
                 serve: Any) -> dict[str, Any]:
    """The config's model as the ladder predicts it, priced for the training the
    prediction is for: the one-variable law describes a model trained at its rule,
    so where the config plans another ratio the row is priced at the rule's tokens."""
    counts = count_parameters(model)
    law = ScalingLaw.from_dict(ladder["law"])
    planned, cost = plan.get("tokens"), plan.get("cost_usd")
    predicted = ladder_prediction(ladder, counts.non_embedding, planned)
    trained = predicted.get("tokens", planned)
    basis = [f"ladder, {predicted.get('extrapolation', 0):g}x its largest rung"]
    if law.one_variable and planned and trained and not math.isclose(trained, planned, rel_tol=0.05):
        cost = cost * trained / planned if cost is not None else None
        basis.append(
            f"quality and cost both for {trained:,.0f} tokens ({law.tokens_per_param:.3g} tokens per non-embedding "
            f"parameter, the ladder's rule); the config plans {planned:,.0f} ({planned / counts.non_embedding:.3g} "
            "per parameter), which this law does not describe: give the ladder rungs at a second "
            "tokens-per-parameter (the two-variable law) to predict that")
    if "bits_per_byte" not in predicted:
        basis.append("no prediction" + (f": {predicted['note']}" if predicted.get("note") else ""))
    basis += _cautions(predicted, trained, data_tokens, "the config's model")
    return {"option": "train", "model": "config's model, predicted", "params": counts.total,
            "bits_per_byte": predicted.get("bits_per_byte"), "interval_90": predicted.get("interval_90"),
            "per_source": {}, "basis": "; ".join(basis), "tokens": trained, "one_time_usd": cost,
            "monthly_usd": serve(counts.total)}


def _lowest(rows: list[dict[str, Any]]) -> list[str]:
    """Which option scores lowest: among measured rows; a prediction is named as better
    only when its whole 90% interval lies below the best measurement (a point
    prediction with a wide interval is no evidence that it beats a measured model)."""
    scored = [r for r in rows if r["bits_per_byte"] is not None]
    # a prediction's row always has an interval (None without a bootstrap); a measured row never does:
    # a model's row is named after its folder, which may hold any word, "predicted" too
    measured = [r for r in scored if "interval_90" not in r]
    predicted = [r for r in scored if r not in measured]
    notes = []
    best = min(measured, key=lambda r: r["bits_per_byte"], default=None)
    if best is not None:
        notes.append(f"lowest measured held-out bits per byte: {best['model']} ({best['option']}, "
                     f"{best['bits_per_byte']:.4f}, {best['basis'].split('; ')[0]})")
    for r in predicted:
        hi = (r.get("interval_90") or [None, None])[1]
        if best is None:
            continue
        if hi is not None and hi < best["bits_per_byte"]:
            notes.append(f"{r['model']}: {r['bits_per_byte']:.4f}, its 90% interval wholly below "
                         f"{best['model']}'s measured {best['bits_per_byte']:.4f}")
        elif r["bits_per_byte"] < best["bits_per_byte"]:
            interval = r.get("interval_90")
            spread = f" (90% interval {interval[0]:.4f}-{interval[1]:.4f})" if interval else ""
            notes.append(f"{r['model']}: {r['bits_per_byte']:.4f}{spread} is below {best['model']}'s measured "
                         f"{best['bits_per_byte']:.4f}, but its interval includes that figure: not shown "
                         "to be better; train it and measure")
    if best is None and predicted:
        top = min(predicted, key=lambda r: r["bits_per_byte"])
        notes.append(f"nothing measured yet; lowest prediction: {top['model']} ({top['bits_per_byte']:.4f})")
    return notes


def quality_table(run_root: str | Path, cfg: Any, plan: dict[str, Any], hardware: Hardware,
                  monthly_tokens: float | None = None, data_tokens: float | None = None) -> dict[str, Any]:
    """Rows of options with their held-out bits per byte (measured or predicted)
    and costs; ``plan`` is ``fmforge plan``'s data for the config (its cost, and
    ``sizing`` with a budget); ``data_tokens``: the training data's size, to say
    when a predicted model would repeat it."""
    root = Path(run_root)
    ev = _eval(root)
    rows: list[dict[str, Any]] = []

    def serve(params: float | None) -> float | None:
        if monthly_tokens is None or not params:
            return None
        return serving_cost(params, monthly_tokens, hardware)[0]

    if ev.get("bits_per_byte") is not None:
        summary = (RunDir(root).stage_record("train") or {}).get("summary", {})
        params = summary.get("params")
        rows.append({"option": "train", "model": f"{root.name} (this run)",
                     "params": params, "bits_per_byte": ev["bits_per_byte"], "per_source": _per_source(ev),
                     "basis": f"measured at step {ev.get('step')}", "one_time_usd": _actual_cost(root),
                     "monthly_usd": serve(params)})
    stale = []
    for name, r in sorted((ev.get("against") or {}).items()):
        why = against_stale(RunDir(root), r)
        if why is not None:  # other held-out bytes than the run's own now: no comparison
            stale.append(f"{name} left out: {why}; rescore it with `fmforge eval RUN --against {r['path']}`")
            continue
        path = Path(r["path"])
        kind = r.get("kind")
        if kind == "peft" or (kind == "hf" and (path.parent / "summary.json").is_file()):
            # an adapter, or the whole model a full fine-tune or continued pretraining wrote
            cost, how = _customize_cost(path, hardware)
            option, basis = "customize", "measured" + (f"; {how}" if how else "")
        elif kind == "fmforge":
            cost, option, basis = _actual_cost(path), "train", "measured"
        else:
            cost, option, basis = 0.0, "use as is", "measured; weights already trained"
        if r.get("max_bytes"):
            basis += f"; first {r['max_bytes']:,} held-out bytes"
        rows.append({"option": option, "model": name, "params": r.get("params"),
                     "bits_per_byte": r.get("bits_per_byte"), "per_source": _per_source(r), "basis": basis,
                     "one_time_usd": cost, "monthly_usd": serve(r.get("params"))})
    ladder = read_ladder(root)
    if ladder is not None and cfg is not None:
        model = cfg.resolved_model()
        rows.append(_configs_row(ladder, model, plan, data_tokens, serve))
        compute = (plan.get("sizing") or {}).get("compute_flops")
        if compute:
            p = optimum_prediction(ladder, compute, model)
            basis = [f"ladder, {p.get('extrapolation', 0):g}x its largest rung", p["how"],
                     f"{p['tokens']:,.0f} tokens x {p['flops_per_token']:,.0f} FLOPs per token = the budget's "
                     f"{compute:.3g} FLOPs", *_cautions(p, p["tokens"], data_tokens, "the budget optimum")]
            rows.append({"option": "train", "model": "budget optimum, predicted",
                         "params": p["params"], "bits_per_byte": p.get("bits_per_byte"),
                         "interval_90": p.get("interval_90"), "per_source": {}, "basis": "; ".join(basis),
                         "tokens": p["tokens"],
                         "one_time_usd": (plan.get("sizing") or {}).get("budget_usd"),
                         "monthly_usd": serve(p["params"])})
    if not rows:
        raise PlanError(f"nothing to compare in {root}: evaluate the run (`fmforge eval RUN`), score other "
                        "models on its held-out bytes (`fmforge eval RUN --against DIR`) or fit a ladder "
                        "(`fmforge ladder CONFIG`) first")
    references = {k: ev.get(f"{k}_bits_per_byte") for k in ("gzip", "xz")}
    notes = _lowest(rows)
    notes += stale
    if references["xz"] is not None:
        notes.append(f"xz -9e on the same bytes: {references['xz']:.4f} bits per byte; a model above it has "
                     "learned less about this data than a general-purpose compressor")
    reference_per_source = {s: {"gzip": r.get("gzip_bits_per_byte"), "xz": r.get("xz_bits_per_byte")}
                            for s, r in (ev.get("per_source") or {}).items()}
    return {"run": str(root), "rows": rows, "references": references,
            "reference_per_source": reference_per_source,
            "monthly_tokens": monthly_tokens, "gpu": hardware.key, "notes": notes}
