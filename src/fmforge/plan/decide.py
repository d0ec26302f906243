"""Train from scratch, customize a pretrained model with LoRA, or buy from an API.

Each option is priced alike: a one-time cost (GPU-hours × price) and a monthly
cost of using the model for ``monthly_tokens`` tokens, over ``horizon_months``.
Owning a model adds serving: always-on replicas, each on the GPUs that hold its
bf16 weights with room for KV cache and activations, as many as 2·N FLOPs a token
need at ``SERVE_MFU`` (low: decoding is memory-bound). docs/planner.md has the
formulas for each option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fmforge.hardware import Hardware
from fmforge.model.counting import Architecture, lora_flops_per_token
from fmforge.plan.errors import require_positive
from fmforge.plan.estimate import default_mfu, gpu_hours_for, settle_mfu
from fmforge.plan import format as fmt
from fmforge.plan.memory import usable_bytes
from fmforge.plan.sizing import MAX_USEFUL_EPOCHS, TOKENS_PER_PARAM, compute_optimal_params

HOURS_PER_MONTH = 730.0
SERVE_MFU = 0.10
SERVE_MEMORY_OVERHEAD = 1.3
DEFAULT_LORA_EPOCHS = 2.0
DEFAULT_HORIZON_MONTHS = 12
TOY_RATIO = 10  # a trained model this many times smaller than the base is no alternative to it


@dataclass(frozen=True)
class OptionCost:
    option: str  # "train" | "customize" | "buy"
    model_params: float | None
    one_time_usd: float
    monthly_usd: float
    total_usd: float  # one-time + horizon × monthly
    time_to_first_model_days: float
    gpu_hours: float
    serve_gpus: int
    needs: str
    tokens: float = 0.0  # trained on (train, customize) or bought a month (buy)
    flops_per_token: float | None = None
    mfu: float | None = None
    train_gpus: int = 0  # devices the one-time work runs on
    replica_gpus: int = 0  # devices one serving replica needs
    payback_months: float | None = None  # of the one-time cost by owning instead of buying


@dataclass(frozen=True)
class Decision:
    horizon_months: int
    options: list[OptionCost]
    reasoning: list[str] = field(default_factory=list)
    assumptions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def replica_gpus(params: float, hw: Hardware) -> int:
    """Devices that hold one bf16 copy of the model plus KV cache and activations."""
    return max(1, math.ceil(2 * params * SERVE_MEMORY_OVERHEAD / usable_bytes(hw)))


def serving_cost(params: float, monthly_tokens: float, hw: Hardware) -> tuple[float, int]:
    """(monthly $, always-on GPUs) to serve ``monthly_tokens`` from a model of ``params``."""
    replica = replica_gpus(params, hw)
    compute_hours = gpu_hours_for(monthly_tokens * 2 * params, SERVE_MFU, hw.peak_flops)
    gpus = replica * max(1, math.ceil(compute_hours / (replica * HOURS_PER_MONTH)))
    return gpus * HOURS_PER_MONTH * hw.price_per_hour, gpus


def _train_size(hw: Hardware, data_tokens: float, budget_usd: float | None, mfu: float | None,
                notes: list[str]) -> tuple[float, float]:
    """(params, tokens) of the model to train from scratch, with the why in ``notes``."""
    if budget_usd is None:
        n = data_tokens / TOKENS_PER_PARAM
        notes.append(f"Train: no budget given: the model sized to your data, {data_tokens:.3g} tokens / "
                     f"{TOKENS_PER_PARAM:g} tokens per parameter = {n:.3g} parameters (Chinchilla), one pass.")
        return n, data_tokens
    gpu_hours = budget_usd / hw.price_per_hour
    compute_at = lambda m: gpu_hours * 3600 * hw.peak_flops * m  # noqa: E731
    m = mfu or settle_mfu(lambda m: compute_optimal_params(compute_at(m)), hw)
    n = compute_optimal_params(compute_at(m))
    d = compute_at(m) / (6 * n)
    epochs = d / data_tokens
    notes.append(f"Train: ${budget_usd:,.0f} buys {gpu_hours:,.0f} {hw.key} GPU-hours = {compute_at(m):.2e} FLOPs at "
                 f"MFU {m:.2f}: compute-optimal is {n:.3g} parameters on {d:.3g} tokens ({epochs:.1f} epochs of "
                 "your data).")
    if epochs <= MAX_USEFUL_EPOCHS:
        return n, d
    # Data, not money, is the limit: price the model the data can feed; the rest of the budget buys nothing.
    d = MAX_USEFUL_EPOCHS * data_tokens
    notes.append(f"Train: {epochs:,.0f} epochs is far beyond the ~{MAX_USEFUL_EPOCHS:g} that repeated data is worth "
                 f"(Muennighoff et al. 2023): priced instead is the model your data supports, {d:.3g} tokens at "
                 f"{TOKENS_PER_PARAM:g} tokens/param = {d / TOKENS_PER_PARAM:.3g} parameters.")
    return d / TOKENS_PER_PARAM, d


def compare_options(hardware: Hardware, data_tokens: float, base_params: float, api_price_per_m: float,
                    monthly_tokens: float, num_gpus: int = 8, budget_usd: float | None = None,
                    mfu: float | None = None, base_arch: Architecture | None = None,
                    lora_epochs: float = DEFAULT_LORA_EPOCHS, lora_rank: int = 16,
                    horizon_months: int = DEFAULT_HORIZON_MONTHS) -> Decision:
    for name, v in (("data tokens", data_tokens), ("base model params", base_params), ("number of GPUs", num_gpus),
                    ("LoRA epochs", lora_epochs), ("horizon in months", horizon_months),
                    ("budget in dollars", budget_usd), ("MFU", mfu), ("LoRA rank", lora_rank)):
        require_positive(name, v)
    require_positive("API price per million tokens", api_price_per_m, allow_zero=True)
    require_positive("monthly tokens", monthly_tokens, allow_zero=True)
    hw, price = hardware, hardware.price_per_hour
    notes: list[str] = []
    buy_monthly = monthly_tokens / 1e6 * api_price_per_m

    def own(option: str, n: float, tokens: float, fpt: float, min_gpus: int, needs: str) -> OptionCost:
        m = mfu or default_mfu(n, hw)
        gpu_hours = gpu_hours_for(tokens * fpt, m, hw.peak_flops)
        monthly, serve = serving_cost(n, monthly_tokens, hw)
        run_on = max(num_gpus, min_gpus)
        saving = buy_monthly - monthly
        return OptionCost(option, n, gpu_hours * price, monthly, gpu_hours * price + horizon_months * monthly,
                          gpu_hours / run_on / 24, gpu_hours, serve, needs, tokens, fpt, m, run_on,
                          replica_gpus(n, hw), gpu_hours * price / saving if saving > 0 else None)

    # train from scratch; FSDP must spread 16 bytes/param of state (activations not counted: a floor)
    n_train, d_train = _train_size(hw, data_tokens, budget_usd, mfu, notes)
    train_min = max(1, math.ceil(16 * n_train / usable_bytes(hw)))
    if train_min > num_gpus:
        notes.append(f"Train: {16 * n_train / 1e9:,.0f} GB of weights, gradients and AdamW state need at least "
                     f"{train_min} {hw.key} GPUs under FSDP (not {num_gpus}); priced on {train_min}.")
    train = own("train", n_train, d_train, 6 * n_train, train_min,
                f"{d_train:.3g} tokens of text ({d_train / data_tokens:.2g} epoch(s) of yours), an ML team, "
                "serving infrastructure")

    # customize with LoRA; the frozen bf16 base must fit
    lora_fpt = (lora_flops_per_token(base_arch, rank=lora_rank) if base_arch is not None else 4.0 * base_params)
    lora_min = replica_gpus(base_params, hw)
    if base_arch is None:
        notes.append("Customize: 4·N FLOPs/token through the frozen base (forward 2N, activation gradients 2N); "
                     "attention and adapter FLOPs not counted: pass --base-hf-config for them.")
    if lora_min > num_gpus:
        notes.append(f"Customize: the frozen bf16 base with room for activations "
                     f"({2 * base_params * SERVE_MEMORY_OVERHEAD / 1e9:,.0f} GB) needs at least {lora_min} {hw.key} "
                     f"GPUs (not {num_gpus}); priced on {lora_min}, or quantise it to 4 bits (QLoRA) to use fewer.")
    customize = own("customize", base_params, data_tokens * lora_epochs, lora_fpt, lora_min,
                    "an open-weight base model whose licence fits, task examples, serving infrastructure")

    buy = OptionCost("buy", None, 0.0, buy_monthly, horizon_months * buy_monthly, 0.0, 0.0, 0,
                     "an API contract; data leaves your premises; no control of model updates",
                     tokens=monthly_tokens)
    options = [train, customize, buy]
    if n_train < base_params:
        notes.append(f"Train: the model you could train ({n_train:.3g} params on {d_train:.3g} tokens) is smaller "
                     f"than the base you would customize ({base_params:.3g} params, pretrained on far more tokens); "
                     "it will know your domain but little else.")
    notes.append(f"Owning a model means serving it: always-on GPUs ({HOURS_PER_MONTH:g} h/month), replicas as the "
                 f"{monthly_tokens:.3g} tokens/month need at 2·N FLOPs/token and MFU {SERVE_MFU:g}, whatever the "
                 f"traffic; buying: {monthly_tokens:.3g} tokens × ${api_price_per_m:g} per million, nothing up front, "
                 "your prompts go to the provider.")
    cheapest = min(options, key=lambda o: o.total_usd)
    comparable = min((o for o in options if not (o.option == "train" and n_train < base_params / TOY_RATIO)),
                     key=lambda o: o.total_usd)
    quality = "quality is not priced here: evaluate a customized base and the API on your own task before choosing."
    if cheapest is not comparable:
        notes.append(f"Over {horizon_months} months train is cheapest ({fmt.usd(cheapest.total_usd)}), but its "
                     f"{n_train:.3g}-parameter model is {base_params / n_train:,.0f}x smaller than the base: not a "
                     f"like-for-like alternative. Of the options with a model of that class the cheapest is "
                     f"{comparable.option} ({fmt.usd(comparable.total_usd)}); {quality}")
    else:
        notes.append(f"Over {horizon_months} months the cheapest is {cheapest.option} "
                     f"({fmt.usd(cheapest.total_usd)}); {quality}")
    return Decision(horizon_months, options, notes, {
        "gpu": hw.key, "price_per_gpu_hour": price, "num_gpus": num_gpus, "serve_mfu": SERVE_MFU,
        "serve_memory_overhead": SERVE_MEMORY_OVERHEAD, "hours_per_month": HOURS_PER_MONTH,
        "lora_epochs": lora_epochs, "lora_rank": lora_rank, "tokens_per_param": TOKENS_PER_PARAM})
