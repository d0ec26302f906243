"""Train from scratch, customize a pretrained model with LoRA, or buy from an API.

Each option is priced the same way: a one-time cost (GPU-hours × price) and a
monthly cost of using the model for ``monthly_tokens`` tokens.

* Train: pretrain a model on the user's data. Size: the compute-optimal model for
  the budget when one is given (sizing.py), else the compute-optimal model for the
  data, N = tokens / 20 (one pass). FLOPs = tokens × 6N (the rule of thumb; the
  attention term needs an architecture we do not have here).
* Customize: LoRA on a base model of ``base_params``, over the user's tokens for
  ``lora_epochs`` epochs; FLOPs per token from ``architecture.lora_flops_per_token``
  (4N through the frozen base: forward 2N plus the activation gradients 2N, the
  weight gradients skipped; + the adapters' own 6 per parameter).
* Buy: ``api_price_per_m`` dollars per million tokens × ``monthly_tokens``.

Serving a model you own: the weights (2 bytes/param in bf16, plus
``SERVE_MEMORY_OVERHEAD`` for KV cache and activations) must sit on always-on GPUs
(730 hours a month), and the compute of 2N FLOPs per token at ``SERVE_MFU`` must fit
in their hours; the monthly cost is the larger of the two. Decoding is memory-bound,
so ``SERVE_MFU`` is low (0.10: a batched server such as vLLM does better on long
prompts, a lone user much worse).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fmforge.plan.architecture import Architecture, lora_flops_per_token
from fmforge.plan.compute import default_mfu
from fmforge.plan.errors import require_positive
from fmforge.plan.hardware import Hardware
from fmforge.plan.memory import usable_bytes
from fmforge.plan.sizing import TOKENS_PER_PARAM, size_for_budget

HOURS_PER_MONTH = 730.0
SERVE_MFU = 0.10
SERVE_MEMORY_OVERHEAD = 1.3
DEFAULT_LORA_EPOCHS = 2.0
DEFAULT_HORIZON_MONTHS = 12


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    horizon_months: int
    options: list[OptionCost]
    reasoning: list[str] = field(default_factory=list)
    assumptions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "horizon_months": self.horizon_months,
            "options": [o.to_dict() for o in self.options],
            "reasoning": list(self.reasoning),
            "assumptions": dict(self.assumptions),
        }


def serving_cost(params: float, monthly_tokens: float, hw: Hardware) -> tuple[float, int, float]:
    """(monthly $, always-on GPUs, GPU-hours a month) to serve a model of ``params``."""
    usable = usable_bytes(hw)
    gpus = max(1, math.ceil(2 * params * SERVE_MEMORY_OVERHEAD / usable))
    compute_hours = monthly_tokens * 2 * params / (hw.peak_flops * SERVE_MFU) / 3600
    hours = max(gpus * HOURS_PER_MONTH, compute_hours)
    return hours * hw.price_per_hour, gpus, hours


def _days(gpu_hours: float, num_gpus: int) -> float:
    return gpu_hours / num_gpus / 24


def compare_options(
    hardware: Hardware,
    data_tokens: float,
    base_params: float,
    api_price_per_m: float,
    monthly_tokens: float,
    num_gpus: int = 8,
    budget_usd: float | None = None,
    mfu: float | None = None,
    base_arch: Architecture | None = None,
    lora_epochs: float = DEFAULT_LORA_EPOCHS,
    lora_rank: int = 16,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
) -> Decision:
    require_positive("data tokens", data_tokens)
    require_positive("base model params", base_params)
    require_positive("API price per million tokens", api_price_per_m, allow_zero=True)
    require_positive("monthly tokens", monthly_tokens, allow_zero=True)
    require_positive("number of GPUs", num_gpus)
    require_positive("LoRA epochs", lora_epochs)
    require_positive("horizon in months", horizon_months)
    require_positive("budget in dollars", budget_usd)
    if mfu is not None:
        require_positive("MFU", mfu)
    reasoning: list[str] = []
    price = hardware.price_per_hour

    # --- train from scratch
    if budget_usd is not None:
        m = mfu or default_mfu(1e9, hardware)
        sizing = size_for_budget(hardware, m, budget_usd=budget_usd, data_tokens=data_tokens)
        opt = sizing.options[0]
        n_train, d_train = opt.params, opt.tokens
        epochs = d_train / data_tokens
        why_size = (
            f"Train: ${budget_usd:,.0f} buys {sizing.gpu_hours:,.0f} {hardware.key} GPU-hours = "
            f"{sizing.compute_flops:.2e} FLOPs at MFU {m:.2f}; the compute-optimal model for that is "
            f"{n_train:.3g} parameters on {d_train:.3g} tokens ({epochs:.1f} epochs of your data)."
        )
    else:
        n_train, d_train = data_tokens / TOKENS_PER_PARAM, data_tokens
        why_size = (
            f"Train: with no budget given, the model sized to your data: {data_tokens:.3g} tokens / "
            f"{TOKENS_PER_PARAM:g} tokens per parameter = {n_train:.3g} parameters (Chinchilla), one pass."
        )
    m_train = mfu or default_mfu(n_train, hardware)
    train_hours = 6 * n_train * d_train / (m_train * hardware.peak_flops) / 3600
    train_monthly, train_gpus, _ = serving_cost(n_train, monthly_tokens, hardware)
    reasoning.append(why_size)
    if d_train / data_tokens > 4:
        reasoning.append(
            f"Train: that is {d_train / data_tokens:.0f} passes over your data; beyond ~4 repeated data is "
            "worth much less (Muennighoff et al. 2023): collect more text, or train a smaller model for longer."
        )
    reasoning.append(
        f"Train: 6·N·D = {6 * n_train * d_train:.3g} FLOPs at MFU {m_train:.2f} on {hardware.key} "
        f"= {train_hours:,.0f} GPU-hours × ${price:g} = ${train_hours * price:,.0f}; "
        f"{_days(train_hours, num_gpus):.1f} days on {num_gpus} GPUs."
    )
    if n_train < base_params:
        reasoning.append(
            f"Train: the model you could train ({n_train:.3g} params on {d_train:.3g} tokens) is smaller than the "
            f"base you would customize ({base_params:.3g} params, pretrained on far more tokens); it will "
            "know your domain but little else."
        )

    # --- customize with LoRA
    lora_tokens = data_tokens * lora_epochs
    lora_fpt = lora_flops_per_token(base_arch, base_params, rank=lora_rank)
    m_lora = mfu or default_mfu(base_params, hardware)
    lora_hours = lora_tokens * lora_fpt / (m_lora * hardware.peak_flops) / 3600
    lora_monthly, lora_gpus, _ = serving_cost(base_params, monthly_tokens, hardware)
    reasoning.append(
        f"Customize: LoRA on a {base_params:.3g}-parameter base costs {lora_fpt / base_params:.2f}·N = "
        f"{lora_fpt:.3g} FLOPs per token (forward 2N + activation gradients 2N through the frozen base, "
        f"no weight gradients; adapters and attention extra); {lora_tokens:.3g} tokens "
        f"({lora_epochs:g} epochs) = {lora_hours:,.1f} GPU-hours = ${lora_hours * price:,.0f}, "
        f"{_days(lora_hours, num_gpus) * 24:.1f} hours on {num_gpus} GPUs."
    )

    # --- buy
    buy_monthly = monthly_tokens / 1e6 * api_price_per_m
    reasoning.append(
        f"Buy: {monthly_tokens:.3g} tokens a month × ${api_price_per_m:g} per million = ${buy_monthly:,.0f} a month, "
        "nothing up front; your prompts go to the provider."
    )
    reasoning.append(
        f"Owning a model means serving it: {train_gpus if n_train >= base_params else lora_gpus} or more "
        f"always-on {hardware.key} GPU(s) ({HOURS_PER_MONTH:g} h/month at ${price:g}) whatever the traffic; "
        f"that floor is ${HOURS_PER_MONTH * price:,.0f} per GPU a month."
    )

    options = [
        OptionCost("train", n_train, train_hours * price, train_monthly,
                   train_hours * price + horizon_months * train_monthly,
                   _days(train_hours, num_gpus), train_hours, train_gpus,
                   f"{d_train:.3g} tokens of text, {num_gpus} GPUs for {_days(train_hours, num_gpus):.1f} days, "
                   "an ML team, serving infrastructure"),
        OptionCost("customize", base_params, lora_hours * price, lora_monthly,
                   lora_hours * price + horizon_months * lora_monthly,
                   _days(lora_hours, num_gpus), lora_hours, lora_gpus,
                   "an open-weight base model whose licence fits, task examples, "
                   "1+ GPU for hours, serving infrastructure"),
        OptionCost("buy", None, 0.0, buy_monthly, horizon_months * buy_monthly, 0.0, 0.0, 0,
                   "an API contract; data leaves your premises; no control of model updates"),
    ]
    cheapest = min(options, key=lambda o: o.total_usd)
    for own in options[:2]:
        saving = buy_monthly - own.monthly_usd
        if saving > 0:
            reasoning.append(
                f"{own.option.capitalize()} vs buy: owning saves ${saving:,.0f} a month, so its "
                f"${own.one_time_usd:,.0f} up front pays back in {own.one_time_usd / saving:.1f} months."
            )
        else:
            reasoning.append(
                f"{own.option.capitalize()} vs buy: serving your own model costs ${-saving:,.0f} a month more "
                "than the API at this volume, so it never pays back on cost alone; it can still be worth it "
                "for privacy, control or latency."
            )
    reasoning.append(
        f"Over {horizon_months} months the cheapest is {cheapest.option} (${cheapest.total_usd:,.0f}); "
        "quality is not priced here: evaluate a customized base and the API on your own task before choosing."
    )
    return Decision(
        horizon_months=horizon_months,
        options=options,
        reasoning=reasoning,
        assumptions={
            "gpu": hardware.key,
            "price_per_gpu_hour": price,
            "num_gpus": num_gpus,
            "serve_mfu": SERVE_MFU,
            "serve_memory_overhead": SERVE_MEMORY_OVERHEAD,
            "hours_per_month": HOURS_PER_MONTH,
            "lora_epochs": lora_epochs,
            "lora_rank": lora_rank,
            "tokens_per_param": TOKENS_PER_PARAM,
        },
    )
