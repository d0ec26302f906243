"""The run report: one self-contained ``report.html`` a person reads.

Sections (each an ``<section id=...>``): training curves (loss and validation
loss against tokens seen, learning rate, tokens/s, MFU, gradient norm), the data
card (per source: weight, documents and bytes through each step, duplicates,
tokens, bytes per token), held-out results beside the gzip and xz baselines per
source, lm-eval results, plan against actual, and greedy completions of fixed
prompts at the latest checkpoint; with a ladder or a datamix experiment under the
run (``ladder/``, ``datamix/``), its section too, read from its JSON as an
artifact. Plots are matplotlib PNGs embedded as base64, so the file can be mailed
or attached as it is.

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
from typing import Any, Iterable, Sequence

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
h3{font-size:16px;margin:20px 0 6px}
.chart img{max-width:100%}
.callout{background:#eef4fb;border-left:4px solid #0b5cad;padding:8px 12px;margin:10px 0;font-size:14.5px}
table.mix td,table.mix th{padding:5px 9px} table.mix th.l,table.mix td.l{text-align:left}
.better{color:#1b6e20;font-weight:600} .worse{color:#b71c1c;font-weight:600} .noise{color:#777}
tr.best td{background:#edf7ee} td.own{background:#f3f3f3;color:#888}
th.group{text-align:center;border-left:2px solid #fff}
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


# --------------------------------------------------------------------------- which data (fmforge datamix)

# A verdict's CSS class and chart colour: called better (or a source that helps) in
# green, worse (hurts) in red, within the seed noise in grey.
VERDICT_STYLE = {"better": ("better", "#2e7d32"), "helps": ("better", "#2e7d32"),
                 "worse": ("worse", "#c62828"), "hurts": ("worse", "#c62828"),
                 "within noise": ("noise", "#858585"), "base": ("", "#1f77b4")}


def _cell(text: Any, cls: str = "", title: str = "") -> str:
    attrs = (f' class="{cls}"' if cls.strip() else "") + (f' title="{esc(title)}"' if title else "")
    return f"<td{attrs}>{esc(text)}</td>"


def _head(headers: list[str], titles: dict[str, str], left: int, group: str = "",
          grouped: Sequence[str] = ()) -> str:
    """A table head: ``headers`` (the first ``left`` of them left-aligned, ``titles``
    their tooltips), then ``grouped`` columns under one spanning label ``group``."""
    cells = [f'<th{" class=l" if i < left else ""} title="{esc(titles.get(h, ""))}">{esc(h)}</th>'
             for i, h in enumerate(headers)]
    if not grouped:
        return f"<thead><tr>{''.join(cells)}</tr></thead>"
    top = "".join(c.replace("<th", "<th rowspan=2", 1) for c in cells)
    return (f"<thead><tr>{top}<th class=group colspan={len(grouped)}>{esc(group)}</th></tr>"
            f"<tr>{''.join(f'<th>{esc(g)}</th>' for g in grouped)}</tr></thead>")


def _signed(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:+.{digits}f}".replace("-", "−")


def _bpb(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _times(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}×"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _style(verdict: Any) -> tuple[str, str]:
    return VERDICT_STYLE.get(verdict, ("noise", "#858585"))


def _datamix_target(t: dict) -> str:
    kind, name = t.get("kind"), t.get("name")
    what = {"heldout": "this run's held-out split (every source)",
            "source": f"the held-out part of source “{name}”",
            "files": f"your evaluation files “{name}”"}.get(kind, str(name))
    size = [f"{t[k]:,} {k}" for k in ("bytes", "tokens", "documents") if isinstance(t.get(k), int)]
    return what + (f" ({', '.join(size)})" if size else "")


def _variant_order(variants: list[dict]) -> list[tuple[str, dict]]:
    """(rank, variant): base first; the variants called better ranked by their
    difference; those within the noise unranked in the experiment's order (their order
    is the noise's); those called worse last, least harmful first, unranked."""
    base = [v for v in variants if v.get("verdict") == "base"]
    better = sorted((v for v in variants if v.get("verdict") == "better"), key=lambda v: v.get("delta") or 0.0)
    noise = [v for v in variants if v.get("verdict") not in ("base", "better", "worse")]
    worse = sorted((v for v in variants if v.get("verdict") == "worse"), key=lambda v: v.get("delta") or 0.0)
    return ([("", v) for v in base] + [(str(i + 1), v) for i, v in enumerate(better)]
            + [("", v) for v in noise + worse])


