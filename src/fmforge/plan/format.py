"""How the planner writes numbers for people: counts, dollars, hours, durations."""

from __future__ import annotations


def count(x: float | None, digits: int = 3) -> str:
    """1.23B, 456M, 7.8k: a count with its magnitude as a suffix."""
    if x is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def usd(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"${x:,.0f}"
    if x == 0 or abs(x) >= 0.01:
        return f"${x:,.2f}"
    return f"${x:.2g}"  # a fraction of a cent: show it, not "$0.00"


def hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 10 else f"{h:.3g}"


def duration(h: float) -> str:
    """Wall-clock time in the unit a reader expects: days, hours, minutes or seconds."""
    if h >= 48:
        return f"{h / 24:,.1f} days ({h:,.0f} h)"
    if h >= 1:
        return f"{h:.1f} h"
    if h * 60 >= 1:
        return f"{h * 60:.1f} min"
    return f"{h * 3600:.3g} s"


def months(m: float) -> str:
    if m >= 1:
        return f"{m:.1f} months"
    return f"{m * 30:.0f} days" if m * 30 >= 1 else "under a day"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}%"
