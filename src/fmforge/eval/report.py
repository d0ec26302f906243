"""The run report: one self-contained ``report.html`` a person reads.

Sections (each an ``<section id=...>``): training curves (loss and validation
loss against tokens seen, learning rate, tokens/s, MFU, gradient norm), the data
card (per source: weight, documents and bytes through each step, duplicates,
tokens, bytes per token), held-out results beside the gzip and xz baselines per
source, lm-eval results, plan against actual, and greedy completions of fixed
prompts at the latest checkpoint. Plots are matplotlib PNGs embedded as base64,
so the file can be mailed or attached as it is.

The planner sits beside this package, so the plan-versus-actual figures are
passed in by the caller (``fmforge.pipeline.write_run_report``) rather than
computed here.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path
from typing import Any, Iterable

from fmforge.eval.results import current_against, read_eval
from fmforge.rundir import RunDir, atomic_write_text, read_metrics

SECTIONS = ("training", "data", "heldout", "harness", "plan", "samples")
COLORS = {"model": "#1f77b4", "gzip": "#d62728", "xz": "#ff7f0e"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;
padding:24px 32px;color:#1d1d1f;line-height:1.45}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:34px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:14px} .note{color:#666;font-size:13px;margin:6px 0}
.empty{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px;font-size:14px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 4px}
th,td{padding:4px 7px;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th{background:#f5f5f7;font-weight:600} td:first-child,th:first-child{text-align:left}
.scroll{overflow-x:auto} .grid{display:grid;grid-template-columns:repeat(3,1fr);gap:8px} .grid img{width:100%}
img.wide{max-width:100%} .kv td{text-align:left}
pre{background:#f6f8fa;padding:10px 12px;border-radius:4px;white-space:pre-wrap;font-size:13px;margin:4px 0 0}
pre b{color:#0b5cad;font-weight:600}
"""


# --------------------------------------------------------------------------- pieces

