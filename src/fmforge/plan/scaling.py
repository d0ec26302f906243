"""The parametric scaling law L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022):
held-out loss (here: bits per byte, which a fixed tokenizer makes proportional to
nats per token) of a model of N parameters trained on D tokens.

One home for the formula: the planner's Chinchilla comparison uses it with the
published constants, and a run's own ladder (``fmforge ladder``) fits it to
models trained on the user's data; the planner reads that fit from
``ladder/ladder.json`` and predicts with it here.

When every rung of a ladder was trained by the same rule D = r·N, N and D cannot
be told apart and the law has one variable: L(N) = E + A/N^α, valid for models
trained by that rule (``tokens_per_param`` = r).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from fmforge.plan.errors import PlanError
from fmforge.rundir import read_json_artifact


@dataclass(frozen=True)
class Shape:
    """A real model of a family: its counts and its training FLOPs per token (the
    project's own, ``fmforge.model.counting``; head and attention included)."""

    non_embedding_params: float
    params: float
    flops_per_token: float
    keys: dict[str, int]  # the config keys that build it (model.d_model, n_layers, n_heads)

    def describe(self) -> str:
        return (f"d_model {self.keys['d_model']} x {self.keys['n_layers']} layers "
                f"({self.non_embedding_params:,.0f} non-embedding parameters)")


@dataclass(frozen=True)
class ScalingLaw:
    E: float
    A: float
    alpha: float
    B: float = 0.0
    beta: float = 0.0
    # set for the one-variable law: the tokens-per-parameter rule it holds for
    tokens_per_param: float | None = None

    @property
    def one_variable(self) -> bool:
        return self.tokens_per_param is not None

    def predict(self, params: float, tokens: float | None = None) -> float:
        """The loss of ``params`` parameters trained on ``tokens`` tokens (for the
        one-variable law: trained by its rule; ``tokens`` must then be None or
        follow the rule)."""
        if params <= 0:
            raise ValueError(f"a model needs a positive parameter count, got {params}")
        loss = self.E + self.A / params ** self.alpha
        if self.one_variable:
            if tokens is not None and not math.isclose(tokens, self.tokens_per_param * params, rel_tol=0.05):
                raise ValueError(
                    f"this law was fitted to models trained on {self.tokens_per_param:.3g} tokens per "
                    f"parameter; {tokens:,.0f} tokens for {params:,.0f} parameters is "
                    f"{tokens / params:.3g} per parameter, outside what it describes")
            return loss
        if tokens is None or tokens <= 0:
            raise ValueError("the two-variable law needs the number of training tokens")
        return loss + self.B / tokens ** self.beta

    def optimum(self, compute: float, flops_per_param_token: float = 6.0) -> tuple[float, float]:
        """(N, D) with the lowest predicted loss for ``compute`` = 6·N·D FLOPs
        (Hoffmann et al. 2022, eq. 4); the one-variable law keeps its rule.

        This is the law's own arithmetic, in its own units (6 FLOPs per parameter
        and token, N without the embedding and head): what a budget buys in the
        project's real FLOPs per token is ``optimum_over`` a family of shapes."""
        if compute <= 0:
            raise ValueError(f"compute must be positive, got {compute}")
        self.require_optimum()
        per = compute / flops_per_param_token
        if self.one_variable:
            n = math.sqrt(per / self.tokens_per_param)
            return n, self.tokens_per_param * n
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * per ** (self.beta / (self.alpha + self.beta))
        return n, per / n

    def require_optimum(self) -> None:
        """A PlanError (one line, what to do) unless every term of the law falls with
        scale: with a non-positive exponent a bigger model (or more tokens) predicts
        no better, and no budget has a best model."""
        terms = [("alpha", self.alpha, self.A)] + ([] if self.one_variable else [("beta", self.beta, self.B)])
        bad = [f"{name} = {exp:.3g}" for name, exp, coef in terms if exp <= 0 or coef <= 0]
        if bad:
            raise PlanError(
                f"the ladder's fitted law has no optimum: {', '.join(bad)} (a term that does not fall with "
                "scale: a bigger model or more tokens predicts no better). Its rungs do not yet show the trend: "
                "add more and larger rungs, or train each on more tokens per parameter, and run "
                "`fmforge ladder CONFIG` again")

    def optimum_over(self, compute: float, shapes: Sequence[Shape]) -> dict[str, Any]:
        """The model ``compute`` FLOPs buy among real ``shapes`` (each with its own
        FLOPs per training token), so that tokens × FLOPs per token = ``compute``.

        The two-variable law: the shape of lowest predicted loss, each trained on
        ``compute`` / its FLOPs per token. The one-variable law holds only at its rule
        D = r·N: the N where r·N·f(N) = ``compute``, f interpolated log-linearly
        between the two shapes around it (beyond the family: along its end segment)."""
        if compute <= 0:
            raise ValueError(f"compute must be positive, got {compute}")
        self.require_optimum()
        shapes = sorted(shapes, key=lambda s: s.non_embedding_params)
        if not shapes:
            raise ValueError("no shapes to choose from")
        if not self.one_variable:
            best = min(shapes, key=lambda s: self.predict(s.non_embedding_params, compute / s.flops_per_token))
            where = ("the family's smallest shape" if best is shapes[0] else "the family's largest shape"
                     if best is shapes[-1] else "the family's shape")
            return {"non_embedding_params": best.non_embedding_params, "params": best.params,
                    "tokens": compute / best.flops_per_token, "flops_per_token": best.flops_per_token,
                    "compute_flops": compute, "shape": best.keys,
                    "how": f"{where} {best.describe()} of lowest predicted loss, trained on what the budget buys"}
        r = self.tokens_per_param
        cost = [r * s.non_embedding_params * s.flops_per_token for s in shapes]
        if len(shapes) == 1:
            s = shapes[0]
            n = math.sqrt(compute / (r * s.flops_per_token / s.non_embedding_params))  # f ∝ N
            return {"non_embedding_params": n, "params": s.params * n / s.non_embedding_params, "tokens": r * n,
                    "flops_per_token": compute / (r * n), "compute_flops": compute, "shape": s.keys,
                    "how": f"scaled from {s.describe()}"}
        i = max(0, min(len(shapes) - 2, next((k - 1 for k, c in enumerate(cost) if c > compute), len(shapes) - 1)))
        a, b = shapes[i], shapes[i + 1]
        ln_na, ln_nb = math.log(a.non_embedding_params), math.log(b.non_embedding_params)
        slope = (math.log(b.flops_per_token) - math.log(a.flops_per_token)) / (ln_nb - ln_na)
        ln_n = (math.log(compute / r) - math.log(a.flops_per_token) + slope * ln_na) / (1 + slope)
        t = (ln_n - ln_na) / (ln_nb - ln_na)
        n = math.exp(ln_n)
        fpt = math.exp(math.log(a.flops_per_token) + t * (math.log(b.flops_per_token) - math.log(a.flops_per_token)))
        params = math.exp(math.log(a.params) + t * (math.log(b.params) - math.log(a.params)))
        nearest = a if t < 0.5 else b
        # within the family by the costs themselves: at a budget of exactly a shape's cost
        # the rounding of the logarithms can put t a hair outside [0, 1]
        if cost[0] <= compute <= cost[-1]:
            how = (f"between the family's shapes {a.describe()} and {b.describe()} (interpolated); the nearer, "
                   f"{nearest.describe()}, trained by the rule costs "
                   f"{r * nearest.non_embedding_params * nearest.flops_per_token / compute:.0%} of the budget")
        else:
            end = "smallest" if compute < cost[0] else "largest"
            how = f"beyond the family's {end} shape {nearest.describe()} (extrapolated)"
        return {"non_embedding_params": n, "params": params, "tokens": r * n, "flops_per_token": fpt,
                "compute_flops": compute, "shape": nearest.keys, "how": how}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScalingLaw:
        return cls(**{k: d[k] for k in ("E", "A", "alpha", "B", "beta", "tokens_per_param") if k in d})


def interval(laws: Sequence[ScalingLaw], params: float, tokens: float | None = None,
             level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` interval of the predictions of bootstrap fits."""
    values = sorted(law.predict(params, tokens) for law in laws)
    if not values:
        raise ValueError("no bootstrap fits to take an interval from")
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

    def quantile(q: float) -> float:
        pos = q * (len(values) - 1)
        i = int(math.floor(pos))
        j = min(i + 1, len(values) - 1)
        return values[i] + (values[j] - values[i]) * (pos - i)

    return quantile(lo_q), quantile(hi_q)


def read_ladder(run_root: Path) -> dict[str, Any] | None:
    """A run's ``ladder/ladder.json`` (written by ``fmforge ladder``), or None."""
    path = Path(run_root) / "ladder" / "ladder.json"
    if not path.is_file():
        return None
    return read_json_artifact(path, "ladder")


# Passes over its data past which a prediction is declined: up to about 4 epochs
# repeated tokens are worth nearly as much as fresh ones, beyond that less and
# less, past about 16 nearly nothing (Muennighoff et al. 2023, "Scaling
# data-constrained language models"). A ladder's law is fitted to the rungs' loss
# as they trained; it has no term for repetition and over-promises there (issue 29:
# a model repeating its data 17 times measured 18.6% worse than predicted).
REPEAT_LIMIT_EPOCHS = 4.0
# A backtest miss beyond this (the 3% a ladder is held to at 2x) is called out.
BACKTEST_WARN = 0.03


def backtest_widening(ladder: dict[str, Any], params: float) -> float | None:
    """The relative half-width the ladder's backtest demands at ``params``: the
    error of the law fitted without the largest rung when it predicted that rung,
    scaled by how much further (in log N) ``params`` lies beyond the largest rung
    than the largest rung lay beyond the rest (at least the error itself); None
    without a backtest."""
    bt = ladder.get("backtest") or {}
    if bt.get("error") is None:
        return None
    largest = max((r["non_embedding_params"] for r in ladder.get("rungs", [])), default=None)
    reach = bt.get("reach") or 0.0
    far = 1.0
    if largest and reach > 1 and params > largest:
        far = max(1.0, math.log(params / largest) / math.log(reach))
    return abs(bt["error"]) * far


def ladder_prediction(ladder: dict[str, Any], params: float, tokens: float | None) -> dict[str, Any]:
    """What a ladder's law predicts for a model of ``params`` non-embedding
    parameters trained on ``tokens`` (the one-variable law: by its rule, whatever
    ``tokens`` says), with its 90% interval and how far beyond the largest rung
    that is. The interval is the bootstrap's, widened to the ladder's backtest
    (``backtest_widening``) where that is wider. ``warnings`` lists what the user
    must know; where the training would repeat the run's data more than
    ``REPEAT_LIMIT_EPOCHS`` times there is no ``bits_per_byte``: the law cannot
    describe it, and a warning says so with the epochs and the data's size."""
    from fmforge.plan import format as fmt

    law = ScalingLaw.from_dict(ladder["law"])
    laws = [ScalingLaw.from_dict(b) for b in ladder.get("bootstrap", [])]
    out: dict[str, Any] = {"non_embedding_params": params, "warnings": []}
    if not law.one_variable and tokens is None:
        out["note"] = "the two-variable law needs a token count"
        return out
    use_tokens = None if law.one_variable else tokens
    out["tokens"] = law.tokens_per_param * params if law.one_variable else tokens
    largest = max((r["non_embedding_params"] for r in ladder.get("rungs", [])), default=None)
    if largest:  # how far beyond the largest rung: 2.0 is twice its size
        out["extrapolation"] = round(params / largest, 3)
    data = ladder.get("data_tokens")
    if data:
        epochs = out["tokens"] / data
        out.update(epochs=round(epochs, 3), data_tokens=data)
        if epochs > REPEAT_LIMIT_EPOCHS:
            seen = max((r.get("epochs") or 0.0 for r in ladder.get("rungs", [])), default=0.0)
            out["note"] = f"not predicted: repeats its data {epochs:.1f}x"
            out["warnings"].append(
                f"not predicted: a model of {fmt.count(params)} non-embedding parameters trained on "
                f"{fmt.count(out['tokens'])} tokens would pass over the run's {fmt.count(data)} training tokens "
                f"{epochs:.1f} times; past ~{REPEAT_LIMIT_EPOCHS:g} epochs repeated tokens are worth less and "
                "less, past ~16 nearly nothing (Muennighoff et al. 2023), and the ladder's law (its rungs saw "
                f"their data at most {seen:.1f} times) has no term for that: it would over-promise. Add data, "
                "or plan a smaller model or fewer tokens")
            return out
        if epochs > 1:
            out["warnings"].append(
                f"this model would pass over the run's {fmt.count(data)} training tokens {epochs:.1f} times: the "
                "law predicts it as if every token were fresh; up to ~4 epochs repeated tokens are worth nearly "
                "as much (Muennighoff et al. 2023), so expect it a little worse than predicted")
    predicted = law.predict(params, use_tokens)
    out["bits_per_byte"] = predicted
    if laws:
        out["interval_90"] = list(interval(laws, params, use_tokens))
    widen = backtest_widening(ladder, params)
    if widen is not None:
        error = ladder["backtest"]["error"]
        out["backtest_error"] = error
        if "interval_90" in out:
            lo, hi = out["interval_90"]
            out["interval_90"] = [min(lo, predicted * (1 - widen)), max(hi, predicted * (1 + widen))]
            if out["interval_90"] != [lo, hi]:
                out["interval_bootstrap"] = [lo, hi]
        if abs(error) > BACKTEST_WARN:
            out["warnings"].append(
                f"on your data, this ladder missed its own largest rung by {error:+.1%} (the law fitted "
                f"without it): do not trust it at {out.get('extrapolation', 1):.3g}x"
                + (f"; the interval is widened to ±{widen:.1%}" if "interval_90" in out else ""))
    return out


# Hoffmann et al. 2022, Approach 3, fitted to MassiveText (loss in nats per token).
CHINCHILLA = ScalingLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
