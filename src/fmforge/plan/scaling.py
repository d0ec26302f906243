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

from fmforge.rundir import read_json_artifact


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
                    f"this law was fitted to models trained on {self.tokens_per_param:g} tokens per "
                    f"parameter; {tokens:,.0f} tokens for {params:,.0f} parameters is "
                    f"{tokens / params:.3g} per parameter, outside what it describes")
            return loss
        if tokens is None or tokens <= 0:
            raise ValueError("the two-variable law needs the number of training tokens")
        return loss + self.B / tokens ** self.beta

    def optimum(self, compute: float, flops_per_param_token: float = 6.0) -> tuple[float, float]:
        """(N, D) with the lowest predicted loss for ``compute`` = 6·N·D FLOPs
        (Hoffmann et al. 2022, eq. 4); the one-variable law keeps its rule."""
        if compute <= 0:
            raise ValueError(f"compute must be positive, got {compute}")
        per = compute / flops_per_param_token
        if self.one_variable:
            n = math.sqrt(per / self.tokens_per_param)
            return n, self.tokens_per_param * n
        if self.alpha <= 0 or self.beta <= 0 or self.A <= 0 or self.B <= 0:
            raise ValueError("this fit has no finite optimum: a term does not fall with scale")
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * per ** (self.beta / (self.alpha + self.beta))
        return n, per / n

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


def ladder_prediction(ladder: dict[str, Any], params: float, tokens: float | None) -> dict[str, Any]:
    """What a ladder's law predicts for a model of ``params`` non-embedding
    parameters trained on ``tokens`` (the one-variable law: by its rule, whatever
    ``tokens`` says), with the 90% interval of its bootstrap fits and how far
    beyond the largest rung that is."""
    law = ScalingLaw.from_dict(ladder["law"])
    laws = [ScalingLaw.from_dict(b) for b in ladder.get("bootstrap", [])]
    if not law.one_variable and tokens is None:
        return {"non_embedding_params": params, "note": "the two-variable law needs a token count"}
    use_tokens = None if law.one_variable else tokens
    out: dict[str, Any] = {"non_embedding_params": params,
                           "tokens": law.tokens_per_param * params if law.one_variable else tokens,
                           "bits_per_byte": law.predict(params, use_tokens)}
    if laws:
        out["interval_90"] = list(interval(laws, params, use_tokens))
    largest = max((r["non_embedding_params"] for r in ladder.get("rungs", [])), default=None)
    if largest:  # how far beyond the largest rung: 2.0 is twice its size
        out["extrapolation"] = round(params / largest, 3)
    return out


# Hoffmann et al. 2022, Approach 3, fitted to MassiveText (loss in nats per token).
CHINCHILLA = ScalingLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
