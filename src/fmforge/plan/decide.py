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
from fmforge.hardware import Hardware
from fmforge.plan.memory import usable_bytes
from fmforge.plan.sizing import MAX_USEFUL_EPOCHS, TOKENS_PER_PARAM, size_for_budget

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
    replica = _replica_gpus(params, hw)
    compute_hours = monthly_tokens * 2 * params / (hw.peak_flops * SERVE_MFU) / 3600
    # always-on replicas, as many as the traffic needs; each holds the whole model
    replicas = max(1, math.ceil(compute_hours / (replica * HOURS_PER_MONTH)))
    gpus = replicas * replica
    hours = gpus * HOURS_PER_MONTH
    return hours * hw.price_per_hour, gpus, hours


def _replica_gpus(params: float, hw: Hardware) -> int:
    """Devices that hold one bf16 copy of the model plus KV cache and activations."""
    return max(1, math.ceil(2 * params * SERVE_MEMORY_OVERHEAD / usable_bytes(hw)))


def _money(x: float) -> str:
    return f"${x:,.0f}" if abs(x) >= 100 else (f"${x:,.2f}" if x == 0 or abs(x) >= 0.01 else f"${x:.2g}")


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


def _span(gpu_hours: float, num_gpus: int) -> str:
    """Wall-clock time for ``gpu_hours`` spread over ``num_gpus`` devices."""
    h = gpu_hours / num_gpus
    gpus = f"{num_gpus} GPU{'s' if num_gpus != 1 else ''}"
    if h >= 48:
        return f"{h / 24:,.1f} days on {gpus}"
    if h >= 1:
        return f"{h:.1f} hours on {gpus}"
    return f"{h * 60:.2g} minutes on {gpus}"