def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "–"
        if abs(v) >= 10_000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1e-3 or abs(v) >= 1000 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def table(headers: list[str], rows: Iterable[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def figure_png(fig) -> str:
    """A matplotlib figure as an <img> with a base64 PNG, then closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    title = fig._suptitle.get_text() if fig._suptitle else (fig.axes[0].get_title() if fig.axes else "plot")
    return (f'<img alt="{esc(title)}" src="data:image/png;base64,'
            f'{base64.b64encode(buf.getvalue()).decode("ascii")}">')


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.3})
    return plt


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def empty(message: str) -> str:
    return f'<p class="empty">{esc(message)}</p>'


# --------------------------------------------------------------------------- sections

def _series(metrics: list[dict], key: str, x: str = "tokens") -> tuple[list, list]:
    pts = [(m[x], m[key]) for m in metrics
           if isinstance(m.get(key), (int, float)) and isinstance(m.get(x), (int, float)) and not m.get("skipped")]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_section(run: RunDir) -> str:
    metrics = read_metrics(run.metrics)
    if not metrics:
        return section("training", "Training", empty(f"no {run.metrics.name} yet: run `fmforge train CONFIG`"))
    plt = _plt()
    imgs = []
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot(*_series(metrics, "loss"), label="train loss", lw=1.2, color=COLORS["model"])
    vx, vy = _series(metrics, "val_loss")
    if vx:
        ax.plot(vx, vy, "o-", label="validation loss", ms=4, lw=1.5, color=COLORS["gzip"])
    ax.set(title="Loss against tokens seen", xlabel="tokens seen", ylabel="nats per token")
    ax.legend()
    imgs.append(figure_png(fig))
    for key, title, ylabel in (("lr", "Learning rate", "lr"), ("tokens_per_s", "Throughput", "tokens/s"),
                               ("mfu", "Model FLOPs utilisation", "MFU"), ("grad_norm", "Gradient norm", "norm")):
        xs, ys = _series(metrics, key)
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        ax.plot(xs, ys, lw=1.2, color=COLORS["model"])
        ax.set(title=title, xlabel="tokens seen", ylabel=ylabel)
        imgs.append(figure_png(fig))
    last = metrics[-1]
    val = [m for m in metrics if "val_loss" in m]
    facts = [["steps", last.get("step")], ["tokens seen", last.get("tokens")],
             ["final train loss", last.get("loss")], ["final validation loss", val[-1]["val_loss"] if val else None],
             ["wall time (s)", last.get("elapsed_s")]]
    body = f'<div class="grid">{"".join(imgs)}</div>' + table(["", "value"], facts, "kv")
    return section("training", "Training", body)


def data_section(run: RunDir) -> str:
    if not run.data_card.is_file():
        return section("data", "Data card", empty("no data card: run `fmforge data CONFIG`"))
    card = run.read_data_card()
    meta = run.tokens_meta() if (run.tokens / "meta.json").is_file() else {}
    per_source_tokens = meta.get("per_source", {})
    sources = card.get("sources", {})
    sources = sources.values() if isinstance(sources, dict) else sources
    rows, steps_rows = [], []
    for s in sources:
        name = s.get("name")
        tok = {split: per_source_tokens.get(split, {}).get(name, {}) for split in ("train", "val")}
        rows.append([name, s.get("weight"), s.get("files_read"), s.get("documents_read"),
                     s.get("bytes_read"), s.get("dropped_total"), s.get("duplicates"), s.get("kept_documents"),
                     s.get("train_documents"), s.get("train_bytes"), s.get("val_documents"), s.get("val_bytes"),
                     tok["train"].get("tokens"), tok["train"].get("bytes_per_token"),
                     (s.get("mixture") or {}).get("share_of_train_bytes")])
        dropped = {k: v for k, v in (s.get("dropped") or {}).items() if v}
        steps_rows.append([name, s.get("documents_read"),
                           ", ".join(f"{k} {v:,}" for k, v in dropped.items()) or "none",
                           s.get("duplicates"), s.get("kept_documents"),
                           (s.get("problems") or {}).get("total", 0)])
    body = table(["source", "weight", "files", "docs read", "bytes read", "dropped", "duplicates",
                  "kept", "train docs", "train bytes", "val docs", "val bytes", "train tokens",
                  "bytes/token", "share of train"], rows)
    body += "<p class='note'>Documents through each step (dropped per filter rule, then duplicates):</p>"
    body += table(["source", "read", "dropped by step", "duplicates", "kept", "input problems"], steps_rows)
    grouped = card.get("grouped_sources") or {}
    if grouped:  # a grouped source's rows are its groups; its files and problems are here
        body += "<p class='note'>Sources split into groups by a field of their records (group_by):</p>"
        body += table(["source", "group_by", "groups", "files", "docs read", "kept", "without a group",
                       "input problems"],
                      [[g.get("name"), g.get("group_by"), len(g.get("groups") or []), g.get("files_read"),
                        g.get("documents_read"), g.get("kept_documents"), g.get("records_without_group"),
                        (g.get("problems") or {}).get("total", 0)] for g in grouped.values()])
    totals = card.get("totals", {})
    dedup = card.get("dedup", {})
    facts = [(k.replace("_", " "), v) for k, v in totals.items() if isinstance(v, (int, float))][:7]
    facts += [(f"dedup {k}".replace("_", " "), v) for k, v in dedup.items()
              if isinstance(v, (int, float, str)) and k != "method"][:2]
    if facts:
        body += "<p class='note'>Totals:</p>" + table([k for k, _ in facts], [[v for _, v in facts]])
    return section("data", "Data card", body)


def bits_per_byte_bars(rows: list[list[Any]], title: str = "Held-out bits per byte (lower is better)") -> str:
    """Grouped bars of held-out bits per byte, ``[name, model, gzip, xz]`` per row
    (a missing figure drawn as 0), as an embedded PNG: the report's per-source
    chart and the compare page's per-run chart."""
    plt = _plt()
    names = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.2, 1.4 * len(names) + 2), 3.4))
    width = 0.26
    for i, (label, key) in enumerate((("model", "model"), ("gzip -9", "gzip"), ("xz -9e", "xz"))):
        vals = [r[i + 1] if r[i + 1] is not None else 0 for r in rows]
        bars = ax.bar([j + (i - 1) * width for j in range(len(names))], vals, width, label=label,
                      color=COLORS[key])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set(title=title, ylabel="bits per byte")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.22)
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    return figure_png(fig)


