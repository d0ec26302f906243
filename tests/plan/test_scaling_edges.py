"""plan/scaling.py at the edges mutmut's survivors showed untested (issue 32): what a
user reads when a ladder's law has no optimum or its file is damaged, the declined
prediction's warning as docs/planner.md prints it, a two-variable ladder's bootstrap
interval, a law with small coefficients, and a budget that buys exactly one of the
family's real shapes. Each is checked against a hand computation, the docs' own
transcript, the CLI's options or the perturbation of an optimum, not the code's formula."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.config import ModelConfig
from fmforge.errors import UserError
from fmforge.plan.autosize import family_shapes
from fmforge.plan.errors import PlanError
from fmforge.plan.scaling import ScalingLaw, Shape, ladder_prediction, read_ladder

DOCS = Path(__file__).resolve().parents[2] / "docs" / "planner.md"


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_declined_prediction_warns_in_the_words_docs_planner_md_prints():
    """docs/planner.md's `--decide` transcript declines the budget optimum, 685k
    non-embedding parameters by the rule of 20 tokens each (13.7M tokens) against
    the demo's 3.4M training tokens: 13.7 / 3.4 = 4.03 passes, over the 4 the law
    describes, its rungs having seen their data at most 0.9 times."""
    law = {"E": 0.9, "A": 12.0, "alpha": 0.3, "tokens_per_param": 20.0}
    ladder = {"law": law, "data_tokens": 3.4e6,
              "rungs": [{"non_embedding_params": 1.6e5, "epochs": 0.9}, {"non_embedding_params": 8e4, "epochs": 0.5}]}
    out = ladder_prediction(ladder, 685_000, None)
    assert "bits_per_byte" not in out and out["note"] == "not predicted: repeats its data 4.0x"
    [warning] = out["warnings"]
    assert warning.startswith("not predicted: a model of 685k non-embedding parameters trained on 13.7M tokens")
    assert warning.endswith("it would over-promise. Add data, or plan a smaller model or fewer tokens")
    assert _words(warning) in _words(DOCS.read_text(encoding="utf-8"))


def test_a_two_variable_ladder_gives_its_bootstrap_interval_at_the_planned_tokens():
    # each bootstrap law: E + 10 / sqrt(1e4) + 100 / sqrt(1e6) = E + 0.1 + 0.1 at 1e4 parameters on 1e6 tokens
    law = {"E": 1.0, "A": 10.0, "alpha": 0.5, "B": 100.0, "beta": 0.5}
    es = [0.96, 0.98, 1.0, 1.02, 1.04]
    out = ladder_prediction({"law": law, "bootstrap": [{**law, "E": e} for e in es]}, 1e4, 1e6)
    assert out["bits_per_byte"] == pytest.approx(1.2)
    assert out["interval_90"] == pytest.approx(list(np.percentile([e + 0.2 for e in es], [5, 95])))
    # on 4e6 tokens the data term halves (100 / 2000): the interval moves with the tokens asked
    out4 = ladder_prediction({"law": law, "bootstrap": [{**law, "E": e} for e in es]}, 1e4, 4e6)
    assert out4["interval_90"] == pytest.approx(list(np.percentile([e + 0.15 for e in es], [5, 95])))


def test_a_law_with_small_positive_coefficients_still_has_its_optimum():
    """A term falls with scale whatever the size of its coefficient: A = 0.5 and
    B = 0.8 (bits per byte of a flat ladder) have an optimum like any other law."""
    law = ScalingLaw(E=1.0, A=0.5, alpha=0.1, B=0.8, beta=0.1)
    compute = 1e18
    n, d = law.optimum(compute)
    assert 6 * n * d == pytest.approx(compute)
    best = law.predict(n, d)
    for k in (0.5, 0.9, 1.1, 2.0):  # the same compute moved along C = 6·N·D predicts worse
        assert law.predict(n * k, d / k) > best
    one = ScalingLaw(E=1.0, A=0.6, alpha=0.1, tokens_per_param=20.0)
    assert one.optimum(1.2e16) == pytest.approx((1e7, 2e8))  # 6 × N × 20N = 1.2e16


def test_a_law_without_an_optimum_says_which_terms_and_what_to_do_in_one_line():
    law = ScalingLaw(E=1.0, A=10.0, alpha=0.0, B=5.0, beta=-0.1)
    with pytest.raises(PlanError) as err:
        law.optimum(1e20)
    assert str(err.value) == (
        "the ladder's fitted law has no optimum: alpha = 0, beta = -0.1 (a term that does not fall with scale: a "
        "bigger model or more tokens predicts no better). Its rungs do not yet show the trend: add more and larger "
        "rungs, or train each on more tokens per parameter, and run `fmforge ladder CONFIG` again")


def test_a_damaged_ladder_json_names_the_command_that_remakes_it(tmp_path):
    (tmp_path / "ladder").mkdir()
    path = tmp_path / "ladder" / "ladder.json"
    path.write_text('{"law": {"E": 1.0,')  # cut short, as by a full disk
    with pytest.raises(UserError) as err:
        read_ladder(tmp_path)
    assert str(err.value).startswith(f"{path} is not valid JSON")
    assert str(err.value).endswith(": rerun `fmforge ladder CONFIG --force`")
    # the advice is a real command: `fmforge ladder` takes CONFIG and --force
    help_text = CliRunner().invoke(app, ["ladder", "--help"], env={"COLUMNS": "200"}).output
    assert "ladder [OPTIONS] {config}" in help_text and "--force" in help_text


def _toy(n: float, d_model: int) -> Shape:
    return Shape(n, 2 * n, 6 * n, {"d_model": d_model, "n_layers": 2, "n_heads": 2})


def test_a_budget_that_buys_exactly_one_of_the_familys_shapes_names_that_shape():
    """By the one-variable law's rule, a shape of N non-embedding parameters and f
    FLOPs per token costs 20·N·f. That budget buys that very shape: it is within
    the family, the nearer shape, and costs 100% of the budget, whichever shape it
    is (the family of `model: auto` with the demo's vocabulary and context)."""
    law = ScalingLaw(E=1.0, A=10.0, alpha=0.3, tokens_per_param=20.0)
    shapes = family_shapes(ModelConfig(vocab_size=8192, d_model=96, n_layers=3, n_heads=3, seq_len=256))
    for s in shapes:
        opt = law.optimum_over(20 * s.non_embedding_params * s.flops_per_token, shapes)
        assert opt["non_embedding_params"] == pytest.approx(s.non_embedding_params)
        assert opt["shape"] == s.keys
        assert opt["how"].startswith("between the family's shapes"), (s.keys, opt["how"])
        assert opt["how"].endswith(f"the nearer, {s.describe()}, trained by the rule costs 100% of the budget")
    # the toy family of 1M, 4M and 16M parameters at 6·N FLOPs per token: 120·N² buys N
    toy = [_toy(1e6, 64), _toy(4e6, 128), _toy(16e6, 256)]
    for n, d_model in ((1e6, 64), (16e6, 256)):
        opt = law.optimum_over(120 * n ** 2, toy)
        assert opt["shape"]["d_model"] == d_model and "(interpolated)" in opt["how"]
        assert opt["how"].endswith("costs 100% of the budget")
    # just past either end is beyond the family
    below, above = law.optimum_over(120 * 0.99e6 ** 2, toy), law.optimum_over(120 * 16.2e6 ** 2, toy)
    assert below["how"].startswith("beyond the family's smallest shape d_model 64")
    assert above["how"].startswith("beyond the family's largest shape d_model 256")
    assert math.isclose(above["non_embedding_params"], 16.2e6) and math.isclose(below["non_embedding_params"], 0.99e6)
