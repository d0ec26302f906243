"""Rich tables for a plan, a budget sizing, a train/customize/buy decision and a
plan-versus-actual comparison. Each takes the JSON-able dict the library returns,
so what is printed and what ``--json`` emits cannot disagree."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

from fmforge.plan import format as fmt


def _table(title: str, columns: Iterable[str], numbers_right: bool = False) -> Table:
    """A left-titled table; with ``numbers_right`` every column after the first is right-aligned."""
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if numbers_right and i else "left")
    return t


def render_plan(p: dict[str, Any]) -> list[Any]:
    t = Table(title="Training plan", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("parameters", f"{p['params']:,.0f}" if p["params"] >= 1 else fmt.count(p["params"]))
    if p.get("params_breakdown"):
        b = p["params_breakdown"]
        t.add_row("  embedding / attention / MLP / norms / head",
                  " / ".join(fmt.count(b[k]) for k in ("embedding", "attention", "mlp", "norms", "lm_head")))
    t.add_row("tokens", fmt.count(p["tokens"]))
    t.add_row("FLOPs per token", f"{p['flops_per_token']:.4g} ({p['flops_convention']} convention)")
    t.add_row("training FLOPs", f"{p['train_flops']:.4g}")
    t.add_row("hardware", f"{p['num_gpus']} × {p['gpu_name']} ({p['peak_flops'] / 1e12:.4g} TFLOP/s peak)")
    t.add_row("MFU", f"{p['mfu']:.2f} ({p['mfu_source']})")
    t.add_row("throughput", f"{fmt.count(p['tokens_per_s'])} tokens/s")
    t.add_row("GPU-hours", fmt.hours(p["gpu_hours"]))
    t.add_row("wall clock", fmt.duration(p["wall_hours"]))
    t.add_row("cost", f"{fmt.usd(p['cost_usd'])} at ${p['price_per_gpu_hour']:g}/GPU-hour")
    m = p["memory"]
    # One column per strategy, one row per component: narrow enough for an 80-column
    # terminal, so no number is ever cut short.
    mt = Table(title=f"Memory per device, GB ({p['dtype']}, micro-batch {p['micro_batch_size']})",
               title_justify="left")
    if p["num_gpus"] == 1 and "ddp" in m:
        cols = [("1 device", m["ddp"])]
    else:
        cols = [(f"{s} × {p['num_gpus']}", m[s]) for s in ("ddp", "fsdp") if s in m] or [(m["strategy"], m)]
    mt.add_column("")
    for name, _ in cols:
        mt.add_column(name, justify="right", no_wrap=True)
    for label, key in (("weights", "weights_gb"), ("gradients", "grads_gb"), ("optimizer", "optimizer_gb"),
                       ("activations", "activations_gb"), ("buffers", "buffers_gb"), ("total", "total_gb"),
                       ("usable", "usable_gb")):
        vals = [r.get(key) for _, r in cols]
        mt.add_row(label, *("-" if v is None else f"{v:,.2f}" for v in vals),
                   style="bold" if key == "total_gb" else None)
    mt.add_row("fits", *("yes" if r["fits"] else "[red]no[/red]" for _, r in cols))
    lines = [f"activations without / with checkpointing: {m['activations_full_gb']:.2f} / "
             f"{m['activations_checkpointed_gb']:.2f} GB"] if m.get("activations_full_gb") is not None else []
    lines.append(f"min {p['gpu']} devices that fit: {p['min_gpus'] if p['min_gpus'] is not None else 'none'}"
                 + (f" ({p['min_gpus_strategy']})" if p.get("min_gpus_strategy") else ""))
    if p.get("max_micro_batch") is not None:
        lines.append(f"largest micro-batch that fits: {p['max_micro_batch']}")
    out: list[Any] = [t, mt, Text("\n".join(lines))]
    for w in p.get("warnings", []):
        out.append(Text(f"warning: {w}", style="yellow"))
    out.append(Text(f"sources: {p['sources']['spec']}; price: {p['sources']['price']}", style="dim"))
    return out


def render_sizing(s: dict[str, Any]) -> list[Any]:
    data = s.get("data_tokens_available") is not None
    t = _table(f"What {fmt.usd(s['budget_usd'])} = {s['gpu_hours']:,.0f} {s['gpu']} GPU-hours buys "
               f"({s['compute_flops']:.3g} FLOPs at MFU {s['mfu']:.2f})",
               ("option", "params", "tokens", "tok/param", "fit loss", "serve FLOPs/tok",
                *(("epochs of your data", "more data") if data else ())))
    for o in s["options"]:
        t.add_row(o["label"], fmt.count(o["params"]), fmt.count(o["tokens"]), f"{o['tokens_per_param']:.0f}",
                  f"{o['chinchilla_loss']:.3f}", fmt.count(o["inference_flops_per_token"]),
                  *((f"{o['epochs_of_data']:,.1f}", fmt.count(o["more_tokens_needed"] or None)) if data else ()))
    out: list[Any] = [t, *(Text(n) for n in s.get("notes", []))]
    if data:
        source = s.get("data_source") or "given"
        out.append(Text(f"your data: {fmt.count(s['data_tokens_available'])} tokens ({source})"))
    return out + [Text(n) for n in s.get("data_notes", [])]


def render_ladder(l: dict[str, Any]) -> list[Any]:
    """The run's own scaling law: predicted held-out bits per byte with its interval."""
    t = _table(f"Predicted by this run's ladder ({l['rungs']} rungs, {l.get('form') or 'fitted law'})",
               ("model", "N (non-emb.)", "D tokens", "bits/byte", "90% interval", "N/largest rung"))

    def row(label: str, p: dict[str, Any]) -> None:
        if "bits_per_byte" not in p:
            t.add_row(label, fmt.count(p["non_embedding_params"]), "-", "-", p.get("note", "-"), "-")
            return
        lo_hi = p.get("interval_90")
        t.add_row(label, fmt.count(p["non_embedding_params"]), fmt.count(p["tokens"]),
                  f"{p['bits_per_byte']:.3f}", f"{lo_hi[0]:.3f}-{lo_hi[1]:.3f}" if lo_hi else "-",
                  f"{p['extrapolation']:g}" if p.get("extrapolation") is not None else "-")

    row("config", l["planned"])
    if "optimum" in l:
        row("budget optimum", l["optimum"])
    out: list[Any] = [t]
    if l.get("optimum", {}).get("how"):
        o = l["optimum"]
        out.append(Text(f"budget optimum: {o['how']}; {fmt.count(o['tokens'])} tokens x "
                        f"{o['flops_per_token']:.3g} FLOPs per token (head and attention included) = the "
                        f"budget's {o['compute_flops']:.3g} FLOPs"))
    if l["law"].get("tokens_per_param") is not None:
        out.append(Text(f"the law holds for models trained on {l['law']['tokens_per_param']:.3g} tokens per "
                        "non-embedding parameter, as its rungs were; the prediction assumes that budget"))
    out += [Text(n) for n in l.get("notes", [])]
    out += [Text(f"warning: {w}", style="yellow") for w in l.get("warnings", [])]
    return out