def heldout_section(run: RunDir) -> str:
    ev = read_eval(run)
    if not ev.get("steps"):
        return section("heldout", "Held-out evaluation",
                       empty("no held-out evaluation yet: run `fmforge eval RUN`"))
    step = ev["step"]
    entry = ev["steps"][str(step)]
    rows = []
    for name, r in [("overall", entry["overall"]), *entry["per_source"].items()]:
        rows.append([name, r.get("bits_per_byte"), r.get("gzip_bits_per_byte"), r.get("xz_bits_per_byte"),
                     r.get("loss"), r.get("perplexity"), r.get("tokens"), r.get("bytes"),
                     r["bytes"] / r["tokens"] if r.get("tokens") else None])
    stride, window = entry.get("stride"), entry.get("window")
    how = ("non-overlapping windows of {w} tokens" if stride == window else
           "a sliding window of {w} tokens moved {s} at a time").format(w=window, s=stride)
    body = (f"<p class='sub'>Checkpoint of step {step}, {how}. Bits per byte = total nats / ln 2 / UTF-8 "
            "bytes of the held-out text; gzip -9 and xz -9e compress exactly those bytes.</p>")
    body += table(["source", "bits/byte", "gzip -9", "xz -9e", "loss", "perplexity", "tokens", "bytes",
                   "bytes/token"], rows)
    plt = _plt()
    imgs = []
    imgs.append(bits_per_byte_bars([[r[0], r[1], r[2], r[3]] for r in rows]))
    steps = sorted(int(s) for s in ev["steps"])
    if len(steps) > 1:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        xs = steps
        ax.plot(xs, [ev["steps"][str(s)]["overall"]["bits_per_byte"] for s in xs], "o-", label="overall",
                color="black", lw=2)
        for name in entry["per_source"]:
            ys = [(ev["steps"][str(s)]["per_source"].get(name) or {}).get("bits_per_byte") for s in xs]
            ax.plot(xs, ys, "o--", label=name, ms=3)
        ax.set(title="Held-out bits per byte by checkpoint", xlabel="step", ylabel="bits per byte")
        ax.legend(fontsize=8)
        imgs.append(figure_png(fig))
    body += f'<div class="grid">{"".join(imgs)}</div>'
    if ev.get("against"):
        current, stale = current_against(run, ev)
        if current:
            body += against_block({**ev, "against": current}, entry)
        body += "".join(f"<p class='note'>{esc(n)}</p>" for n in stale)
    return section("heldout", "Held-out evaluation", body)


