"""Fitting L(N, D) = E + A/N^α + B/D^β to a ladder's rungs, the careful way
(Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"): the
Huber loss (δ = 1e-3) between log L and log of the law written as
LSE(a − α·log N, b − β·log D, e), with A = e^a, B = e^b, E = e^e, minimised by
L-BFGS from every start of a grid, keeping the best; intervals from refitting
bootstrap resamples of the rungs.

When every rung follows one tokens-per-parameter rule, the one-variable law
L(N) = E + A/N^α is fitted instead (N and D move together: B/D^β is folded into
A/N^α and cannot be told apart from it).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from fmforge.plan.scaling import ScalingLaw

HUBER_DELTA = 1e-3
# Starts for (α, β), e and (a, b): a coarser version of Besiroglu et al.'s grid,
# enough for the few, smooth points a ladder has.
GRID_EXPONENTS = (0.2, 0.5, 1.0)
GRID_E = (-1.0, 0.0, 1.0)
GRID_LOG_COEF = (1.0, 5.0, 10.0)


@dataclass(frozen=True)
class Point:
    params: float  # N
    tokens: float  # D
    loss: float  # measured (bits per byte)


def _objective(theta: torch.Tensor, log_n: torch.Tensor, log_d: torch.Tensor | None,
               log_l: torch.Tensor) -> torch.Tensor:
    if log_d is None:
        a, e, alpha = theta
        terms = torch.stack([a - alpha * log_n, e.expand_as(log_n)])
    else:
        a, b, e, alpha, beta = theta
        terms = torch.stack([a - alpha * log_n, b - beta * log_d, e.expand_as(log_n)])
    pred = torch.logsumexp(terms, dim=0)
    return torch.nn.functional.huber_loss(pred, log_l, delta=HUBER_DELTA, reduction="sum")


def _minimise(start: Sequence[float], log_n, log_d, log_l) -> tuple[float, list[float]]:
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = _objective(theta, log_n, log_d, log_l)
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        value = float(_objective(theta, log_n, log_d, log_l))
    return value, theta.detach().tolist()


def _law(theta: Sequence[float], tokens_per_param: float | None) -> ScalingLaw:
    if tokens_per_param is not None:
        a, e, alpha = theta
        return ScalingLaw(E=math.exp(e), A=math.exp(a), alpha=alpha, tokens_per_param=tokens_per_param)
    a, b, e, alpha, beta = theta
    return ScalingLaw(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def shared_rule(points: Sequence[Point], rel_tol: float = 0.05) -> float | None:
    """The tokens-per-parameter ratio every point shares (within ``rel_tol``), else None."""
    ratios = [p.tokens / p.params for p in points]
    mean = sum(ratios) / len(ratios)
    return mean if all(abs(r - mean) <= rel_tol * mean for r in ratios) else None


def _tensors(points: Sequence[Point], one_variable: bool):
    log_n = torch.tensor([math.log(p.params) for p in points], dtype=torch.float64)
    log_d = None if one_variable else torch.tensor([math.log(p.tokens) for p in points], dtype=torch.float64)
    log_l = torch.tensor([math.log(p.loss) for p in points], dtype=torch.float64)
    return log_n, log_d, log_l


def _check(points: Sequence[Point]) -> None:
    if len({p.params for p in points}) < 3:
        raise ValueError(f"a scaling law needs rungs of at least 3 sizes, got {len({p.params for p in points})}")
    for p in points:
        if not (p.params > 0 and p.tokens > 0 and p.loss > 0 and math.isfinite(p.loss)):
            raise ValueError(f"a rung needs positive, finite N, D and loss; got {p}")


def fit_law(points: Sequence[Point], tokens_per_param: float | None = None,
            starts: Sequence[Sequence[float]] | None = None) -> tuple[ScalingLaw, list[float], float]:
    """The best fit over the grid of starts (or ``starts``). ``tokens_per_param``
    fits the one-variable law; None fits L(N, D) unless all points share a rule,
    in which case the one-variable law is fitted at that rule. Returns the law,
    its raw parameters (for warm starts) and the objective."""
    _check(points)
    if tokens_per_param is None:
        tokens_per_param = shared_rule(points)
    one = tokens_per_param is not None
    log_n, log_d, log_l = _tensors(points, one)
    if starts is None:
        if one:
            starts = [(a, e, al) for a in GRID_LOG_COEF for e in GRID_E for al in GRID_EXPONENTS]
        else:
            starts = [(a, b, e, al, be) for a in GRID_LOG_COEF for b in GRID_LOG_COEF for e in GRID_E
                      for al in GRID_EXPONENTS for be in GRID_EXPONENTS]
    # Every start descends at once (Adam's steps are per coordinate, so the starts
    # do not interact), then L-BFGS polishes the few best: the grid costs about
    # as much as a handful of single fits.
    if len(starts) > POLISH:
        starts = _screen(starts, log_n, log_d, log_l)
    best: tuple[float, list[float]] | None = None
    for start in starts:
        value, theta = _minimise(start, log_n, log_d, log_l)
        if math.isfinite(value) and all(math.isfinite(t) for t in theta) and (best is None or value < best[0]):
            best = (value, theta)
    if best is None:
        raise ValueError("the scaling-law fit did not converge from any start")
    return _law(best[1], tokens_per_param), best[1], best[0]


POLISH = 8


def _screen(starts, log_n, log_d, log_l, steps: int = 300) -> list[list[float]]:
    """The ``POLISH`` starts that are best after a few hundred batched Adam steps."""
    theta = torch.tensor(starts, dtype=torch.float64, requires_grad=True)  # (S, k)
    opt = torch.optim.Adam([theta], lr=0.05)

    def per_start():
        if log_d is None:
            terms = torch.stack([theta[:, :1] - theta[:, 2:3] * log_n,
                                 theta[:, 1:2].expand(-1, len(log_n))], dim=0)
        else:
            terms = torch.stack([theta[:, :1] - theta[:, 3:4] * log_n,
                                 theta[:, 1:2] - theta[:, 4:5] * log_d,
                                 theta[:, 2:3].expand(-1, len(log_n))], dim=0)
        pred = torch.logsumexp(terms, dim=0)  # (S, P)
        err = torch.nn.functional.huber_loss(pred, log_l.expand_as(pred), delta=HUBER_DELTA,
                                             reduction="none")
        return err.sum(dim=1)

    for _ in range(steps):
        opt.zero_grad()
        per_start().sum().backward()
        opt.step()
    with torch.no_grad():
        values = per_start()
    values = torch.where(torch.isfinite(values), values, torch.full_like(values, math.inf))
    order = torch.argsort(values)[:POLISH]
    return theta.detach()[order].tolist()


def bootstrap(points: Sequence[Point], theta: Sequence[float], tokens_per_param: float | None,
              samples: int = 200, seed: int = 0) -> list[ScalingLaw]:
    """Fits to ``samples`` resamples of the rungs (with replacement), each
    started from the full fit ``theta``. A resample with no more distinct points
    than the law has parameters is skipped: the law passes through such points
    exactly, and its spread would say nothing. So a ladder needs two rungs more
    than the law has parameters (5 for L(N), 7 for L(N, D)) for an interval."""
    rng = random.Random(seed)
    needed = (3 if tokens_per_param is not None else 5) + 1
    if len({(p.params, p.tokens) for p in points}) <= needed:
        return []  # every usable resample would be the rungs themselves: no spread to measure
    laws = []
    for _ in range(samples):
        sample = [rng.choice(points) for _ in points]
        if len({(p.params, p.tokens) for p in sample}) < needed:
            continue
        law, _, _ = fit_law(sample, tokens_per_param, starts=[theta])
        laws.append(law)
    return laws
