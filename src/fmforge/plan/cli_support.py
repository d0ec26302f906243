"""``fmforge plan``: everything the CLI command does, minus argument parsing.

The typer command passes its options straight to ``plan_command`` and prints
``out.renderables`` (or ``json.dumps(out.data)`` with ``--json``); a ``PlanError``
(or ``ConfigError``) is a user error: print its message, exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmforge.plan.actual import compare_plan_to_actual
from fmforge.plan.architecture import DEFAULT_CONVENTION, from_hf_config, from_model_config
from fmforge.plan.compute import default_mfu
from fmforge.plan.decide import DEFAULT_HORIZON_MONTHS, DEFAULT_LORA_EPOCHS, compare_options
from fmforge.plan.errors import PlanError, require_positive
from fmforge.plan.estimate import make_plan, run_dtype, tokens_for_run
from fmforge.hardware import HardwareError, get_hardware
from fmforge.plan.report import render_actual, render_decision, render_plan, render_sizing
from fmforge.plan.sizing import data_tokens_from_run, size_for_budget


@dataclass
class PlanOutput:
    renderables: list[Any]  # rich renderables, in print order
    data: dict[str, Any]  # what --json prints


def plan_command(
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    params: float | None = None,
    tokens: float | None = None,
    hf_config: str | Path | None = None,
    seq_len: int | None = None,
    gpu: str | None = None,
    num_gpus: int | None = None,
    mfu: float | None = None,
    price: float | None = None,
    micro_batch: int | None = None,
    dtype: str | None = None,
    checkpointing: bool = False,
    strategy: str | None = None,
    convention: str = DEFAULT_CONVENTION,
    budget: float | None = None,
    gpu_hours: float | None = None,
    data_tokens: float | None = None,
    run: str | Path | None = None,
    api_price: float | None = None,
    monthly_tokens: float | None = None,
    base_params: float | None = None,
    base_hf_config: str | Path | None = None,
    lora_epochs: float = DEFAULT_LORA_EPOCHS,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
    actual: str | Path | None = None,
) -> PlanOutput:
    """Run the planner for the CLI. Sections present in ``data``:

    * with ``actual`` (a run directory or name under runs/): only ``{"actual": ...}``;
    * otherwise the plan's keys at the top level when a model and a token count are
      known (CONFIG, or --hf-config/--params with --tokens), plus ``"sizing"`` with
      --budget/--gpu-hours and ``"decision"`` with --api-price.
    """
    given = {
        "CONFIG": config, "--params": params, "--tokens": tokens, "--hf-config": hf_config,
        "--seq-len": seq_len, "--gpu": gpu, "--num-gpus": num_gpus, "--mfu": mfu, "--price": price,
        "--micro-batch": micro_batch, "--dtype": dtype, "--strategy": strategy, "--budget": budget,
        "--gpu-hours": gpu_hours, "--data-tokens": data_tokens, "--run": run, "--api-price": api_price,
        "--monthly-tokens": monthly_tokens, "--base-params": base_params,
        "--base-hf-config": base_hf_config,
    }
    if actual is not None:
        others = [k for k, v in given.items() if v is not None]
        others += ["--checkpointing"] if checkpointing else []
        others += ["--convention"] if convention != DEFAULT_CONVENTION else []
        others += ["--lora-epochs"] if lora_epochs != DEFAULT_LORA_EPOCHS else []
        others += ["--horizon-months"] if horizon_months != DEFAULT_HORIZON_MONTHS else []
        if others or overrides:
            raise PlanError(
                f"--actual RUN compares a finished run with the plan it recorded and takes no other "
                f"planning flags (got {', '.join(others) or 'overrides'}); run it alone"
            )
        from fmforge.rundir import resolve_run

        try:
            root = resolve_run(actual).root
        except FileNotFoundError as exc:
            raise PlanError(str(exc)) from None
        cmp = compare_plan_to_actual(root)
        return PlanOutput(render_actual(cmp), {"actual": cmp})

    cfg = None
    if config is not None:
        from fmforge.config import load_config

        cfg = load_config(config, overrides)
    elif overrides:
        raise PlanError("overrides (key=value) need a CONFIG to apply to")
    for a, b in (("--hf-config", "--params"), ("--budget", "--gpu-hours"), ("--data-tokens", "--run"),
                 ("--base-params", "--base-hf-config")):
        if given[a] is not None and given[b] is not None:
            raise PlanError(f"give either {a} or {b}, not both")
    if strategy is not None and strategy not in ("ddp", "fsdp"):
        raise PlanError(f"--strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    if seq_len is not None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int):
            raise PlanError(f"--seq-len must be a whole number, got {seq_len!r}")
        require_positive("--seq-len", seq_len)
        if hf_config is None and (cfg is None or params is not None):
            raise PlanError("--seq-len needs an architecture (a CONFIG or --hf-config); "
                            "with --params alone FLOPs are 6·params and no activations are counted")

    gpu_key = gpu or (cfg.plan.gpu if cfg else "h100-sxm")
    mode = dtype or (run_dtype(cfg, gpu_key) if cfg else "bfloat16")
    try:
        hw = get_hardware(gpu_key, price if price is not None else (cfg.plan.price_per_gpu_hour if cfg else None),
                          cpu_dtype="float32" if mode == "float32" else "bfloat16")
    except HardwareError as exc:
        raise PlanError(str(exc)) from exc
    n_gpus = num_gpus if num_gpus is not None else (cfg.plan.num_gpus if cfg else 1)
    mfu_ = mfu if mfu is not None else (cfg.plan.mfu if cfg else None)

    arch = None
    seq_note = None
    if hf_config is not None:
        arch = from_hf_config(hf_config, seq_len=seq_len)
        if seq_len is None:
            seq_note = (
                f"sequence length {arch.seq_len} taken from the config's max_position_embeddings (the longest "
                "context the model supports; pretraining often ran shorter): attention FLOPs and activations "
                "grow with it; pass --seq-len for the context you will train at"
            )
    elif cfg is not None and params is None:
        arch = from_model_config(cfg.resolved_model(), seq_len=seq_len)
    n_tokens = tokens
    if n_tokens is None and cfg is not None:
        n_tokens = tokens_for_run(cfg, n_gpus)

    # The user's data: --data-tokens, else the run named by --run, else CONFIG's run dir.
    data_source = "--data-tokens" if data_tokens is not None else None
    if data_tokens is None:
        run_dir = None
        if run is not None:
            run_dir = Path(run) if Path(run).is_dir() else Path("runs") / str(run)
            if not run_dir.is_dir():
                raise PlanError(f"--run {run}: no such run directory (nor runs/{run})")
        elif cfg is not None and cfg.run_dir.is_dir():
            run_dir = cfg.run_dir
        if run_dir is not None:
            found = data_tokens_from_run(run_dir)
            if found is not None:
                data_tokens, data_source = found

    renderables: list[Any] = []
    data: dict[str, Any] = {}
    model_known = arch is not None or params is not None
    if model_known and n_tokens is not None:
        plan = make_plan(
            hw,
            tokens=n_tokens,
            arch=arch,
            params=params if arch is None else None,
            num_gpus=n_gpus,
            mfu=mfu_,
            micro_batch=micro_batch if micro_batch is not None else (cfg.train.micro_batch_size if cfg else 1),
            dtype=mode,
            checkpointing=checkpointing,
            strategy=strategy,
            convention=convention,
        )
        if seq_note is not None:
            plan["warnings"].insert(0, seq_note)
        data.update(plan)
        renderables += render_plan(plan)
    elif model_known and budget is None and gpu_hours is None and api_price is None:
        raise PlanError("give the number of training tokens (--tokens), or a CONFIG that implies it")

    if budget is not None or gpu_hours is not None:
        if mfu_ is not None:
            sizing = size_for_budget(hw, mfu_, budget_usd=budget, gpu_hours=gpu_hours,
                                     data_tokens=data_tokens, data_source=data_source)
        else:
            # the default MFU depends on the size of the model the budget buys: settle it
            m = default_mfu(data.get("params", 1e9), hw, mode)
            for _ in range(3):
                sizing = size_for_budget(hw, m, budget_usd=budget, gpu_hours=gpu_hours,
                                         data_tokens=data_tokens, data_source=data_source)
                m_next = default_mfu(sizing.options[0].params, hw, mode)
                if m_next == m:
                    break
                m = m_next
        data["sizing"] = sizing.to_dict()
        renderables += render_sizing(data["sizing"])

    if api_price is not None:
        if monthly_tokens is None:
            raise PlanError("--api-price needs --monthly-tokens (tokens a month you would buy)")
        if data_tokens is None:
            raise PlanError("the train/customize/buy comparison needs your data size: --data-tokens N or --run RUN")
        base_arch = from_hf_config(base_hf_config) if base_hf_config is not None else None
        if base_arch is not None:
            from fmforge.plan.architecture import count_params

            base_n: float = count_params(base_arch).total
        elif base_params is not None:
            base_n = base_params
        else:
            raise PlanError("the comparison needs the base model you would customize: --base-params N or --base-hf-config PATH")
        decision = compare_options(
            hw, data_tokens=data_tokens, base_params=base_n, api_price_per_m=api_price,
            monthly_tokens=monthly_tokens, num_gpus=n_gpus, budget_usd=budget, mfu=mfu_,
            base_arch=base_arch, lora_epochs=lora_epochs, horizon_months=horizon_months,
        )
        data["decision"] = decision.to_dict()
        renderables += render_decision(data["decision"])

    if not data:
        raise PlanError(
            "nothing to plan: give a CONFIG, or --params N (or --hf-config PATH) with --tokens N; "
            "--budget/--gpu-hours to size a model; --api-price with --monthly-tokens to compare "
            "train/customize/buy; or --actual RUN after a run"
        )
    return PlanOutput(renderables, data)