def render_quality(q: dict[str, Any]) -> list[Any]:
    """Train, customize or use as is: held-out bits per byte beside what each costs.
    Narrow enough for 80 columns (a pipe, a log): the figures in the table, overall
    and per source when the run has sources; each row's size and basis in a line
    below it."""
    serving = q.get("monthly_tokens") is not None
    sources = sorted({s for r in q["rows"] for s in (r.get("per_source") or {})})
    intervals = any(r.get("interval_90") for r in q["rows"])
    t = _table("Quality beside cost: bits per byte on your held-out bytes (lower is better)",
               ("option", "model", "overall", *sources, *(("90% interval",) if intervals else ()),
                "one-time", *(("serve/mo",) if serving else ())))
    # the option and the model's name whole on one line; the sources' names may break
    t.columns[0].no_wrap, t.columns[0].min_width = True, 9
    t.columns[1].no_wrap = True
    t.columns[1].min_width = min(24, max([len(r["model"]) for r in q["rows"]] + [7]))
    for col in t.columns[2:]:
        col.overflow = "fold"

    def bpb(v: float | None) -> str:
        return f"{v:.4f}" if v is not None else "-"

    basis = []
    for r in q["rows"]:
        lo_hi = r.get("interval_90")
        t.add_row(r["option"], r["model"],
                  bpb(r.get("bits_per_byte")), *(bpb((r.get("per_source") or {}).get(s)) for s in sources),
                  *((f"{lo_hi[0]:.3f}-{lo_hi[1]:.3f}" if lo_hi else "-",) if intervals else ()),
                  fmt.usd(r["one_time_usd"]) if r.get("one_time_usd") is not None else "-",
                  *((fmt.usd(r["monthly_usd"]) if r.get("monthly_usd") is not None else "-",) if serving else ()))
        size = f"{fmt.count(r['params'])} parameters; " if r.get("params") else ""
        basis.append(f"- {r['model']}: {size}{r['basis']}")
    refs, ref_sources = q.get("references", {}), q.get("reference_per_source") or {}
    for key, label in (("gzip", "gzip -9"), ("xz", "xz -9e")):
        if refs.get(key) is not None:
            t.add_row("reference", label, bpb(refs[key]),
                      *(bpb((ref_sources.get(s) or {}).get(key)) for s in sources),
                      *(("-",) if intervals else ()), "-", *(("-",) if serving else ()))
    return [t, *(Text(b) for b in basis), *(Text(n) for n in q.get("notes", []))]


