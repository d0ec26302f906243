"""``fmforge plan``: the command's options in, its sections out (minus parsing).

The typer command fills one ``PlanOptions`` and prints ``PlanOutput.renderables``
(or ``json.dumps(PlanOutput.data)`` with ``--json``); a ``PlanError`` (or an
``ArchitectureError``, ``HardwareError``, ``ConfigError``) is a user error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fmforge.config import load_config
from fmforge.hardware import HardwareError, get_hardware
from fmforge.model.counting import DEFAULT_CONVENTION, count_params, from_hf_config, from_model_config
from fmforge.plan.actual import compare_customize_to_actual, compare_plan_to_actual
from fmforge.plan.decide import DEFAULT_HORIZON_MONTHS, DEFAULT_LORA_EPOCHS, compare_options
from fmforge.plan.errors import PlanError, require_positive
from fmforge.plan.estimate import make_plan, plan_run_tokens, run_dtype, settle_mfu
from fmforge.plan.quality import optimum_prediction, quality_table
from fmforge.plan.report import (render_actual, render_decision, render_ladder, render_plan, render_quality,
                                 render_sizing)
from fmforge.plan.scaling import ladder_prediction, read_ladder
from fmforge.plan.sizing import data_tokens_from_run, repetition_note, size_for_budget
from fmforge.rundir import resolve_run


@dataclass
class PlanOptions:
    """Every option of ``fmforge plan``; a field ``foo_bar`` is the flag ``--foo-bar``."""

    config: str | Path | None = None
    overrides: list[str] = field(default_factory=list)
    params: float | None = None
    tokens: float | None = None
    hf_config: str | Path | dict[str, Any] | None = None
    seq_len: int | None = None
    gpu: str | None = None
    num_gpus: int | None = None
    mfu: float | None = None
    price: float | None = None
    micro_batch: int | None = None
    dtype: str | None = None
    checkpointing: bool | None = None  # None: the config's train.activation_checkpointing
    strategy: str | None = None  # None: the config's train.parallel when it sets one, else what fits
    convention: str = DEFAULT_CONVENTION
    budget: float | None = None
    gpu_hours: float | None = None
    data_tokens: float | None = None
    run: str | Path | None = None
    api_price: float | None = None
    monthly_tokens: float | None = None
    base_params: float | None = None
    base_hf_config: str | Path | None = None
    lora_epochs: float = DEFAULT_LORA_EPOCHS
    horizon_months: int = DEFAULT_HORIZON_MONTHS
    actual: str | Path | None = None
    decide: bool = False

    def given(self) -> list[str]:
        """The flags set to something other than their default, as the user typed them."""
        defaults, positional = PlanOptions(), {"config": "CONFIG", "overrides": "overrides"}
        return [positional.get(f.name, "--" + f.name.replace("_", "-"))
                for f in fields(self) if getattr(self, f.name) != getattr(defaults, f.name)]


@dataclass
class PlanOutput:
    renderables: list[Any]  # rich renderables, in print order
    data: dict[str, Any]  # what --json prints


# flags that say the same thing two ways
EXCLUSIVE = (("--hf-config", "--params"), ("--budget", "--gpu-hours"), ("--data-tokens", "--run"),
             ("--base-params", "--base-hf-config"))


def _check(o: PlanOptions, has_config: bool) -> None:
    given = o.given()
    for a, b in EXCLUSIVE:
        if a in given and b in given:
            raise PlanError(f"give either {a} or {b}, not both")
    if o.strategy is not None and o.strategy not in ("ddp", "fsdp"):
        raise PlanError(f"--strategy must be 'ddp' or 'fsdp', got {o.strategy!r}")
    if o.seq_len is not None:
        require_positive("--seq-len", o.seq_len, whole=True)
        if o.hf_config is None and (not has_config or o.params is not None):
            raise PlanError("--seq-len needs an architecture (a CONFIG or --hf-config); "
                            "with --params alone FLOPs are 6·params and no activations are counted")


def _data_tokens(o: PlanOptions, cfg: Any) -> tuple[float | None, str | None]:
    """The user's data: --data-tokens, else the run named by --run, else CONFIG's run."""
    if o.data_tokens is not None:
        return o.data_tokens, "--data-tokens"
    run_dir = None
    if o.run is not None:
        run_dir = Path(o.run) if Path(o.run).is_dir() else Path("runs") / str(o.run)
        if not run_dir.is_dir():
            raise PlanError(f"--run {o.run}: no such run directory (nor runs/{o.run})")
    elif cfg is not None and cfg.run_dir.is_dir():
        run_dir = cfg.run_dir
    found = data_tokens_from_run(run_dir) if run_dir is not None else None
    return found if found is not None else (None, None)


def plan_command(o: PlanOptions) -> PlanOutput:
    """Sections in ``data``: with ``actual`` only ``{"actual": ...}``; otherwise the
    plan's keys at the top level when a model and a token count are known, plus
    ``"sizing"`` with --budget/--gpu-hours and ``"decision"`` with --api-price."""
    if o.actual is not None:
        others = [g for g in o.given() if g != "--actual"]
        if others:
            raise PlanError(f"--actual RUN compares a finished run with the plan it recorded and takes no other "
                            f"planning flags (got {', '.join(others)}); run it alone")
        try:
            root = resolve_run(o.actual).root
        except FileNotFoundError as exc:
            raise PlanError(str(exc)) from None
        data, shown = {}, []
        if (root / "finetune" / "summary.json").is_file():  # a customized model: the customize row
            data["customize"] = compare_customize_to_actual(root)
            shown += render_actual(data["customize"])
        if (root / "plan.json").is_file() or not data:
            data["actual"] = compare_plan_to_actual(root)
            shown = render_actual(data["actual"]) + shown
        return PlanOutput(shown, data)

    if o.overrides and o.config is None:
        raise PlanError("overrides (key=value) need a CONFIG to apply to")
    cfg = load_config(o.config, o.overrides) if o.config is not None else None
    if cfg is not None and cfg.model.auto:  # the model a run of this config would train
        from fmforge.plan.autosize import resolve_auto_model

        cfg = resolve_auto_model(cfg)[0]
    _check(o, cfg is not None)
    gpu_key = o.gpu or (cfg.plan.gpu if cfg else "h100-sxm")
    mode = o.dtype or (run_dtype(cfg, gpu_key) if cfg else "bfloat16")
    try:
        hw = get_hardware(gpu_key, o.price if o.price is not None else (cfg.plan.price_per_gpu_hour if cfg else None),
                          cpu_dtype="float32" if mode == "float32" else "bfloat16")
    except HardwareError as exc:
        raise PlanError(str(exc)) from exc
    n_gpus = o.num_gpus if o.num_gpus is not None else (cfg.plan.num_gpus if cfg else 1)
    mfu = o.mfu if o.mfu is not None else (cfg.plan.mfu if cfg else None)
    arch, seq_note = None, None
    if o.hf_config is not None:
        arch = from_hf_config(o.hf_config, seq_len=o.seq_len)
        if o.seq_len is None:
            seq_note = (f"sequence length {arch.seq_len} taken from the config's max_position_embeddings (the longest "
                        "context the model supports; pretraining often ran shorter): attention FLOPs and activations "
                        "grow with it; pass --seq-len for the context you will train at")
    elif cfg is not None and o.params is None:
        arch = from_model_config(cfg.resolved_model(), seq_len=o.seq_len)
    data_tokens, data_source = _data_tokens(o, cfg)
    # The run the config describes, unless a flag says otherwise.
    checkpointing = o.checkpointing if o.checkpointing is not None else bool(
        cfg is not None and cfg.train.activation_checkpointing)
    strategy, shard_group, hsdp_note = o.strategy, None, None
    if strategy is None and cfg is not None and "parallel" in cfg.train.model_fields_set \
            and cfg.train.parallel in ("ddp", "fsdp"):
        strategy = cfg.train.parallel
    if strategy is None and cfg is not None and cfg.train.parallel == "hsdp":
        shard_group, hsdp_note = hsdp_shard_group(cfg.train.replicate_degree, n_gpus)

    def plan_at(tokens: float) -> dict[str, Any]:
        return make_plan(
            hw, tokens=tokens, arch=arch, params=o.params if arch is None else None, num_gpus=n_gpus, mfu=mfu,
            micro_batch=o.micro_batch if o.micro_batch is not None else (cfg.train.micro_batch_size if cfg else 1),
            dtype=mode, checkpointing=checkpointing, strategy=strategy, convention=o.convention,
            shard_group=shard_group)

    renderables: list[Any] = []
    data: dict[str, Any] = {}
    model_known = arch is not None or o.params is not None
    if model_known and (o.tokens is not None or cfg is not None):
        data.update(plan_at(o.tokens) if o.tokens is not None else plan_run_tokens(cfg, n_gpus, plan_at))
        if seq_note is not None:
            data["warnings"].insert(0, seq_note)
        if hsdp_note is not None:
            data["warnings"].insert(0, hsdp_note)
        renderables += render_plan(data)
    elif model_known and o.budget is None and o.gpu_hours is None and o.api_price is None:
        raise PlanError("give the number of training tokens (--tokens), or a CONFIG that implies it")

    if o.budget is not None or o.gpu_hours is not None:
        def sizing_at(m: float):
            return size_for_budget(hw, m, budget_usd=o.budget, gpu_hours=o.gpu_hours,
                                   data_tokens=data_tokens, data_source=data_source)
        # the default MFU depends on the size of the model the budget buys
        m = mfu or settle_mfu(lambda m: sizing_at(m).options[0].params, hw, mode, data.get("params", 1e9))
        data["sizing"] = sizing_at(m).to_dict()
        renderables += render_sizing(data["sizing"])

    ladder = read_ladder(cfg.run_dir) if cfg is not None else None
    if ladder is not None:
        data["ladder"] = ladder_section(ladder, cfg, data, data_tokens)
        renderables += render_ladder(data["ladder"])

    if o.decide:
        if cfg is None:
            raise PlanError("--decide compares what was measured and predicted for a run: give its CONFIG")
        data["quality"] = quality_table(cfg.run_dir, cfg, data, hw, o.monthly_tokens, data_tokens)
        renderables += render_quality(data["quality"])

    if o.api_price is not None:
        if o.monthly_tokens is None:
            raise PlanError("--api-price needs --monthly-tokens (tokens a month you would buy)")
        if data_tokens is None:
            raise PlanError("the train/customize/buy comparison needs your data size: --data-tokens N or --run RUN")
        base_arch = from_hf_config(o.base_hf_config) if o.base_hf_config is not None else None
        base_n = count_params(base_arch).total if base_arch is not None else o.base_params
        if base_n is None:
            raise PlanError("the comparison needs the base model you would customize: "
                            "--base-params N or --base-hf-config PATH")
        decision = compare_options(
            hw, data_tokens=data_tokens, base_params=base_n, api_price_per_m=o.api_price,
            monthly_tokens=o.monthly_tokens, num_gpus=n_gpus, budget_usd=o.budget, mfu=mfu,
            base_arch=base_arch, lora_epochs=o.lora_epochs, horizon_months=o.horizon_months)
        data["decision"] = decision.to_dict()
        renderables += render_decision(data["decision"])

    if not data:
        raise PlanError(
            "nothing to plan: give a CONFIG, or --params N (or --hf-config PATH) with --tokens N; "
            "--budget/--gpu-hours to size a model; --api-price with --monthly-tokens to compare "
            "train/customize/buy; or --actual RUN after a run")
    return PlanOutput(renderables, data)


def ladder_section(ladder: dict[str, Any], cfg: Any, data: dict[str, Any],
                   data_tokens: float | None = None) -> dict[str, Any]:
    """What the run's own ladder (``fmforge ladder``) predicts: held-out bits per
    byte of the config's model at its planned tokens, and, with a budget, of the
    model the law finds best for that compute (among real shapes, in real FLOPs);
    a warning where either would repeat ``data_tokens`` more than a few times."""
    from fmforge.model.counting import count_parameters

    n = count_parameters(cfg.resolved_model()).non_embedding
    out: dict[str, Any] = {"law": ladder["law"], "form": ladder.get("form"),
                           "warnings": ladder.get("warnings", []),
                           "rungs": len(ladder.get("rungs", [])),
                           "planned": ladder_prediction(ladder, n, data.get("tokens"))}
    compute = (data.get("sizing") or {}).get("compute_flops")
    if compute:
        out["optimum"] = optimum_prediction(ladder, compute, cfg.resolved_model())
    bt = ladder.get("backtest")
    if bt:  # shown beside the intervals: each is at least this error, scaled to its reach
        out["notes"] = [f"backtest: the law fitted without its largest rung ({bt.get('rung', 'the largest')}) "
                        f"predicted it at {bt['predicted']:.3f} bits/byte, measured {bt['measured']:.3f} "
                        f"({bt['error']:+.1%}); each interval is at least that wide, more the further it "
                        "reaches beyond the rungs"]
    for label in ("planned", "optimum"):
        what = "the config's model" if label == "planned" else "the budget optimum"
        own = list((out.get(label) or {}).get("warnings") or [])  # the ladder's, about this prediction
        out["warnings"] = out["warnings"] + [f"{what}: {w}" for w in own if w not in out["warnings"]]
        note = repetition_note(out.get(label, {}).get("tokens") or 0.0, data_tokens, what)
        if note and not any(("epoch" in w or "repeat" in w) for w in own):
            out["warnings"] = out["warnings"] + [note]
        far = out.get(label, {}).get("extrapolation")
        if far is not None and far > MAX_TRUSTED_EXTRAPOLATION:
            out["warnings"] = out["warnings"] + [
                f"the {'config' if label == 'planned' else 'budget optimum'} is {far:.3g}x the largest rung: "
                f"beyond {MAX_TRUSTED_EXTRAPOLATION:g}x a ladder's law is a guess (docs/planner.md); "
                "add a larger rung"]
    return out


# How far beyond its largest rung a ladder's prediction is shown without a warning
# (docs/planner.md gives the measured error at 2x).
MAX_TRUSTED_EXTRAPOLATION = 4.0



# A node of the GPUs the planner prices (H100/A100/H200 servers): where HSDP's
# default of one replica a node puts the boundary when the config does not say.
GPUS_PER_NODE = 8


def hsdp_shard_group(replicate_degree: int | None, num_gpus: int) -> tuple[int, str]:
    """GPUs per HSDP replica for ``train.parallel: hsdp`` on ``num_gpus``, and a note
    saying how the planner split them."""
    replicas = replicate_degree or max(1, num_gpus // GPUS_PER_NODE)
    if num_gpus % replicas:
        raise PlanError(f"train.replicate_degree={replicas} does not divide {num_gpus} GPUs into equal "
                        "replicas: choose a divisor of the GPU count")
    group = num_gpus // replicas
    how = ("train.replicate_degree" if replicate_degree
           else f"one replica per node of {GPUS_PER_NODE} GPUs; set train.replicate_degree otherwise")
    return group, (f"hsdp: {replicas} replica(s) × {group} GPUs ({how}); memory per GPU is FSDP's "
                   f"over the {group} GPUs of one replica")