def _variant_change(v: dict, base: dict | None = None) -> str:
    """What the variant changes, in words: a source left out, or the sources whose
    weight differs from the base's (by name, not by index), else its overrides."""
    if v.get("kind") == "base":
        return "the run's own mixture"
    if v.get("removed_source"):
        return f"without source {v['removed_source']}"
    mine, theirs = v.get("sources") or {}, (base or {}).get("sources") or {}
    weights = [f"{s} weight {fmt(theirs[s].get('weight'))} → {fmt(d.get('weight'))}" for s, d in mine.items()
               if s in theirs and d.get("weight") != theirs[s].get("weight")
               and isinstance(d.get("weight"), (int, float))]
    if weights and all(".weight=" in o for o in v.get("overrides") or []):
        return ", ".join(weights)
    return ", ".join(v.get("overrides") or []) or "–"


def _effect_bars(names: list[str], values: list[float], colours: list[str], labels: list[str],
                 dots: list[list[float]], threshold: float | None, title: str, xlabel: str) -> str:
    """Horizontal bars, one per row top to bottom as listed, over the band of the seed
    noise (±threshold), each seed's own difference a dot, the value and the verdict
    written past the bar's end."""
    plt = _plt()
    n = len(names)
    fig, ax = plt.subplots(figsize=(7.4, 0.5 * n + 1.9), layout="constrained")
    ys = list(range(n))[::-1]
    ax.axvline(0, color="black", lw=0.8, zorder=1)
    if threshold:
        ax.axvspan(-threshold, threshold, color="#bdbdbd", alpha=0.5, lw=0, zorder=0,
                   label=f"within the seed noise (±{threshold:.4f})")
    ax.barh(ys, values, height=0.55, color=colours, zorder=2)
    labelled = False
    for y, seeds in zip(ys, dots):
        if seeds:
            ax.plot(seeds, [y] * len(seeds), "o", ms=3.5, color="black", alpha=0.75, zorder=3,
                    label=None if labelled else "each seed's own difference")
            labelled = True
    span = max([abs(v) for v in values] + [abs(d) for s in dots for d in s] + [threshold or 0.0, 1e-6])
    ax.set_xlim(-1.6 * span, 1.6 * span)
    for y, v, seeds, text in zip(ys, values, dots, labels):
        end = max([v, *seeds]) if v >= 0 else min([v, *seeds])
        ax.text(end + (0.04 if v >= 0 else -0.04) * span, y, text, va="center",
                ha="left" if v >= 0 else "right", fontsize=8.5, zorder=4)
    ax.set_yticks(ys, names)
    ax.grid(axis="y", visible=False)
    ax.set(title=title, xlabel=xlabel)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return figure_png(fig)


def _variants_block(mix: dict) -> str:
    variants = mix.get("variants") or []
    threshold = (mix.get("noise") or {}).get("threshold")
    seeds = sorted({r.get("seed") for v in variants for r in v.get("runs") or [] if r.get("seed") is not None})
    base = next((v for v in variants if v.get("kind") == "base"), variants[0] if variants else {})
    sources = list(base.get("per_source") or {})
    best = mix.get("best")
    headers = ["rank", "variant", "what changes", "verdict", "bits/byte", "vs base", "× seed sd",
               *(f"seed {s}" for s in seeds), "spread"]
    titles = {"rank": "only a variant called better than the base beyond the seed noise is ranked",
              "bits/byte": "on the target, the mean over seeds; lower is better",
              "vs base": "bits/byte minus the base mixture's; negative is better",
              "× seed sd": "|difference| / the seed-to-seed standard deviation of one proxy",
              "spread": "largest minus smallest over the seeds"}
    rows = []
    for rank, v in _variant_order(variants):
        cls = _style(v.get("verdict"))[0]
        by_seed = {r.get("seed"): r.get("bits_per_byte") for r in v.get("runs") or []}
        per = v.get("per_source") or {}
        is_best = best is not None and v.get("name") == best
        cells = [_cell(rank or "–", "l"), _cell(v.get("name", "?") + ("  ★ best" if is_best else ""), "l"),
                 _cell(_variant_change(v, base), "l"), _cell(v.get("verdict"), f"l {cls}"),
                 _cell(_bpb(v.get("bits_per_byte"))), _cell(_signed(v.get("delta")), cls),
                 _cell(_times(v.get("delta_over_noise"))),
                 *(_cell(_bpb(by_seed.get(s))) for s in seeds), _cell(_bpb(v.get("spread"))),
                 *(_cell(_bpb(per.get(s))) for s in sources)]
        rows.append(f"<tr{' class=best' if is_best else ''}>{''.join(cells)}</tr>")
    body = ("<h3>The variants</h3>"
            '<div class="scroll"><table class="mix">'
            + _head(headers, titles, 4, "bits/byte on each source's held-out part", sources)
            + f"<tbody>{''.join(rows)}</tbody></table></div>"
            "<p class='note'>Bits per byte on the target, lower is better. Only a variant called better than "
            "the base beyond the seed noise is ranked; those within the noise are listed in the experiment's "
            "order, because their order is the noise's. The held-out columns are each source's held-out part "
            "of this run, for reference.</p>")
    others = [v for _, v in _variant_order([v for v in variants if v.get("kind") != "base"])
              if isinstance(v.get("delta"), (int, float))]
    if others:
        base_bpb = base.get("bits_per_byte")
        dots = [[r["bits_per_byte"] - base_bpb for r in v.get("runs") or []
                 if isinstance(base_bpb, (int, float)) and isinstance(r.get("bits_per_byte"), (int, float))]
                for v in others]
        body += '<div class="chart">' + _effect_bars(
            [v.get("name", "?") for v in others], [v["delta"] for v in others],
            [_style(v.get("verdict"))[1] for v in others],
            [f"{_signed(v['delta'])} {v.get('verdict')}" for v in others], dots, threshold,
            "Each variant against the base mixture", "target bits/byte minus the base's (< 0: better)") + "</div>"
    return body