def against_block(ev: dict, entry: dict) -> str:
    """Other models (``fmforge eval RUN --against``) on the same held-out bytes,
    beside the run's own model and the compressors, overall and per source."""
    sources = sorted(entry["per_source"])
    rows = [[f"this run (step {ev['step']})", None, entry.get("window"), entry["overall"].get("bits_per_byte"),
             *(entry["per_source"][s].get("bits_per_byte") for s in sources)]]
    for name, r in sorted(ev["against"].items()):
        rows.append([name + (f" (first {r['max_bytes']:,} bytes)" if r.get("max_bytes") else ""), r.get("params"),
                     r.get("context"), r.get("bits_per_byte"),
                     *((r["per_source"].get(s) or {}).get("bits_per_byte") for s in sources)])
    for label, key in (("gzip -9", "gzip_bits_per_byte"), ("xz -9e", "xz_bits_per_byte")):
        rows.append([label, None, None, entry["overall"].get(key), *(entry["per_source"][s].get(key) for s in sources)])
    body = ("<h3>Other models on the same bytes</h3><p class='sub'>Each model with its own tokenizer: "
            "documents joined with its end-of-text token, windows of its context; nats / ln 2 / the "
            "same UTF-8 bytes, so every row compares (lower is better).</p>")
    body += table(["model", "parameters", "window", "overall", *sources], rows)
    plt = _plt()
    cats = ["overall", *sources]
    fig, ax = plt.subplots(figsize=(max(5.2, 1.3 * len(cats) * max(1, len(rows) / 3) + 2), 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        vals = [v if v is not None else 0 for v in row[3:]]
        color = {"gzip -9": COLORS["gzip"], "xz -9e": COLORS["xz"]}.get(row[0])  # as in the chart above
        bars = ax.bar([j + (i - (len(rows) - 1) / 2) * width for j in range(len(cats))], vals, width,
                      label=row[0][:28], color=color)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(cats)), cats)
    ax.set(title="Held-out bits per byte by model (lower is better)", ylabel="bits per byte")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    ax.legend(fontsize=7, ncol=min(3, len(rows)), loc="upper center")
    return body + f'<div class="grid">{figure_png(fig)}</div>'


def ladder_section(run: RunDir) -> str:
    """The run's ladder (``fmforge ladder``): its rungs, the fitted law and what it
    predicts for the config's model, with the plot the ladder drew."""
    path = run.root / "ladder" / "ladder.json"
    if not path.is_file():
        return ""
    import json

    ladder = json.loads(path.read_text(encoding="utf-8"))
    law = ladder["law"]
    rows = [[r["name"], r["non_embedding_params"], r["tokens"], r["bits_per_byte"], r.get("fit")]
            for r in ladder.get("rungs", [])]
    t = ladder.get("target", {})
    if "bits_per_byte" in t:
        lo_hi = t.get("interval_90")
        rows.append([f"the config's model ({t.get('extrapolation', 0):g}x the largest rung), predicted",
                     t["non_embedding_params"], t.get("tokens"), None,
                     f"{t['bits_per_byte']:.4f}" + (f" ({lo_hi[0]:.4f}-{lo_hi[1]:.4f})" if lo_hi else "")])
    form = ("L(N) = {E:.4f} + {A:.4g} / N^{alpha:.4f}".format(**law) if law.get("tokens_per_param") is not None
            else "L(N, D) = {E:.4f} + {A:.4g} / N^{alpha:.4f} + {B:.4g} / D^{beta:.4f}".format(**law))
    body = (f"<p class='sub'>{esc(form)}, N non-embedding parameters, L held-out bits per byte"
            + (f", rungs trained on {law['tokens_per_param']:.3g} tokens per parameter"
               if law.get("tokens_per_param") is not None else "") + ".</p>")
    body += table(["rung", "non-embedding parameters", "tokens", "measured bits/byte", "fit"], rows)
    bt = ladder.get("backtest")
    if bt:
        body += (f"<p class='sub'>Backtest: the law fitted without its largest rung ({esc(str(bt.get('rung')))}) "
                 f"predicted it at {bt['predicted']:.4f}, measured {bt['measured']:.4f} ({bt['error']:+.1%}); "
                 "every interval is at least that wide.</p>")
    for w in ladder.get("warnings", []) + t.get("warnings", []):
        body += f"<p class='note'>{esc(w)}</p>"
    png = run.root / "ladder" / "ladder.png"
    if png.is_file():
        body += (f'<div class="grid"><img alt="ladder" src="data:image/png;base64,'
                 f'{base64.b64encode(png.read_bytes()).decode("ascii")}"></div>')
    return section("ladder", "Scaling ladder", body)


