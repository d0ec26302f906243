"""What model a budget buys, and whether the data is there to train it.

Compute-optimal sizing (Hoffmann et al. 2022, "Chinchilla"): for compute
C = 6·N·D loss is lowest near D ≈ 20·N, so N = sqrt(C / 120). Beside it, a model
of ``SMALL_MODEL_FRACTION`` that size on the same compute: the same training
cost, less to serve (2·N FLOPs per token), the trade the Llama models made. Both
are scored by Chinchilla's parametric fit L(N, D) = E + A/N^α + B/D^β (Approach 3),
fitted to MassiveText: a comparison of the two, not the loss your data will give.
Repeating data is nearly as good as new up to ~4 epochs (Muennighoff et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmforge.hardware import Hardware
from fmforge.plan.errors import PlanError, require_positive
from fmforge.plan.estimate import gpu_hours_for
from fmforge.plan.scaling import CHINCHILLA, REPEAT_LIMIT_EPOCHS
from fmforge.plan import format as fmt
from fmforge.rundir import RunDir

TOKENS_PER_PARAM = 20.0
SMALL_MODEL_FRACTION = 0.5
# Passes over the data worth training: one home for the limit, beside the ladder's
# prediction that declines past it (Muennighoff et al. 2023).
MAX_USEFUL_EPOCHS = REPEAT_LIMIT_EPOCHS
BYTES_PER_TOKEN = 4.0  # BPE tokenizers on English text: about 4 bytes (characters) a token


# Past this many epochs repeated tokens are worth almost nothing (Muennighoff et al.
# 2023: the value of a repeated token decays with their fitted R*_D ≈ 15 repetitions).
WORTHLESS_EPOCHS = 16.0


def repetition_note(tokens: float, data_tokens: float | None, what: str = "this training") -> str | None:
    """A sentence when training on ``tokens`` would pass over ``data_tokens`` of data
    more than ``MAX_USEFUL_EPOCHS`` times (naming the epochs and the data's size), else None."""
    if not data_tokens or not tokens or tokens <= MAX_USEFUL_EPOCHS * data_tokens:
        return None
    return (f"{what} would repeat its data {tokens / data_tokens:,.1f} times ({fmt.count(tokens)} tokens over "
            f"{fmt.count(data_tokens)} of data; past ~{MAX_USEFUL_EPOCHS:g} epochs repeated tokens are worth less "
            f"and less, past ~{WORTHLESS_EPOCHS:g} nearly nothing: Muennighoff et al. 2023): a prediction for fresh "
            "data is too optimistic there, and more data would help more than more compute")


def chinchilla_loss(params: float, tokens: float) -> float:
    return CHINCHILLA.predict(params, tokens)


def fitted_optimum(compute: float) -> tuple[float, float]:
    """(N, D) minimising the parametric fit at C = 6·N·D (Hoffmann et al. 2022, eq. 4).
    With the published constants it lands near 70 tokens/param at 1e22 FLOPs, not
    20; Besiroglu et al. 2024 trace this to the fit, and their re-fit agrees with 20."""
    return CHINCHILLA.optimum(compute)


def compute_optimal_params(compute: float) -> float:
    return math.sqrt(compute / (6 * TOKENS_PER_PARAM))


@dataclass(frozen=True)
class SizingOption:
    label: str
    params: float
    tokens: float
    tokens_per_param: float
    train_flops: float
    chinchilla_loss: float
    inference_flops_per_token: float
    epochs_of_data: float | None = None  # passes over the data available, when known
    more_tokens_needed: float | None = None  # to stay within MAX_USEFUL_EPOCHS


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
        return asdict(self)


def size_for_budget(hardware: Hardware, mfu: float, budget_usd: float | None = None,
                    gpu_hours: float | None = None, data_tokens: float | None = None,
                    data_source: str | None = None) -> BudgetSizing:
    """The compute-optimal model and a smaller one for a budget in dollars or
    GPU-hours on ``hardware`` at ``mfu``, against the data available if known."""
    if budget_usd is None and gpu_hours is None:
        raise PlanError("give a budget in dollars (--budget) or GPU-hours (--gpu-hours)")
    for name, v in (("budget in dollars", budget_usd), ("budget in GPU-hours", gpu_hours), ("MFU", mfu),
                    ("data tokens", data_tokens)):
        require_positive(name, v)
    if gpu_hours is None:
        if hardware.price_per_hour <= 0:
            raise PlanError("a dollar budget needs a price per GPU-hour above 0 (--price)")
        gpu_hours = budget_usd / hardware.price_per_hour  # type: ignore[operator]
    compute = gpu_hours * 3600 * hardware.peak_flops * mfu
    n_opt = compute_optimal_params(compute)
    small_tpp = TOKENS_PER_PARAM / SMALL_MODEL_FRACTION**2
    options = []
    for label, n in ((f"Chinchilla rule ({TOKENS_PER_PARAM:g} tokens/param)", n_opt),
                     (f"{SMALL_MODEL_FRACTION:g}x size, {small_tpp:g} tokens/param", n_opt * SMALL_MODEL_FRACTION)):
        d = compute / (6 * n)
        epochs = d / data_tokens if data_tokens else None
        more = max(0.0, d / MAX_USEFUL_EPOCHS - data_tokens) if data_tokens else None
        options.append(SizingOption(label, n, d, d / n, compute, chinchilla_loss(n, d), 2 * n, epochs, more))
    big, small = options
    n_fit, d_fit = fitted_optimum(compute)
    gap = (small.chinchilla_loss - big.chinchilla_loss) / big.chinchilla_loss
    notes = [
        f"Same training FLOPs; the smaller model costs {SMALL_MODEL_FRACTION:g}x as much per token served "
        "(inference ≈ 2·params FLOPs/token).",
        f"'fit loss' is Hoffmann et al.'s parametric fit, for comparing the options only: its own optimum here is "
        f"{n_fit:.3g} params on {d_fit / n_fit:.0f} tokens/param, not {TOKENS_PER_PARAM:g} (the rule of the paper's "
        f"other two methods, and of Besiroglu et al. 2024's re-fit), so by it the smaller model comes out "
        f"{abs(gap):.1%} {'lower' if gap < 0 else 'higher'} ({small.chinchilla_loss:.3f} vs "
        f"{big.chinchilla_loss:.3f})" + ("; inside the fit's uncertainty: about equal." if abs(gap) < 0.01 else "."),
    ]
    data_notes = []
    if data_tokens is not None:
        data_notes.append(f"Up to ~{MAX_USEFUL_EPOCHS:g} epochs are nearly as good as fresh data (Muennighoff et al. "
                          f"2023); 'more data' is what {MAX_USEFUL_EPOCHS:g} epochs would need.")
        if any(o.tokens > MAX_USEFUL_EPOCHS * data_tokens for o in options):
            d_lim = MAX_USEFUL_EPOCHS * data_tokens
            n_lim = d_lim / TOKENS_PER_PARAM
            h_lim = gpu_hours_for(6 * n_lim * d_lim, mfu, hardware.peak_flops)
            data_notes.append(
                f"Data-limited: {MAX_USEFUL_EPOCHS:g} epochs of your data = {d_lim:.3g} tokens suit a "
                f"{n_lim:.3g}-parameter model ({TOKENS_PER_PARAM:g} tokens/param): {fmt.hours(h_lim)} GPU-hours = "
                f"{fmt.usd(h_lim * hardware.price_per_hour)}, {100 * h_lim / gpu_hours:.2g}% of this budget; "
                "a bigger model needs more data, not more money.")
    return BudgetSizing(
        budget_usd=budget_usd if budget_usd is not None else gpu_hours * hardware.price_per_hour,
        gpu_hours=gpu_hours, gpu=hardware.key, mfu=mfu, compute_flops=compute, options=options,
        data_tokens_available=data_tokens, data_source=data_source, data_notes=data_notes, notes=notes,
    )


def data_tokens_from_run(run_dir: str | Path) -> tuple[float, str] | None:
    """The training tokens a run has, and where that came from: ``train_tokens`` of
    ``tokens/meta.json`` once the tokenize stage ran, else the data card's training
    bytes at ``BYTES_PER_TOKEN``; None before the data stage."""
    run = RunDir(run_dir)
    try:
        if (run.tokens / "meta.json").is_file():
            return float(run.tokens_meta()["train_tokens"]), f"{run.tokens / 'meta.json'} (train_tokens)"
        if run.data_card.is_file():
            train_bytes = float(run.read_data_card()["splits"]["train"]["bytes"])
            return train_bytes / BYTES_PER_TOKEN, f"{run.data_card} (estimated at {BYTES_PER_TOKEN:g} bytes/token)"
    except (ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{run.root}: cannot read the data size ({type(exc).__name__}: {exc}); "
                        "rerun its data/tokenize stage, or pass --data-tokens") from exc
    return None