def _sources_block(mix: dict) -> str:
    worth = mix.get("sources_worth") or []
    if not worth:
        return ""
    threshold = (mix.get("noise") or {}).get("threshold")
    variants = mix.get("variants") or []
    without = {v.get("removed_source"): v for v in variants if v.get("removed_source")}
    base = next((v for v in variants if v.get("kind") == "base"), {})
    weights = {s: (d or {}).get("weight") for s, d in (base.get("sources") or {}).items()}
    # helps (most first), within the noise (unranked, as listed), hurts (most last)
    helps = sorted((w for w in worth if w.get("verdict") == "helps"), key=lambda w: -(w.get("effect") or 0.0))
    noise = [w for w in worth if w.get("verdict") not in ("helps", "hurts")]
    hurts = sorted((w for w in worth if w.get("verdict") == "hurts"), key=lambda w: -(w.get("effect") or 0.0))
    ordered = helps + noise + hurts
    others = list(dict.fromkeys(s for w in worth for s in (w.get("per_source_effect") or {})))
    total_tokens = sum(w.get("tokens") or 0 for w in worth)
    headers = ["source", "verdict", "worth to the target", "× seed sd", "weight", "bytes", "tokens",
               "share of tokens"]
    titles = {"worth to the target": "the target's bits/byte without the source minus with it: > 0, it helps",
              "× seed sd": "|worth| / the seed-to-seed standard deviation of one proxy",
              "tokens": "the tokens the source puts in the base mixture's training data"}
    rows = []
    for w in ordered:
        cls = _style(w.get("verdict"))[0]
        per = w.get("per_source_effect") or {}
        cells = [_cell(w.get("source"), "l"), _cell(w.get("verdict"), f"l {cls}"),
                 _cell(_signed(w.get("effect")), cls), _cell(_times(w.get("effect_over_noise"))),
                 _cell(fmt(weights.get(w.get("source")))), _cell(fmt(w.get("bytes"))), _cell(fmt(w.get("tokens"))),
                 _cell(f"{w['tokens'] / total_tokens:.1%}" if total_tokens and w.get("tokens") else "–"),
                 *(_cell(_signed(per.get(s)), "own" if s == w.get("source") else "",
                         "its own held-out part" if s == w.get("source") else "") for s in others)]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    body = ("<h3>What each source is worth</h3><p class='sub'>Each row is the mixture without that source, "
            "trained and scored like the other variants. <b>Worth</b> = the target's bits per byte without the "
            "source minus with it: positive, the source helps the target (leaving it out costs that much); "
            "negative, the target is better off without it. The last columns are the same difference on each "
            "source's held-out part; they are not judged against the noise, and the shaded one is the source's "
            "own.</p>"
            '<div class="scroll"><table class="mix">'
            + _head(headers, titles, 2, "worth to each source's held-out part", others)
            + f"<tbody>{''.join(rows)}</tbody></table></div>")
    per_sd = (mix.get("noise") or {}).get("per_source_sd") or {}
    if per_sd:
        body += ("<p class='note'>The seed noise of each source's held-out part (standard deviation of one "
                 "proxy, bits/byte): " + esc(", ".join(f"{s} {_bpb(v)}" for s, v in per_sd.items()
                                                      if isinstance(v, (int, float)))) + ".</p>")
    base_bpb = base.get("bits_per_byte")
    dots = [[r["bits_per_byte"] - base_bpb for r in (without.get(w.get("source")) or {}).get("runs") or []
             if isinstance(base_bpb, (int, float)) and isinstance(r.get("bits_per_byte"), (int, float))]
            for w in ordered]
    body += '<div class="chart">' + _effect_bars(
        [w.get("source", "?") for w in ordered], [w.get("effect") or 0.0 for w in ordered],
        [_style(w.get("verdict"))[1] for w in ordered],
        [f"{_signed(w.get('effect'))} {w.get('verdict')}" for w in ordered], dots, threshold,
        "What each source is worth to the target", "target bits/byte without the source − with it (> 0: it helps)"
    ) + "</div>"
    return body


