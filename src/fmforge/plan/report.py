"""Rich tables for a plan, a budget sizing, a train/customize/buy decision and a
plan-versus-actual comparison. Each takes the JSON-able dict the library returns,
so what is printed and what ``--json`` emits cannot disagree."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _n(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if ax >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if x == 0 or abs(x) >= 0.01:
        return f"${x:,.2f}"
    return f"${x:.2g}"  # a fraction of a cent: show it, not "$0.00"


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 10 else f"{h:.3g}"


def _duration(hours: float) -> str:
    """Wall-clock time in the unit a reader expects: days, hours, minutes or seconds."""
    if hours >= 48:
        return f"{hours / 24:,.1f} days ({hours:,.0f} h)"
    if hours >= 1:
        return f"{hours:.1f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.3g} s"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"


def render_plan(p: dict[str, Any]) -> list[Any]:
    t = Table(title="Training plan", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("parameters", f"{p['params']:,.0f}" if p["params"] >= 1 else _n(p["params"]))
    if p.get("params_breakdown"):
        b = p["params_breakdown"]
        t.add_row("  embedding / attention / MLP / norms / head",
                  " / ".join(_n(b[k]) for k in ("embedding", "attention", "mlp", "norms", "lm_head")))
    t.add_row("tokens", _n(p["tokens"]))
    t.add_row("FLOPs per token", f"{p['flops_per_token']:.4g} ({p['flops_convention']} convention)")
    t.add_row("training FLOPs", f"{p['train_flops']:.4g}")
    t.add_row("hardware", f"{p['num_gpus']} × {p['gpu_name']} ({p['peak_flops'] / 1e12:.4g} TFLOP/s peak)")
    t.add_row("MFU", f"{p['mfu']:.2f} ({p['mfu_source']})")
    t.add_row("throughput", f"{_n(p['tokens_per_s'])} tokens/s")
    t.add_row("GPU-hours", _hours(p["gpu_hours"]))
    t.add_row("wall clock", _duration(p["wall_hours"]))
    t.add_row("cost", f"{_usd(p['cost_usd'])} at ${p['price_per_gpu_hour']:g}/GPU-hour")
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
    t = Table(
        title=f"What {_usd(s['budget_usd'])} = {s['gpu_hours']:,.0f} {s['gpu']} GPU-hours buys "
              f"({s['compute_flops']:.3g} FLOPs at MFU {s['mfu']:.2f})",
        title_justify="left",
    )
    for col in ("option", "params", "tokens", "tok/param", "fit loss", "serve FLOPs/tok"):
        t.add_column(col)
    for o in s["options"]:
        t.add_row(o["label"], _n(o["params"]), _n(o["tokens"]), f"{o['tokens_per_param']:.0f}",
                  f"{o['chinchilla_loss']:.3f}", _n(o["inference_flops_per_token"]))
    out: list[Any] = [t, *(Text(n) for n in s.get("notes", []))]
    if s.get("data_tokens_available") is not None:
        out.append(Text(f"your data: {_n(s['data_tokens_available'])} tokens ({s.get('data_source') or 'given'})"))
    out += [Text(n) for n in s.get("data_notes", [])]
    return out


def render_decision(d: dict[str, Any]) -> list[Any]:
    t = Table(title=f"Train, customize or buy (over {d['horizon_months']} months)", title_justify="left")
    for col in ("option", "model", "one-time", "monthly", f"total {d['horizon_months']} mo",
                "time to first model", "needs"):
        t.add_column(col)
    for o in d["options"]:
        days = o["time_to_first_model_days"]
        t.add_row(o["option"], _n(o["model_params"]), _usd(o["one_time_usd"]), _usd(o["monthly_usd"]),
                  _usd(o["total_usd"]), "now" if days == 0 else _duration(days * 24),
                  o["needs"])
    return [t, Text("Reasoning:", style="bold"), *(Text(f"- {r}") for r in d["reasoning"])]


def render_actual(c: dict[str, Any]) -> list[Any]:
    t = Table(title=f"Plan versus actual: {c['run']}", title_justify="left")
    for col in ("metric", "predicted", "actual", "error"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    fmt = {"tokens_per_s": _n, "mfu": lambda x: f"{x:.3f}", "wall_s": lambda x: f"{x:,.1f} s", "cost_usd": _usd}
    for r in c["rows"]:
        f = fmt.get(r["metric"], _n)
        t.add_row(r["metric"], f(r["predicted"]), f(r["actual"]), _pct(r["error_pct"]))
    return [t, *(Text(n, style="dim") for n in c["notes"])]


def as_group(renderables: list[Any]) -> Group:
    return Group(*renderables)
