"""What model a budget buys, and whether the data is there to train it.

Compute-optimal sizing (Hoffmann et al. 2022, "Training Compute-Optimal Large
Language Models", "Chinchilla"): for a compute budget C = 6·N·D, loss is lowest at
roughly D ≈ 20·N tokens, so N = sqrt(C / 120), D = 20·N.

A smaller model trained on more tokens costs the same to train and less to serve (inference ≈ 2·N FLOPs per token), the trade the
Llama models made (Touvron et al. 2023). We show the model at ``SMALL_MODEL_FRACTION``
of the compute-optimal size with the same compute (so 1/fraction² as many tokens per
parameter), and the loss either option would reach by Chinchilla's parametric fit
L(N, D) = E + A/N^α + B/D^β (Approach 3: E=1.69, A=406.4, B=410.7, α=0.34, β=0.28),
which was fitted to MassiveText with Chinchilla's tokenizer: read it as a comparison
between the two options, not as the loss your data will give.

Data: repeating data is nearly as good as new up to about 4 epochs (Muennighoff et
al. 2023, "Scaling Data-Constrained Language Models"); beyond that returns fall fast.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmforge.plan.errors import PlanError, require_positive
from fmforge.hardware import Hardware

TOKENS_PER_PARAM = 20.0
SMALL_MODEL_FRACTION = 0.5
MAX_USEFUL_EPOCHS = 4.0
CHINCHILLA_FIT = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_loss(params: float, tokens: float) -> float:
    c = CHINCHILLA_FIT
    return c["E"] + c["A"] / params ** c["alpha"] + c["B"] / tokens ** c["beta"]


def _money(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else (f"${x:,.2f}" if x >= 0.01 else f"${x:.2g}")


def fitted_optimum(compute: float) -> tuple[float, float]:
    """(N, D) minimising the parametric fit for C = 6·N·D (Hoffmann et al. 2022, eq. 4):
    N = G·(C/6)^(β/(α+β)), G = (αA / (βB))^(1/(α+β)). With the published constants
    this lands well above 20 tokens/param (≈ 70 at 1e22 FLOPs), unlike the paper's
    Approaches 1 and 2 (≈ 20), a discrepancy Besiroglu et al. 2024 ("Chinchilla
    Scaling: A replication attempt") trace to the fit; their re-fit agrees with ≈ 20."""
    c = CHINCHILLA_FIT
    a, b = c["alpha"], c["beta"]
    g = (a * c["A"] / (b * c["B"])) ** (1 / (a + b))
    n = g * (compute / 6) ** (b / (a + b))
    return n, compute / (6 * n)


@dataclass(frozen=True)
class SizingOption:
    label: str
    params: float
    tokens: float
    tokens_per_param: float
    train_flops: float
    chinchilla_loss: float
    inference_flops_per_token: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BudgetSizing:
    budget_usd: float | None
    gpu_hours: float
    gpu: str
    mfu: float
    compute_flops: float
    options: list[SizingOption]
    data_tokens_available: float | None
    data_source: str | None
    data_notes: list[str]
    notes: list[str] = field(default_factory=list)  # how to read the options and their loss

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = [o.to_dict() for o in self.options]
        return d


def size_for_budget(
    hardware: Hardware,
    mfu: float,
    budget_usd: float | None = None,
    gpu_hours: float | None = None,
    data_tokens: float | None = None,
    data_source: str | None = None,
) -> BudgetSizing:
    """The compute-optimal model (and a smaller alternative) for a budget in dollars
    or GPU-hours on ``hardware`` at ``mfu``, with the data it needs versus the data
    available (``data_tokens``, if known)."""
    if budget_usd is None and gpu_hours is None:
        raise PlanError("give a budget in dollars (--budget) or GPU-hours (--gpu-hours)")
    require_positive("budget in dollars", budget_usd)
    require_positive("budget in GPU-hours", gpu_hours)
    require_positive("MFU", mfu)
    if gpu_hours is None:
        if hardware.price_per_hour <= 0:
            raise PlanError("a dollar budget needs a price per GPU-hour above 0 (--price)")
        gpu_hours = budget_usd / hardware.price_per_hour  # type: ignore[operator]
    compute = gpu_hours * 3600 * hardware.peak_flops * mfu
    n_opt = math.sqrt(compute / (6 * TOKENS_PER_PARAM))
    options = []
    small_tpp = TOKENS_PER_PARAM / SMALL_MODEL_FRACTION**2
    for label, n in (
        (f"Chinchilla rule ({TOKENS_PER_PARAM:g} tokens/param)", n_opt),
        (f"{SMALL_MODEL_FRACTION:g}x size, {small_tpp:g} tokens/param", n_opt * SMALL_MODEL_FRACTION),
    ):
        d = compute / (6 * n)
        options.append(
            SizingOption(
                label=label,
                params=n,
                tokens=d,
                tokens_per_param=d / n,
                train_flops=compute,
                chinchilla_loss=chinchilla_loss(n, d),
                inference_flops_per_token=2 * n,
            )
        )
    big, small = options
    n_fit, d_fit = fitted_optimum(compute)
    gap = (small.chinchilla_loss - big.chinchilla_loss) / big.chinchilla_loss
    loss_notes = [
        f"Same budget, same training FLOPs: the smaller model costs {SMALL_MODEL_FRACTION:g}x as much per token "
        f"served (inference ≈ 2·params FLOPs/token).",
        f"The 'fit loss' column is Hoffmann et al.'s parametric fit, for comparing the options only. "
        f"Its own minimum for this compute sits at {n_fit:.3g} params on {d_fit / n_fit:.0f} tokens/param, "
        f"not at {TOKENS_PER_PARAM:g} (the {TOKENS_PER_PARAM:g} tokens/param rule comes from the paper's other two "
        f"methods, and a re-fit of its data, Besiroglu et al. 2024, agrees with {TOKENS_PER_PARAM:g}); so by the fit "
        f"the smaller model comes out {abs(gap):.1%} {'lower' if gap < 0 else 'higher'} "
        f"({small.chinchilla_loss:.3f} vs {big.chinchilla_loss:.3f})."
        + (" A gap this small is inside the fit's uncertainty: read the two options as about equal in quality."
           if abs(gap) < 0.01 else ""),
    ]
    notes = []
    if data_tokens is not None:
        require_positive("data tokens", data_tokens)
        for o in options:
            epochs = o.tokens / data_tokens
            if epochs <= 1:
                notes.append(f"{o.label}: needs {o.tokens:.3g} tokens; you have {data_tokens:.3g}, enough for one pass.")
            elif epochs <= MAX_USEFUL_EPOCHS:
                notes.append(
                    f"{o.label}: needs {o.tokens:.3g} tokens = {epochs:.1f} epochs of your {data_tokens:.3g}; "
                    f"up to ~{MAX_USEFUL_EPOCHS:g} epochs are nearly as good as fresh data (Muennighoff et al. 2023)."
                )
            else:
                notes.append(
                    f"{o.label}: needs {o.tokens:.3g} tokens = {epochs:.0f} epochs of your {data_tokens:.3g}; "
                    f"beyond ~{MAX_USEFUL_EPOCHS:g} epochs repeated data is worth much less: collect "
                    f"{o.tokens / MAX_USEFUL_EPOCHS - data_tokens:.3g} more tokens, or see the data-limited model below."
                )
        if any(o.tokens > MAX_USEFUL_EPOCHS * data_tokens for o in options):
            d_lim = MAX_USEFUL_EPOCHS * data_tokens
            n_lim = d_lim / TOKENS_PER_PARAM
            h_lim = 6 * n_lim * d_lim / (hardware.peak_flops * mfu) / 3600
            notes.append(
                f"Data-limited: ~{MAX_USEFUL_EPOCHS:g} epochs of your data = {d_lim:.3g} tokens suit a "
                f"{n_lim:.3g}-parameter model ({TOKENS_PER_PARAM:g} tokens/param), which needs "
                f"{f'{h_lim:,.0f}' if h_lim >= 10 else f'{h_lim:.2g}'} GPU-hours = "
                f"{_money(h_lim * hardware.price_per_hour)}, {100 * h_lim / gpu_hours:.2g}% of this budget; "
                "a bigger model needs more data, not more money."
            )
    return BudgetSizing(
        budget_usd=budget_usd if budget_usd is not None else gpu_hours * hardware.price_per_hour,
        gpu_hours=gpu_hours,
        gpu=hardware.key,
        mfu=mfu,
        compute_flops=compute,
        options=options,
        data_tokens_available=data_tokens,
        data_source=data_source,
        data_notes=notes,
        notes=loss_notes,
    )


# ------------------------------------------------------------ the user's data

_TOKEN_KEYS = ("train_tokens", "tokens", "total_tokens", "num_tokens")


def _find_number(obj: Any, keys: tuple[str, ...]) -> float | None:
    if isinstance(obj, dict):
        for k in keys:
            v = obj.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return float(v)
        for k in ("totals", "total", "train", "summary"):
            if isinstance(obj.get(k), dict):
                found = _find_number(obj[k], keys)
                if found is not None:
                    return found
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PlanError(f"{path} is not valid JSON: {exc}") from exc


def data_tokens_from_run(run_dir: str | Path) -> tuple[float, str] | None:
    """The training tokens a run has: ``tokens/meta.json``'s ``train_tokens`` when the
    tokens stage ran; else an estimate from ``data/data_card.json``'s character or
    byte count at ``CHARS_PER_TOKEN`` (BPE tokenizers on English text average about
    4 characters per token). Returns (tokens, where from), or None."""
    root = Path(run_dir)
    meta = root / "tokens" / "meta.json"
    if meta.is_file():
        n = _find_number(_read_json(meta), _TOKEN_KEYS)
        if n is not None:
            return n, f"{meta} (train_tokens)"
    card = root / "data" / "data_card.json"
    if card.is_file():
        c = _read_json(card)
        n = _find_number(c, _TOKEN_KEYS)
        if n is not None:
            return n, f"{card} (tokens)"
        chars = _find_number(c, ("train_chars", "chars", "total_chars", "characters", "train_bytes", "bytes", "total_bytes"))
        if chars is not None:
            return chars / CHARS_PER_TOKEN, f"{card} (estimated at {CHARS_PER_TOKEN:g} characters/token)"
    return None


CHARS_PER_TOKEN = 4.0
