"""The planner's one error type."""

from __future__ import annotations


class PlanError(ValueError):
    """Input the planner cannot price: says what was wrong and what to do."""


def require_positive(name: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    """Raise PlanError unless ``value`` is a positive (or, if allowed, zero) number."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{name} must be a number, got {value!r}")
    if value != value:  # NaN
        raise PlanError(f"{name} must be a number, got NaN")
    if value in (float("inf"), float("-inf")):
        raise PlanError(f"{name} must be a finite number, got {value}")
    if allow_zero:
        if value < 0:
            raise PlanError(f"{name} must be >= 0, got {value:g}")
    elif value <= 0:
        raise PlanError(f"{name} must be > 0, got {value:g}")
