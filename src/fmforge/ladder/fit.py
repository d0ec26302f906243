"""Fitting L(N, D) = E + A/N^α + B/D^β to a ladder's rungs, the careful way
(Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"): the
Huber loss (δ = 1e-3) between log L and log of the law written as
LSE(a − α·log N, b − β·log D, e), with A = e^a, B = e^b, E = e^e, minimised by
Levenberg-Marquardt from every start of a grid, keeping the best. Intervals come
from a parametric bootstrap: the rungs' noise, estimated from the fit's residuals
and widened for the few degrees of freedom a ladder has, is drawn again many
times and each draw is fitted exactly as the point fit is (the whole grid).

When every rung follows one tokens-per-parameter rule, the one-variable law
L(N) = E + A/N^α is fitted instead (N and D move together: B/D^β is folded into
A/N^α and cannot be told apart from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from fmforge.ladder.noise import t_quantile
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


def _starts(one: bool) -> list[tuple[float, ...]]:
    if one:
        return [(a, e, al) for a in GRID_LOG_COEF for e in GRID_E for al in GRID_EXPONENTS]
    return [(a, b, e, al, be) for a in GRID_LOG_COEF for b in GRID_LOG_COEF for e in GRID_E
            for al in GRID_EXPONENTS for be in GRID_EXPONENTS]


def fit_law(points: Sequence[Point], tokens_per_param: float | None = None,
            starts: Sequence[Sequence[float]] | None = None) -> tuple[ScalingLaw, list[float], float]:
    """The best fit over the grid of starts (or ``starts``). ``tokens_per_param``
    fits the one-variable law; None fits L(N, D) unless all points share a rule,
    in which case the one-variable law is fitted at that rule. Returns the law,
    its raw parameters and the objective."""
    _check(points)
    if tokens_per_param is None:
        tokens_per_param = shared_rule(points)
    one = tokens_per_param is not None
    log_n, log_d, log_l = _tensors(points, one)
    thetas, values = _fit_batch(log_n[None], None if log_d is None else log_d[None], log_l[None],
                                starts if starts is not None else _starts(one))
    theta, value = thetas[0].tolist(), float(values[0])
    if not math.isfinite(value):
        raise ValueError("the scaling-law fit did not converge from any start")
    return _law(theta, tokens_per_param), theta, value


# Every start of the grid takes SCREEN_STEPS steps; the KEEP best of each data set
# go on to DESCENT_STEPS at most, stopping once all of them have settled.
SCREEN_STEPS = 25
KEEP = 4
DESCENT_STEPS = 200


def _predict(theta: torch.Tensor, log_n: torch.Tensor, log_d: torch.Tensor | None):
    """log L and its Jacobian for parameters ``theta`` (..., k) and data (..., P)."""
    if log_d is None:
        a, e, alpha = theta.unbind(-1)
        t_n = a[..., None] - alpha[..., None] * log_n
        terms = torch.stack([t_n, e[..., None].expand_as(t_n)])
        s = torch.softmax(terms, dim=0)
        jac = torch.stack([s[0], s[1], -s[0] * log_n.expand_as(t_n)], dim=-1)
    else:
        a, b, e, alpha, beta = theta.unbind(-1)
        t_n = a[..., None] - alpha[..., None] * log_n
        t_d = b[..., None] - beta[..., None] * log_d
        terms = torch.stack([t_n, t_d, e[..., None].expand_as(t_n)])
        s = torch.softmax(terms, dim=0)
        jac = torch.stack([s[0], s[1], s[2], -s[0] * log_n.expand_as(t_n), -s[1] * log_d.expand_as(t_n)], dim=-1)
    return torch.logsumexp(terms, dim=0), jac


def _huber(r: torch.Tensor) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (a - 0.5 * HUBER_DELTA)).sum(-1)


def _fit_batch(log_n: torch.Tensor, log_d: torch.Tensor | None, log_l: torch.Tensor,
               starts: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit R data sets at once, each exactly as a single fit: from every start of
    the grid, Levenberg-Marquardt on the Huber loss (Gauss-Newton with the Huber
    weights, all starts of all data sets batched: none interacts with another),
    the ``KEEP`` best of each set on to convergence, the best of those kept. Data (R, P); returns parameters (R, k) and objectives (R,)."""
    # Tensors of a few thousand numbers: more threads only add synchronisation (on
    # a loaded 2-core machine, 60 ms a step instead of under 1 ms).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_batch_one_thread(log_n, log_d, log_l, starts)
    finally:
        torch.set_num_threads(threads)


