"""When is a difference between two data variants real? The seed-to-seed spread of
the proxies, measured in the experiment itself, decides.

Every variant trains the same proxy model with the same ``S`` seeds. The
spread of one proxy's target bits per byte over seeds is pooled over all
variants (the within-variant variance, each variant's squared deviations from
its own mean over their degrees of freedom, ``sum(S_v - 1)``): ``seed_sd``. A
difference of two variants' means over ``S`` seeds each has a standard error of
``seed_sd * sqrt(2 / S)``; it is called only beyond Student's t (two-sided 95%,
the pooled degrees of freedom) times that: the ``threshold``. A result is given
as "N x the seed noise", N = |difference| / seed_sd.

Nothing within the threshold is ranked: such a variant is "within noise" of
the base, and ``best`` is the variant that beats the base beyond the threshold
and every other such variant beyond it too (else none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

# Student's t quantiles, the one home of them in fmforge (the ladder's intervals use
# the 0.95 one, the data-mixture verdicts the 0.975 one): published tables for 1..10
# degrees of freedom; beyond, the Cornish-Fisher expansion in 1/dof about the normal
# quantile, three terms, within 1e-3 of the exact value from 11 on.
_T_TABLE = {0.95: (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812),
            0.975: (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)}
_Z = {0.95: 1.644854, 0.975: 1.959964}


def t_quantile(q: float, dof: int) -> float:
    """The ``q`` quantile (0.95 or 0.975) of Student's t with ``dof`` degrees of freedom."""
    if q not in _T_TABLE:
        raise ValueError(f"Student's t is tabulated here for the 0.95 and 0.975 quantiles, not {q}")
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    if dof <= len(_T_TABLE[q]):
        return _T_TABLE[q][dof - 1]
    z = _Z[q]
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))


def t975(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom."""
    return t_quantile(0.975, dof)


@dataclass(frozen=True)
class Noise:
    seed_sd: float  # pooled seed-to-seed standard deviation of one proxy's figure
    dof: int
    seeds: int
    t: float
    threshold: float  # the smallest difference of two variants' means that is called

    @property
    def method(self) -> str:
        return (f"pooled within-variant standard deviation over seeds ({self.dof} degrees of freedom); a "
                f"difference of two means over {self.seeds} seeds is called beyond t(0.975, {self.dof}) = "
                f"{self.t:.3f} times its standard error, seed_sd x sqrt(2/{self.seeds})")

    def to_dict(self) -> dict[str, Any]:
        return {"seed_sd": self.seed_sd, "threshold": self.threshold, "dof": self.dof, "t": self.t,
                "method": self.method}

    def times(self, delta: float) -> float | None:
        """|delta| in units of the seed noise (None when the seeds did not differ at all)."""
        return abs(delta) / self.seed_sd if self.seed_sd > 0 else None

    def beyond(self, delta: float) -> bool:
        return abs(delta) > self.threshold


def pooled_noise(groups: Sequence[Sequence[float]]) -> Noise:
    """The noise of ``groups`` (one list of per-seed figures per variant, each of
    the same length ``S`` >= 2)."""
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError(f"every variant needs the same number (>= 2) of seeds; got {sorted(sizes)}")
    seeds = sizes.pop()
    squares = sum(sum((x - sum(g) / len(g)) ** 2 for x in g) for g in groups)
    dof = sum(len(g) - 1 for g in groups)
    sd = math.sqrt(squares / dof)
    t = t975(dof)
    return Noise(seed_sd=sd, dof=dof, seeds=seeds, t=t, threshold=t * sd * math.sqrt(2 / seeds))


def verdict(delta: float, noise: Noise) -> str:
    """A variant's verdict against the base (delta = its bits per byte minus the base's)."""
    if not noise.beyond(delta):
        return "within noise"
    return "better" if delta < 0 else "worse"


def pick_best(rows: Sequence[dict[str, Any]], noise: Noise) -> tuple[str | None, list[str]]:
    """The variant that beats the base beyond the noise and every other such
    variant beyond it too, and a warning when two or more beat the base but not
    each other (then none is named)."""
    better = sorted((r for r in rows if r["verdict"] == "better"), key=lambda r: r["bits_per_byte"])
    if not better:
        return None, []
    top = better[0]
    tied = [r["name"] for r in better[1:] if not noise.beyond(r["bits_per_byte"] - top["bits_per_byte"])]
    if tied:
        names = ", ".join([top["name"], *tied])
        return None, [f"{names} each beat the base beyond the seed noise but not each other: none is named "
                      "best; choose by other reasons, or rerun with more seeds (--seeds)"]
    return top["name"], []


def source_worth(base: dict[str, Any], ablated: dict[str, Any], noise: Noise,
                 contribution: dict[str, int]) -> dict[str, Any]:
    """One source's worth, from the variant without it: ``effect`` = target bits
    per byte without the source minus the base's (> 0: the source helps the
    target), and the same on each source's held-out part."""
    effect = ablated["bits_per_byte"] - base["bits_per_byte"]
    called = noise.beyond(effect)
    return {"source": ablated["removed_source"], "bytes": contribution["bytes"],
            "tokens": contribution["tokens"], "effect": effect, "effect_over_noise": noise.times(effect),
            "verdict": ("helps" if effect > 0 else "hurts") if called else "within noise",
            "per_source_effect": {s: ablated["per_source"][s] - b for s, b in base["per_source"].items()
                                  if s in ablated["per_source"]}}