def _payback(months: float) -> str:
    if months >= 1:
        return f"{months:.1f} months"
    return f"{months * 30:.0f} days" if months * 30 >= 1 else "under a day"


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
        if mfu is None and default_mfu(sizing.options[0].params, hardware) != m:
            m = default_mfu(sizing.options[0].params, hardware)
            sizing = size_for_budget(hardware, m, budget_usd=budget_usd, data_tokens=data_tokens)
        opt = sizing.options[0]
        n_train, d_train = opt.params, opt.tokens
        epochs = d_train / data_tokens
        why_size = (
            f"Train: ${budget_usd:,.0f} buys {sizing.gpu_hours:,.0f} {hardware.key} GPU-hours = "
            f"{sizing.compute_flops:.2e} FLOPs at MFU {m:.2f}; the compute-optimal model for that is "
            f"{n_train:.3g} parameters on {d_train:.3g} tokens ({epochs:.1f} epochs of your data)."
        )
        if epochs > MAX_USEFUL_EPOCHS:
            # Money is not the limit, data is: beyond ~4 epochs repeats are worth little,
            # so price the model the data can feed, and leave the rest of the budget unspent.
            d_train = MAX_USEFUL_EPOCHS * data_tokens
            n_train = d_train / TOKENS_PER_PARAM
            why_size += (
                f" But that is {epochs:,.0f} passes over your {data_tokens:.3g} tokens, and beyond "
                f"~{MAX_USEFUL_EPOCHS:g} repeated data is worth much less (Muennighoff et al. 2023): the train "
                f"option is therefore the model your data supports, {MAX_USEFUL_EPOCHS:g} epochs = {d_train:.3g} "
                f"tokens at {TOKENS_PER_PARAM:g} tokens/param = {n_train:.3g} parameters; the rest of the budget "
                "buys nothing without more text."
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
    # FSDP needs the 16 bytes/param of model state spread over enough devices
    # (activations not counted: a floor)
    train_min = max(1, math.ceil(16 * n_train / usable_bytes(hardware)))
    train_n = max(num_gpus, train_min)
    reasoning.append(why_size)
    if train_n > num_gpus:
        reasoning.append(
            f"Train: {n_train:.3g} parameters need 16 bytes each of weights, gradients and AdamW state = "
            f"{16 * n_train / 1e9:,.0f} GB, at least {train_min} {hardware.key} GPUs under FSDP "
            f"(not {num_gpus}); the time below assumes {train_min}."
        )
    reasoning.append(
        f"Train: 6·N·D = {6 * n_train * d_train:.3g} FLOPs at MFU {m_train:.2f} on {hardware.key} "
        f"= {_hours(train_hours)} GPU-hours × ${price:g} = {_money(train_hours * price)}; "
        f"{_span(train_hours, train_n)}."
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
    lora_min = _replica_gpus(base_params, hardware)  # the frozen bf16 base must fit
    lora_n = max(num_gpus, lora_min)
    extra = ("+ attention 12·L·d·T + adapters 6·N_lora, from the architecture" if base_arch is not None
             else "attention and adapter FLOPs not counted: pass --base-hf-config for them")
    reasoning.append(
        f"Customize: LoRA on a {base_params:.3g}-parameter base costs {lora_fpt / base_params:.2f}·N = "
        f"{lora_fpt:.3g} FLOPs per token (forward 2N + activation gradients 2N through the frozen base, "
        f"no weight gradients; {extra}) at MFU {m_lora:.2f}; {lora_tokens:.3g} tokens "
        f"({lora_epochs:g} epochs) = {_hours(lora_hours)} GPU-hours = {_money(lora_hours * price)}, "
        f"{_span(lora_hours, lora_n)}."
    )
    if lora_n > num_gpus:
        reasoning.append(
            f"Customize: the frozen base in bf16 with room for activations ({2 * base_params * SERVE_MEMORY_OVERHEAD / 1e9:,.0f} GB) "
            f"needs at least {lora_min} {hardware.key} GPUs (not {num_gpus}); the time assumes {lora_min}, "
            "or quantise the base to 4 bits (QLoRA) to use fewer."
        )

    # --- buy
    buy_monthly = monthly_tokens / 1e6 * api_price_per_m
    reasoning.append(
        f"Buy: {monthly_tokens:.3g} tokens a month × ${api_price_per_m:g} per million = ${buy_monthly:,.0f} a month, "
        "nothing up front; your prompts go to the provider."
    )
    for name, n_own, gpus, monthly in (("trained", n_train, train_gpus, train_monthly),
                                         ("customized", base_params, lora_gpus, lora_monthly)):
        reasoning.append(
            f"Serving the {name} model ({n_own:.3g} params): {gpus} always-on {hardware.key} GPU"
            f"{'s' if gpus != 1 else ''} × {HOURS_PER_MONTH:g} h/month × ${price:g} = {_money(monthly)} a month "
            f"(each replica holds the bf16 weights on {_replica_gpus(n_own, hardware)} GPU(s); replicas as the "
            f"{monthly_tokens:.3g} tokens/month need at 2·N FLOPs/token and MFU {SERVE_MFU:g}), whatever the traffic."
        )

    options = [
        OptionCost("train", n_train, train_hours * price, train_monthly,
                   train_hours * price + horizon_months * train_monthly,
                   _days(train_hours, train_n), train_hours, train_gpus,
                   f"{d_train:.3g} tokens of text ({d_train / data_tokens:.2g} epoch(s) of yours), "
                   f"{_span(train_hours, train_n)}, an ML team, serving infrastructure"),
        OptionCost("customize", base_params, lora_hours * price, lora_monthly,
                   lora_hours * price + horizon_months * lora_monthly,
                   _days(lora_hours, lora_n), lora_hours, lora_gpus,
                   "an open-weight base model whose licence fits, task examples, "
                   f"{_span(lora_hours, lora_n)}, serving infrastructure"),
        OptionCost("buy", None, 0.0, buy_monthly, horizon_months * buy_monthly, 0.0, 0.0, 0,
                   "an API contract; data leaves your premises; no control of model updates"),
    ]
    cheapest = min(options, key=lambda o: o.total_usd)
    # A model far smaller than the base is not a like-for-like alternative: say so
    # rather than crown it "cheapest".
    toy_train = n_train < base_params / 10
    comparable = [o for o in options if not (o.option == "train" and toy_train)]
    cheapest_comparable = min(comparable, key=lambda o: o.total_usd)
    for own in options[:2]:
        saving = buy_monthly - own.monthly_usd
        if saving > 0:
            reasoning.append(
                f"{own.option.capitalize()} vs buy: owning saves {_money(saving)} a month, so its "
                f"{_money(own.one_time_usd)} up front pays back in "
                f"{_payback(own.one_time_usd / saving)}."
            )
        else:
            reasoning.append(
                f"{own.option.capitalize()} vs buy: serving your own model costs {_money(-saving)} a month more "
                "than the API at this volume, so it never pays back on cost alone; it can still be worth it "
                "for privacy, control or latency."
            )
    if cheapest is not cheapest_comparable:
        reasoning.append(
            f"Over {horizon_months} months train is cheapest ({_money(cheapest.total_usd)}), but its "
            f"{n_train:.3g}-parameter model is {base_params / n_train:,.0f}x smaller than the base you would "
            f"customize: not a like-for-like alternative. Of the options with a model of that class the "
            f"cheapest is {cheapest_comparable.option} ({_money(cheapest_comparable.total_usd)}); "
            "quality is not priced here: evaluate a customized base and the API on your own task before choosing."
        )
    else:
        reasoning.append(
            f"Over {horizon_months} months the cheapest is {cheapest.option} ({_money(cheapest.total_usd)}); "
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