def harness_section(run: RunDir) -> str:
    harness = read_eval(run).get("harness") or {}
    if not harness:
        return section("harness", "Benchmarks (lm-evaluation-harness)",
                       empty("no lm-eval results: run `fmforge eval harness RUN --tasks hellaswag,arc_easy`"))
    rows = []
    for step, entry in sorted(harness.items(), key=lambda kv: int(kv[0])):
        shots = {r.get("num_fewshot") for r in entry.get("runs", [])}
        for task, metrics in sorted(entry["tasks"].items()):
            for key, value in metrics.items():
                if key == "alias" or "_stderr" in key or not isinstance(value, (int, float)):
                    continue
                metric, _, filt = key.partition(",")
                rows.append([task, metric, filt, value, int(step), ", ".join(str(s) for s in shots)])
    body = table(["task", "metric", "filter", "value", "step", "few-shot"], rows)
    return section("harness", "Benchmarks (lm-evaluation-harness)", body)


def decision_section(decision: dict | None) -> str:
    """Train your own, customize or use as is: each option's held-out bits per byte,
    overall and per source (measured, or predicted by the ladder), beside its cost
    (``fmforge plan --decide``)."""
    if not decision:
        return ""
    sources = sorted({s for r in decision["rows"] for s in (r.get("per_source") or {})})
    intervals = any(r.get("interval_90") for r in decision["rows"])
    rows = []
    for r in decision["rows"]:
        lo_hi = r.get("interval_90")
        per = r.get("per_source") or {}
        rows.append([r["option"], r["model"], r.get("params"), r.get("bits_per_byte"),
                     *(per.get(s) for s in sources),
                     *([f"{lo_hi[0]:.4f}-{lo_hi[1]:.4f}" if lo_hi else None] if intervals else []),
                     None if r.get("one_time_usd") is None else f"${r['one_time_usd']:,.2f}", r["basis"]])
    refs, ref_sources = decision.get("references") or {}, decision.get("reference_per_source") or {}
    for name, key in (("gzip -9", "gzip"), ("xz -9e", "xz")):
        if refs.get(key) is not None:
            rows.append(["reference", name, None, refs[key], *((ref_sources.get(s) or {}).get(key) for s in sources),
                         *([None] if intervals else []), None, "measured"])
    body = ("<p class='sub'>Each option's held-out bits per byte on this run's own held-out bytes "
            "(lower is better), overall and per source, measured or predicted by the run's ladder, beside "
            "its one-time cost. <code>fmforge plan CONFIG --decide</code> prints it, with serving costs "
            "given <code>--monthly-tokens</code>.</p>")
    body += table(["option", "model", "parameters", "bits/byte", *sources, *(["90% interval"] if intervals else []),
                   "one-time cost", "basis"], rows)
    body += "".join(f"<p class='note'>{esc(n)}</p>" for n in decision.get("notes", []))
    return section("decision", "Decision: train, customize or use as is", body)


def plan_section(plan_actual: dict | None, why_missing: str | None) -> str:
    if not plan_actual:
        return section("plan", "Plan against actual",
                       empty(why_missing or "no plan: the run was not started by `fmforge run`"))
    rows = [[r["metric"], r["unit"], r["predicted"], r["actual"],
             None if r.get("error_pct") is None else f"{r['error_pct']:+.1f}%"] for r in plan_actual["rows"]]
    body = (f"<p class='sub'>Planned for {esc(plan_actual.get('num_gpus'))} × {esc(plan_actual.get('gpu'))}; "
            "error = (predicted − actual) / actual (`fmforge plan --actual RUN`).</p>")
    body += table(["metric", "unit", "predicted", "actual", "error"], rows)
    body += "".join(f"<p class='note'>{esc(n)}</p>" for n in plan_actual.get("notes", []))
    return section("plan", "Plan against actual", body)


