"""``fmforge compare RUN_A RUN_B ...``: runs on shared axes, by tokens seen, with a
table of final figures, in one HTML file. Loss per token depends on the
tokenizer; validation bits per byte does not, so two tokenizers (or two sizes)
are compared on the bits-per-byte plot and the held-out columns."""

from __future__ import annotations

import time
from pathlib import Path

from fmforge.errors import UserError
from fmforge.eval.report import CSS, _plt, _series, bits_per_byte_bars, empty, esc, figure_png, section, table
from fmforge.eval.results import current_against, read_eval
from fmforge.rundir import RunDir, atomic_write_text, read_metrics


class CompareError(UserError, ValueError):
    """Runs that cannot be compared as given (fewer than two)."""


def _final_row(run: RunDir) -> list:
    import yaml

    cfg = yaml.safe_load(run.config.read_text(encoding="utf-8")) if run.config.is_file() else {}
    metrics = read_metrics(run.metrics)
    summary = (run.stage_record("train") or {}).get("summary", {})
    ev = read_eval(run)
    val = [m for m in metrics if "val_loss" in m]
    last = metrics[-1] if metrics else {}
    harness = ev.get("harness") or {}
    scores = []
    if harness:
        latest = harness[max(harness, key=int)]["tasks"]
        for task, res in sorted(latest.items()):
            for key in ("acc_norm,none", "acc,none", "word_perplexity,none", "exact_match,none"):
                if key in res:
                    scores.append(f"{task} {key.split(',')[0]} {res[key]:.3g}")
                    break
    return [run.root.name, summary.get("params"), (cfg.get("tokenizer") or {}).get("vocab_size"),
            last.get("tokens"), last.get("step"), last.get("loss"), val[-1]["val_loss"] if val else None,
            ev.get("bits_per_byte"), ev.get("gzip_bits_per_byte"), ev.get("xz_bits_per_byte"),
            ev.get("perplexity"), "; ".join(scores) or None]


def render_compare(runs: list[RunDir]) -> str:
    plt = _plt()
    imgs = []
    for key, title, ylabel in (("loss", "Training loss", "nats per token"),
                               ("val_loss", "Validation loss", "nats per token"),
                               ("val_bits_per_byte", "Validation bits per byte (tokenizer-independent)",
                                "bits per byte")):
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        drawn = False
        for run in runs:
            xs, ys = _series(read_metrics(run.metrics), key)
            if xs:
                ax.plot(xs, ys, "-" if key == "loss" else "o-", ms=3, lw=1.2, label=run.root.name)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set(title=title, xlabel="tokens seen", ylabel=ylabel)
        ax.legend(fontsize=8)
        imgs.append(figure_png(fig))
    rows = [_final_row(r) for r in runs]
    names = [r[0] for r in rows]
    imgs.append(bits_per_byte_bars([[r[0], r[7], r[8], r[9]] for r in rows], "Held-out bits per byte"))
    body = table(["run", "parameters", "vocabulary", "tokens seen", "steps", "final train loss",
                  "final val loss", "held-out bits/byte", "gzip -9", "xz -9e", "perplexity", "lm-eval"], rows)
    others, stale = [], []
    for run in runs:
        ev = read_eval(run)
        current, notes = current_against(run, ev)  # not those scored on bytes the run no longer holds
        others += [[run.root.name, name, r.get("params"), r.get("bits_per_byte"), ev.get("bits_per_byte"),
                    r.get("max_bytes")] for name, r in current.items()]
        stale += [f"{run.root.name}: {n}" for n in notes]
    if others or stale:
        body += "<h3>Other models on each run's held-out bytes (<code>fmforge eval RUN --against</code>)</h3>"
    if others:
        body += table(["run", "model", "parameters", "its bits/byte", "the run's bits/byte",
                       "scored on the first (bytes)"], others)
    body += "".join(f"<p class='note'>{esc(n)}</p>" for n in stale)
    plots = f'<div class="grid">{"".join(imgs)}</div>' if imgs else empty("no metrics.jsonl in these runs")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fmforge compare</title>"
            f"<style>{CSS}</style></head><body><h1>Compare: {esc(', '.join(names))}</h1>"
            f"<p class='sub'>written {time.strftime('%Y-%m-%d %H:%M')}</p>"
            + section("curves", "On shared axes, by tokens seen", plots)
            + section("final", "Final figures", body) + "</body></html>\n")


def compare_runs(runs: list[RunDir], out: Path) -> Path:
    if len(runs) < 2:
        raise CompareError("compare needs at least two runs: fmforge compare RUN_A RUN_B [...]")
    out = Path(out)
    atomic_write_text(out, render_compare(runs))
    return out
