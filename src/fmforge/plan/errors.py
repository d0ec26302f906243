"""The planner's one error type, and the check every numeric input goes through."""

from __future__ import annotations

from fmforge.errors import UserError


class PlanError(UserError, ValueError):
    """Input the planner cannot price: says what was wrong and what to do."""


def require_positive(name: str, value: float | int | None, *, allow_zero: bool = False, whole: bool = False) -> None:
    """Raise PlanError unless ``value`` is a positive (or, if allowed, zero) number,
    and a whole one if ``whole``; None (not given) passes unless ``whole``."""
    if whole and (isinstance(value, bool) or not isinstance(value, int)):
        raise PlanError(f"{name} must be a whole number, got {value!r}")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{name} must be a number, got {value!r}")
    if value != value:  # NaN
        raise PlanError(f"{name} must be a number, got NaN")
    if value in (float("inf"), float("-inf")):
        raise PlanError(f"{name} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise PlanError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value:g}")