def _payback(o: dict[str, Any]) -> str:
    if o["option"] == "buy":
        return "-"
    return "never" if o["payback_months"] is None else fmt.months(o["payback_months"])


def _saving(o: dict[str, Any], buy_monthly: float) -> str:
    saving = buy_monthly - o["monthly_usd"]
    return f"saves {fmt.usd(saving)}/mo against buying" if saving > 0 else f"costs {fmt.usd(-saving)}/mo more than buying"


def render_decision(d: dict[str, Any]) -> list[Any]:
    """The three options' costs in two tables narrow enough for 80 columns; what
    each option needs and how it was priced in lines below them."""
    h, a = d["horizon_months"], d["assumptions"]
    buy_monthly = next(o["monthly_usd"] for o in d["options"] if o["option"] == "buy")
    t = _table(f"Train, customize or buy (over {h} months)",
               ("option", "model", "one-time", "monthly", f"{h} months", "first model", "pays back"))
    p = _table(f"How each option is priced ({a['gpu']} at ${a['price_per_gpu_hour']:g}/GPU-hour)",
               ("option", "tokens", "FLOPs/tok", "FLOPs", "MFU", "GPU-h", "GPUs", "serving"),
               numbers_right=True)
    needs, priced = [], []
    for o in d["options"]:
        days, fpt = o["time_to_first_model_days"], o["flops_per_token"]
        t.add_row(o["option"], fmt.count(o["model_params"]), fmt.usd(o["one_time_usd"]), fmt.usd(o["monthly_usd"]),
                  fmt.usd(o["total_usd"]), "now" if days == 0 else fmt.duration(days * 24),
                  _payback(o))
        saving = "" if o["option"] == "buy" else f"{_saving(o, buy_monthly)}; "
        needs.append(f"- {o['option']}: {saving}needs {o['needs']}")
        if o["option"] == "buy":
            p.add_row("buy", f"{o['tokens']:.3g}/mo", *["-"] * 6)
        else:
            p.add_row(o["option"], f"{o['tokens']:.3g}", f"{fpt:.3g}", f"{o['tokens'] * fpt:.3g}",
                      f"{o['mfu']:.2f}", fmt.hours(o["gpu_hours"]), str(o["train_gpus"]), str(o["serve_gpus"]))
            priced.append(f"- {o['option']}: {fpt / o['model_params']:.2f}·N FLOPs per token; serving on "
                          f"{o['serve_gpus']} GPUs, {o['replica_gpus']} a replica")
    return [t, *(Text(n) for n in needs), p, *(Text(n) for n in priced), *(Text(f"- {r}") for r in d["reasoning"])]


def render_actual(c: dict[str, Any]) -> list[Any]:
    t = _table(f"Plan versus actual: {c['run']}", ("metric", "predicted", "actual", "error"), numbers_right=True)
    shown = {"tokens_per_s": fmt.count, "mfu": lambda x: f"{x:.3f}", "wall_s": lambda x: f"{x:,.1f} s",
             "cost_usd": fmt.usd, "peak_memory_gb": lambda x: f"{x:,.3f} GB"}
    for r in c["rows"]:
        f = shown.get(r["metric"], fmt.count)
        t.add_row(r["metric"], f(r["predicted"]), f(r["actual"]), fmt.pct(r["error_pct"]))
    return [t, *(Text(n, style="dim") for n in c["notes"])]