def datamix_section(run: RunDir) -> str:
    """Which data (``fmforge datamix``): each variant of the run's data trained as a
    proxy model with several seeds and scored on one target against the seed noise;
    with ``--ablate-sources``, what each source is worth. Read from
    ``datamix/datamix.json`` as an artifact (the experiment lives in the ladder package,
    above this one)."""
    import json

    path = run.root / "datamix" / "datamix.json"
    if not path.is_file():
        return ""
    try:
        mix = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return section("datamix", "Which data", empty(
            f"{path} does not read as JSON ({exc}): run `fmforge datamix CONFIG` again"))
    if not isinstance(mix, dict) or mix.get("version") != 1:
        return section("datamix", "Which data", empty(
            f"{path} is not a datamix.json of version 1, which this report reads: run `fmforge datamix CONFIG` "
            "again"))
    proxy, noise, price = mix.get("proxy") or {}, mix.get("noise") or {}, mix.get("price") or {}
    seeds = proxy.get("seeds") or []
    model = proxy.get("model") or {}
    shape = ((f"{proxy['name']}: " if proxy.get("name") else "")
             + (f"d_model {model['d_model']} × {model['n_layers']} layers, " if model.get("d_model") else ""))
    body = (f"<p class='sub'>Each variant of this run's data trained the same proxy model ({esc(shape)}"
            f"{fmt(proxy.get('non_embedding_params'))} non-embedding parameters) for {fmt(proxy.get('steps'))} "
            f"steps, {fmt(proxy.get('tokens'))} tokens, with {len(seeds)} seed{'' if len(seeds) == 1 else 's'} "
            f"({esc(', '.join(map(str, seeds)))}) and this run's tokenizer, and was scored on "
            f"{esc(_datamix_target(mix.get('target') or {}))} in bits per byte.</p>")
    if isinstance(noise.get("threshold"), (int, float)):
        method = str(noise.get("method") or "").rstrip(".")
        sd = noise.get("seed_sd")
        times = f" ({noise['threshold'] / sd:.2f}× the seed sd)" if isinstance(sd, (int, float)) and sd > 0 else ""
        body += (f"<p class='sub'>Seed noise: the same data trained with another seed moves the target by "
                 f"{_bpb(sd) if isinstance(sd, (int, float)) else '–'} bits/byte (the standard deviation of one "
                 "proxy); "
                 f"a difference is called only beyond <b>{noise['threshold']:.4f}</b> bits/byte{times}. "
                 f"{esc(method[:1].upper() + method[1:])}.</p>")
    variants = mix.get("variants") or []
    best = next((v for v in variants if v.get("name") == mix.get("best")), None) if mix.get("best") else None
    if best is not None:
        base = next((v for v in variants if v.get("kind") == "base"), None)
        verdict = (f"Best: <b>{esc(best.get('name'))}</b> ({esc(_variant_change(best, base))}), "
                   f"{esc(_signed(best.get('delta')))} bits/byte against the base mixture, "
                   f"{esc(_times(best.get('delta_over_noise')))} the seed noise. "
                   "<code>fmforge datamix CONFIG --write-best OUT.yaml</code> writes its config.")
    else:
        verdict = ("No variant beats the base mixture beyond the seed noise: keep it, or resolve smaller "
                   "differences with more seeds or larger proxies.")
    body += f"<p class='callout'>{verdict}</p>" + _variants_block(mix) + _sources_block(mix)
    if price:
        spent, planned, dollars = price.get("seconds_measured"), price.get("seconds_estimated"), price.get("dollars")
        body += (f"<p class='note'>The experiment: {fmt(price.get('proxies'))} proxy trainings"
                 + (f", {price['flops']:.3g} FLOPs" if isinstance(price.get("flops"), (int, float)) else "")
                 + (f", planned at {_duration(planned)}" if isinstance(planned, (int, float)) else "")
                 + (f" on {esc(price['device'])}" if price.get("device") else "")
                 + (f", trained in {_duration(spent)}" if isinstance(spent, (int, float)) and spent > 0 else "")
                 + (", every proxy cached from an earlier run" if price.get("to_train") == 0 else "")
                 + (f", ${dollars:,.2f}" if isinstance(dollars, (int, float)) and dollars >= 0.005 else "") + ".</p>")
    body += "".join(f"<p class='note'>⚠ {esc(w)}</p>" for w in mix.get("warnings") or [])
    return section("datamix", "Which data", body)


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
    parts = [training_section(run), data_section(run), heldout_section(run), ladder_section(run),
             datamix_section(run), harness_section(run), decision_section(decision),
             plan_section(plan_actual, plan_missing), samples_section(samples, samples_missing)]
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