def sample_completions(run: RunDir, prompts: list[str], max_new_tokens: int,
                       device: str = "auto") -> tuple[int, list[tuple[str, str, str]]]:
    """Greedy completions of ``prompts`` at the latest checkpoint, decoded together."""
    from fmforge.inference.engine import Engine, GenerationRequest
    from fmforge.inference.loading import load_trained

    trained = load_trained(run, device=device)
    requests = [GenerationRequest(prompt=p, max_new_tokens=max_new_tokens, temperature=0.0, truncate="left")
                for p in prompts]
    results = Engine(trained, max_batch=max(1, len(prompts))).generate(requests)
    ends = {"stop": "stopped at end-of-text", "length": "stopped at the length limit"}
    return trained.step, [(p, r.text, f"{r.completion_tokens} tokens, {ends.get(r.finish_reason, r.finish_reason)}")
                          for p, r in zip(prompts, results)]


def samples_section(samples: tuple[int, list[tuple[str, str, str]]] | None, why_missing: str | None) -> str:
    if not samples or not samples[1]:
        return section("samples", "Sample completions",
                       empty(why_missing or "no prompts: set eval.report_prompts"))
    step, pairs = samples
    body = f"<p class='sub'>Greedy completions at the checkpoint of step {step} (prompt in blue).</p>"
    body += "".join(f"<pre><b>{esc(p)}</b>{esc(c)}</pre><p class='note'>{esc(how)}</p>" for p, c, how in pairs)
    return section("samples", "Sample completions", body)


# --------------------------------------------------------------------------- the report

def _header(run: RunDir, cfg: dict | None) -> str:
    facts = []
    if cfg:
        m = cfg.get("model", {})
        facts.append(f"model d_model {m.get('d_model')}, {m.get('n_layers')} layers, context {m.get('seq_len')}")
        facts.append(f"vocabulary {cfg.get('tokenizer', {}).get('vocab_size')}")
    summary = (run.stage_record("train") or {}).get("summary", {})
    if summary.get("params"):
        facts.append(f"{summary['params']:,} parameters")
    if summary.get("tokens"):
        facts.append(f"{summary['tokens']:,} tokens trained")
    name = (cfg or {}).get("name") or run.root.name
    return (f"<h1>Run report: {esc(name)}</h1><p class='sub'>{esc(run.root.resolve())} · "
            f"{esc(' · '.join(facts))} · written {time.strftime('%Y-%m-%d %H:%M')}</p>")


def render_report(run: RunDir, plan_actual: dict | None = None, plan_missing: str | None = None,
                  samples: tuple[int, list[tuple[str, str, str]]] | None = None,
                  samples_missing: str | None = None, decision: dict | None = None) -> str:
    import yaml

    cfg = yaml.safe_load(run.config.read_text(encoding="utf-8")) if run.config.is_file() else None
    parts = [training_section(run), data_section(run), heldout_section(run), ladder_section(run), harness_section(run),
             decision_section(decision), plan_section(plan_actual, plan_missing),
             samples_section(samples, samples_missing)]
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>fmforge report: {esc(run.root.name)}</title><style>{CSS}</style></head><body>"
            + _header(run, cfg) + "".join(parts) + "</body></html>\n")


def write_report(run: RunDir, plan_actual: dict | None = None, plan_missing: str | None = None,
                 out: Path | None = None, device: str = "auto", decision: dict | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for ``run``; returns its path. Samples
    come from ``eval.report_prompts`` of the run's config."""
    import yaml

    from fmforge.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load(run.config.read_text(encoding="utf-8")))
    samples, samples_missing = None, None
    if cfg.eval.report_prompts and cfg.eval.report_max_new_tokens:
        try:
            samples = sample_completions(run, cfg.eval.report_prompts, cfg.eval.report_max_new_tokens, device)
        except (FileNotFoundError, ValueError) as exc:
            samples_missing = f"no completions: {exc}"
    out = Path(out) if out is not None else run.root / "report.html"
    atomic_write_text(out, render_report(run, plan_actual, plan_missing, samples, samples_missing, decision))
    return out
