"""The planner: what a run will cost before it starts, what it cost after, and
whether to train, customize or buy. docs/planner.md has every formula and key.

    estimate.py  one training run: FLOPs, time, money, memory (make_plan, plan_for_run)
    memory.py    memory per device, fewest devices, largest micro-batch
    sizing.py    what model a budget buys; the data a run has
    decide.py    train vs customize (LoRA) vs buy
    actual.py    plan versus what a finished run measured
    report.py    rich tables of each;  format.py  numbers for people
    command.py   `fmforge plan`: options in, sections out
Parameter and FLOPs counts live in fmforge.model.counting, devices in fmforge.hardware.
"""

from fmforge.plan.actual import compare_plan_to_actual
from fmforge.plan.decide import compare_options
from fmforge.plan.errors import PlanError
from fmforge.plan.estimate import default_mfu, implied_mfu, make_plan, plan_for_run
from fmforge.plan.memory import estimate_memory, max_micro_batch, min_gpus
from fmforge.plan.sizing import data_tokens_from_run, size_for_budget

__all__ = [
    "PlanError", "compare_options", "compare_plan_to_actual", "data_tokens_from_run", "default_mfu",
    "estimate_memory", "implied_mfu", "make_plan", "max_micro_batch", "min_gpus", "plan_for_run",
    "size_for_budget",
]
