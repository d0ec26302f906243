"""``ladder/ladder.png``: the rungs' measured bits per byte against size, the
fitted law through them and on to the config's model, with the bootstrap
interval as a band; the run report shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmforge.plan.scaling import ScalingLaw


def plot_ladder(result: dict[str, Any], out: Path) -> Path | None:
    """Draw the ladder; None (and nothing written) without matplotlib."""
    try:
        from fmforge.eval.report import _plt
        plt = _plt()
    except ImportError:
        return None
    import numpy as np

    law = ScalingLaw.from_dict(result["law"])
    laws = [ScalingLaw.from_dict(b) for b in result.get("bootstrap", [])]
    rungs = result["rungs"]
    ns = [r["non_embedding_params"] for r in rungs]
    target = result.get("target", {})
    hi_n = max(ns + [target.get("non_embedding_params", 0)]) * 1.3
    xs = np.geomspace(min(ns) / 1.3, hi_n, 80)
    ratio = law.tokens_per_param

    def curve(l: ScalingLaw) -> list[float]:
        # the two-variable law is drawn along the rungs' mean tokens per parameter
        r = ratio if ratio is not None else float(np.mean([x["tokens"] / x["non_embedding_params"] for x in rungs]))
        return [l.predict(x, None if l.one_variable else r * x) for x in xs]

    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    if laws:
        band = np.array([curve(l) for l in laws])
        ax.fill_between(xs, np.percentile(band, 5, axis=0), np.percentile(band, 95, axis=0), alpha=0.2,
                        color="#1f77b4", label="90% interval (bootstrap)")
    largest = max(ns)
    inside = xs <= largest
    ax.plot(xs[inside], np.array(curve(law))[inside], "-", color="#1f77b4", lw=1.8, label="fitted law")
    ax.plot(xs[~inside], np.array(curve(law))[~inside], "--", color="#1f77b4", lw=1.5, label="extrapolation")
    ax.plot(ns, [r["bits_per_byte"] for r in rungs], "o", color="black", ms=5, label="rungs (measured)")
    if "bits_per_byte" in target:
        lo_hi = target.get("interval_90")
        err = ([[target["bits_per_byte"] - lo_hi[0]], [lo_hi[1] - target["bits_per_byte"]]] if lo_hi else None)
        ax.errorbar([target["non_embedding_params"]], [target["bits_per_byte"]], yerr=err, fmt="*",
                    color="#d62728", ms=11, capsize=4,
                    label="config's model (predicted, 90% interval with the backtest)")
    ax.set_xscale("log")
    # a ladder spans about one decade: matplotlib then labels the minor ticks (2 x 10^4,
    # 3 x 10^4 ...), and at this width their labels run into each other
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    # a wild bootstrap fit must not flatten the picture: frame the measured points
    seen = [r["bits_per_byte"] for r in rungs] + ([target["bits_per_byte"]] if "bits_per_byte" in target else [])
    span = max(seen) - min(seen) or max(seen) * 0.1
    ax.set_ylim(min(seen) - 0.5 * span, max(seen) + 0.5 * span)
    ax.set(title="Held-out bits per byte by model size", xlabel="non-embedding parameters",
           ylabel="bits per byte")
    # below the axes: inside, the wide legend hid a rung and the interval band
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out
