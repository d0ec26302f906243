"""The planner: what a run will cost before it starts, what it cost after, and
whether to train, customize or buy. See README_SECTION.md for every formula."""

from fmforge.plan.actual import compare_plan_to_actual
from fmforge.plan.architecture import (
    Architecture,
    count_params,
    from_hf_config,
    from_model_config,
    lora_flops_per_token,
    train_flops_per_token,
)
from fmforge.plan.compute import default_mfu, estimate_compute, implied_mfu
from fmforge.plan.decide import compare_options
from fmforge.plan.errors import PlanError
from fmforge.plan.estimate import make_plan, plan_for_run
from fmforge.hardware import Hardware, get_hardware, known_hardware, measure_cpu_peak_flops
from fmforge.plan.memory import estimate_memory, max_micro_batch, min_gpus
from fmforge.plan.sizing import data_tokens_from_run, size_for_budget

__all__ = [
    "Architecture",
    "Hardware",
    "PlanError",
    "compare_options",
    "compare_plan_to_actual",
    "count_params",
    "data_tokens_from_run",
    "default_mfu",
    "estimate_compute",
    "estimate_memory",
    "from_hf_config",
    "from_model_config",
    "get_hardware",
    "implied_mfu",
    "known_hardware",
    "lora_flops_per_token",
    "make_plan",
    "max_micro_batch",
    "measure_cpu_peak_flops",
    "min_gpus",
    "plan_for_run",
    "size_for_budget",
    "train_flops_per_token",
]