def _fit_batch_one_thread(log_n, log_d, log_l, starts) -> tuple[torch.Tensor, torch.Tensor]:
    R, S = log_l.shape[0], len(starts)
    theta = torch.tensor(starts, dtype=torch.float64)[None].repeat(R, 1, 1)  # (R, S, k)
    ln, ll = log_n[:, None, :], log_l[:, None, :]
    ld = None if log_d is None else log_d[:, None, :]
    theta, values = _descend(theta, ln, ld, ll, SCREEN_STEPS, settle=False)
    if S > KEEP:  # the few best starts of each data set descend to the end
        values = torch.where(torch.isfinite(values), values, torch.full_like(values, math.inf))
        order = torch.argsort(values, dim=1)[:, :KEEP]
        theta = torch.gather(theta, 1, order[..., None].expand(-1, -1, theta.shape[-1]))
        ln, ll = ln.expand(-1, KEEP, -1), ll.expand(-1, KEEP, -1)
        ld = None if ld is None else ld.expand(-1, KEEP, -1)
    theta, values = _descend(theta, ln, ld, ll, DESCENT_STEPS, settle=True)
    best = torch.argmin(values, dim=1)
    idx = torch.arange(R)
    return theta[idx, best], values[idx, best]


def _descend(theta: torch.Tensor, log_n, log_d, log_l, steps: int,
             settle: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt on the Huber loss, every start of every data set at once:
    a step is taken where it lowers the loss (then the damping falls), else the
    damping rises."""
    k = theta.shape[-1]
    eye = torch.eye(k, dtype=theta.dtype)
    with torch.no_grad():
        pred, jac = _predict(theta, log_n, log_d)
        value = _huber(pred - log_l)
        value = torch.where(torch.isfinite(value), value, torch.full_like(value, math.inf))
        lam = torch.full_like(value, 1e-3)
        before = value
        for step_no in range(1, steps + 1):
            if settle and step_no % 10 == 0:  # every descent has settled: stop early
                gain = torch.where(torch.isfinite(before), before - value, torch.ones_like(value))
                if bool((gain <= 1e-10 * (1e-6 + value)).all()):
                    break
                before = value
            r = pred - log_l
            w = torch.where(r.abs() <= HUBER_DELTA, torch.ones_like(r), HUBER_DELTA / r.abs().clamp_min(1e-300))
            grad = (jac * (w * r)[..., None]).sum(-2)
            hess = jac.transpose(-1, -2) @ (jac * w[..., None])
            damped = hess + lam[..., None, None] * (torch.diag_embed(torch.diagonal(hess, dim1=-2, dim2=-1))
                                                    + 1e-12 * eye)
            step = torch.linalg.solve_ex(damped, -grad[..., None])[0][..., 0]
            step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
            trial = theta + step
            t_pred, t_jac = _predict(trial, log_n, log_d)
            t_value = _huber(t_pred - log_l)
            better = torch.isfinite(t_value) & (t_value < value)
            theta = torch.where(better[..., None], trial, theta)
            pred = torch.where(better[..., None], t_pred, pred)
            jac = torch.where(better[..., None, None], t_jac, jac)
            value = torch.where(better, t_value, value)
            lam = torch.where(better, lam / 3, lam * 4).clamp(1e-12, 1e12)
    return theta, value


_Z95 = 1.6449


def t95(dof: int) -> float:
    """The 0.95 quantile of Student's t with ``dof`` degrees of freedom."""
    return t_quantile(0.95, dof)


def residual_noise(points: Sequence[Point], law: ScalingLaw) -> tuple[float, int]:
    """The rungs' noise as the law sees it: the root mean square of log(measured /
    fitted) over the degrees of freedom left (points less the law's parameters),
    and that number of degrees of freedom."""
    k = 3 if law.one_variable else 5
    dof = len(points) - k
    if dof <= 0:
        return math.nan, dof
    rss = sum(math.log(p.loss / law.predict(p.params, None if law.one_variable else p.tokens)) ** 2
              for p in points)
    return math.sqrt(rss / dof), dof


def bootstrap(points: Sequence[Point], law: ScalingLaw, samples: int = 200, seed: int = 0,
              noise_floor: float = 0.0) -> tuple[list[ScalingLaw], float]:
    """Fits to ``samples`` parametric resamples: the fitted law at the rungs' own
    sizes, times exp(σ·ε) with ε standard normal, each fitted from the whole grid
    as the point fit is. σ is the residual noise widened by Student's t over the
    normal quantile for its few degrees of freedom (so the 90% band holds with an
    estimated σ, not only a known one), and never below ``noise_floor`` (a measured
    seed-to-seed noise: a ladder cannot be more precise than that). The rungs stay
    the rungs: no resample loses a size, so none is dropped. A ladder needs two
    rungs more than the law has parameters (5 for L(N), 7 for L(N, D)): with fewer
    the noise cannot be estimated and no interval is returned. Returns the fits and
    the σ used."""
    sigma, dof = residual_noise(points, law)
    if dof < 2:
        return [], math.nan
    sigma = max(sigma * t95(dof) / _Z95, noise_floor)
    one = law.one_variable
    log_n, log_d, _ = _tensors(points, one)
    fitted = torch.tensor([math.log(law.predict(p.params, None if one else p.tokens)) for p in points],
                          dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    draws = fitted[None] + sigma * torch.randn((samples, len(points)), generator=gen, dtype=torch.float64)
    thetas, values = _fit_batch(log_n.expand(samples, -1), None if log_d is None else log_d.expand(samples, -1),
                                draws, _starts(one))
    return [_law(t, law.tokens_per_param) for t, v in zip(thetas.tolist(), values.tolist())
            if math.isfinite(v)], sigma
