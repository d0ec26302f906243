"""The model a budget buys by a run's ladder law (`fmforge plan CONFIG --budget/--gpu-hours`,
its "budget optimum" and "config's model" rows of --decide): each row's quality and
cost are for one and the same training, counted in the project's own FLOPs per
token (head and attention included), never in the law's 6·N."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.config import ModelConfig
from fmforge.hardware import get_hardware
from fmforge.model.counting import count_params, from_model_config, train_flops_per_token
from fmforge.plan.autosize import WIDTHS, shape_for_width
from fmforge.plan.command import PlanOptions, plan_command

VOCAB, SEQ = 8192, 256
MFU = 0.4
ONE_VARIABLE = {"E": 0.9, "A": 12.0, "alpha": 0.3, "B": 0.0, "beta": 0.0, "tokens_per_param": 20.0}
# optimum at about 20 tokens per parameter in the law's 6·N·D: (alpha·A / beta·B)^(1/(alpha+beta)) = 20^-0.5
TWO_VARIABLE = {"E": 0.9, "A": 100.0, "alpha": 0.3, "B": 100.0 / 20 ** -0.3, "beta": 0.3, "tokens_per_param": None}


def _config(tmp_path: Path, law: dict, max_steps: int = 200) -> Path:
    run = tmp_path / "runs" / "opt"
    (run / "ladder").mkdir(parents=True)
    (run / "ladder" / "ladder.json").write_text(json.dumps({
        "law": law, "form": "test law", "warnings": [], "bootstrap": [],
        "rungs": [{"non_embedding_params": 30_000.0}]}))
    path = tmp_path / "c.yaml"
    path.write_text(
        f"name: opt\nout_dir: {run}\ndata:\n  sources: [{{name: s, paths: ['x/*.txt']}}]\n"
        f"tokenizer: {{vocab_size: {VOCAB}}}\n"
        f"model: {{d_model: 96, n_layers: 3, n_heads: 3, seq_len: {SEQ}}}\n"
        f"train: {{max_steps: {max_steps}, max_minutes: null, micro_batch_size: 16, grad_accum_steps: 1}}\n")
    return path


def _real(width: int) -> tuple[float, float]:
    """(non-embedding parameters, training FLOPs per token) of the family's shape of
    this width with the config's vocabulary, counted by the one counter."""
    layers, heads = shape_for_width(width)
    arch = from_model_config(ModelConfig(vocab_size=VOCAB, d_model=width, n_layers=layers, n_heads=heads,
                                         seq_len=SEQ))
    return float(count_params(arch).non_embedding), float(train_flops_per_token(arch, "palm"))


def _hours(compute: float) -> float:
    return compute / (3600 * get_hardware("h100-sxm").peak_flops * MFU)


def _plan(config: Path, compute: float, **kw) -> dict:
    return plan_command(PlanOptions(config=config, gpu="h100-sxm", mfu=MFU, gpu_hours=_hours(compute),
                                    **kw)).data


@pytest.mark.parametrize("width", [96, 128, 192])
def test_the_one_variable_optimum_spends_the_budget_in_real_flops(tmp_path, width):
    """A budget that trains the family's shape of this width at the ladder's rule
    (20 tokens per non-embedding parameter), in real FLOPs, buys that shape."""
    n, fpt = _real(width)
    compute = 20 * n * fpt
    data = _plan(_config(tmp_path, ONE_VARIABLE), compute, decide=True)
    assert data["sizing"]["compute_flops"] == pytest.approx(compute, rel=1e-9)
    opt = data["ladder"]["optimum"]
    assert opt["non_embedding_params"] == pytest.approx(n, rel=0.01)
    assert opt["tokens"] * fpt == pytest.approx(compute, rel=0.01)
    row = next(r for r in data["quality"]["rows"] if r["model"] == "budget optimum, predicted")
    assert row["bits_per_byte"] == pytest.approx(0.9 + 12.0 / n ** 0.3, rel=1e-3)


def test_between_two_shapes_the_optimum_lies_between_them_and_still_spends_the_budget(tmp_path):
    (n1, f1), (n2, f2) = _real(128), _real(160)
    compute = math.sqrt(20 * n1 * f1 * 20 * n2 * f2)
    opt = _plan(_config(tmp_path, ONE_VARIABLE), compute)["ladder"]["optimum"]
    assert n1 < opt["non_embedding_params"] < n2 and f1 < opt["flops_per_token"] < f2
    assert opt["tokens"] * opt["flops_per_token"] == pytest.approx(compute, rel=0.01)
    assert opt["tokens"] == pytest.approx(20 * opt["non_embedding_params"], rel=0.01)


def test_the_two_variable_optimum_is_a_real_shape_trained_on_what_the_budget_buys(tmp_path):
    n, fpt = _real(128)
    compute = 20 * n * fpt
    opt = _plan(_config(tmp_path, TWO_VARIABLE), compute)["ladder"]["optimum"]
    shape = opt["shape"]
    arch = from_model_config(ModelConfig(vocab_size=VOCAB, d_model=shape["d_model"], n_layers=shape["n_layers"],
                                         n_heads=shape["n_heads"], seq_len=SEQ))
    assert opt["non_embedding_params"] == count_params(arch).non_embedding
    assert opt["tokens"] * train_flops_per_token(arch, "palm") == pytest.approx(compute, rel=0.01)


def _best_two_variable_at(compute: float) -> float:
    law = TWO_VARIABLE
    best = math.inf
    for width in WIDTHS[:12]:
        n, fpt = _real(width)
        d = compute / fpt
        best = min(best, law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"])
    return best


@pytest.mark.parametrize("width", [64, 96, 128])
def test_an_optimum_is_never_better_than_a_shape_trained_on_twice_its_compute(tmp_path, width):
    n, fpt = _real(width)
    twice = 20 * n * fpt  # this shape, trained at the ladder's rule, costs 2C
    one = _plan(_config(tmp_path, ONE_VARIABLE), twice / 2, decide=True)
    assert one["ladder"]["optimum"]["bits_per_byte"] > 0.9 + 12.0 / n ** 0.3
    row = next(r for r in one["quality"]["rows"] if r["model"] == "budget optimum, predicted")
    assert row["bits_per_byte"] > 0.9 + 12.0 / n ** 0.3


@pytest.mark.parametrize("width", [64, 96, 128])
def test_a_two_variable_optimum_is_never_better_than_the_best_shape_on_twice_its_compute(tmp_path, width):
    n, fpt = _real(width)
    twice = 20 * n * fpt
    two = _plan(_config(tmp_path, TWO_VARIABLE), twice / 2)
    assert two["ladder"]["optimum"]["bits_per_byte"] >= _best_two_variable_at(twice)


def test_the_configs_row_prices_the_training_its_quality_is_for(tmp_path):
    """The config trains 200 steps of 4,096 tokens; the one-variable law predicts a
    model trained at 20 tokens per non-embedding parameter: the row's cost is that
    training's, and the row says so."""
    config = _config(tmp_path, ONE_VARIABLE)
    data = _plan(config, 1e15, decide=True)
    row = next(r for r in data["quality"]["rows"] if r["model"] == "config's model, predicted")
    n = count_params(from_model_config(ModelConfig(vocab_size=VOCAB, d_model=96, n_layers=3, n_heads=3,
                                                   seq_len=SEQ))).non_embedding
    rule_tokens = 20 * n
    assert data["tokens"] == 200 * 16 * SEQ != pytest.approx(rule_tokens, rel=0.05)
    at_rule = plan_command(PlanOptions(config=config, gpu="h100-sxm", mfu=MFU, tokens=rule_tokens)).data
    assert row["one_time_usd"] == pytest.approx(at_rule["cost_usd"], rel=1e-6)
    assert f"{rule_tokens:,.0f} tokens" in row["basis"] and "20 tokens per" in row["basis"]
    # a config that trains at the rule's ratio is priced at its own plan
    steps = round(rule_tokens / (16 * SEQ))
    same = _plan(_config(tmp_path / "same", ONE_VARIABLE, max_steps=steps), 1e15, decide=True)
    row = next(r for r in same["quality"]["rows"] if r["model"] == "config's model, predicted")
    assert row["one_time_usd"] == pytest.approx(same["cost_usd"], rel=1e-9)


@pytest.mark.parametrize("law", [{**TWO_VARIABLE, "alpha": -0.05}, {**ONE_VARIABLE, "alpha": -0.05}])
def test_a_law_with_no_optimum_is_one_line_through_the_cli(tmp_path, law):
    config = _config(tmp_path, law)
    result = CliRunner().invoke(app, ["plan", str(config), "--gpu", "h100-sxm", "--gpu-hours", "10",
                                      "--mfu", "0.4"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "no optimum" in result.output and "Traceback" not in result.output
    assert "larger rungs" in result.output


def test_a_prediction_the_ladder_declines_is_a_row_that_says_why(tmp_path, monkeypatch):
    """The ladder may decline to predict (a model that would repeat its data) and say
    why in the prediction's warnings: the row stays, without a figure, with the reason."""
    from rich.console import Console

    from fmforge.plan.report import render_quality

    def declined(ladder, params, tokens):
        return {"non_embedding_params": params, "tokens": tokens,
                "warnings": ["declined: the model would see its data 17 times"]}

    monkeypatch.setattr("fmforge.plan.quality.ladder_prediction", declined)
    data = _plan(_config(tmp_path, ONE_VARIABLE), 1e15, decide=True)
    rows = {r["model"]: r for r in data["quality"]["rows"]}
    row = rows["config's model, predicted"]
    assert row["bits_per_byte"] is None and "its data 17 times" in row["basis"]
    console = Console(width=80, record=True)
    for part in render_quality(data["quality"]):
        console.print(part)
    assert "its data 17 times" in console.export_text()


def _with_measurement(tmp_path: Path, measured: float) -> dict:
    """The config's model predicted by a law whose bootstrap fits spread widely
    (A from 8 to 20: predictions about 1.08-1.34), beside a measured run."""
    law = {**ONE_VARIABLE, "A": 12.0}
    config = _config(tmp_path, law)
    ladder_path = tmp_path / "runs" / "opt" / "ladder" / "ladder.json"
    ladder = json.loads(ladder_path.read_text())
    ladder["bootstrap"] = [{**law, "A": a} for a in (8.0, 10.0, 12.0, 14.0, 20.0)]
    ladder_path.write_text(json.dumps(ladder))
    (tmp_path / "runs" / "opt" / "eval.json").write_text(json.dumps(
        {"bits_per_byte": measured, "step": 100, "per_source": {}}))
    return _plan(config, 1e15, decide=True)["quality"]


def test_a_prediction_is_not_called_best_while_its_interval_holds_a_measured_figure(tmp_path):
    """E + A/N^alpha at N = 332,448 non-embedding parameters: 0.9 + 12 / 332448^0.3 = 1.165
    (by hand), below the run's measured 1.2, but the 90% interval (A 8-20) reaches
    past it: the measured run is the lowest measured figure, and the prediction is
    named as not shown to be better."""
    quality = _with_measurement(tmp_path / "a", 1.2)
    predicted = next(r for r in quality["rows"] if r["model"] == "config's model, predicted")
    assert predicted["bits_per_byte"] == pytest.approx(0.9 + 12 / 332448 ** 0.3, rel=1e-3)
    lo, hi = predicted["interval_90"]
    assert lo < 1.2 < hi
    first = quality["notes"][0]
    assert first.startswith("lowest measured held-out bits per byte: opt (this run)"), quality["notes"]
    assert any("config's model, predicted" in n and "not shown to be better" in n for n in quality["notes"])
    # a measured figure above the whole interval: the prediction is named as better
    quality = _with_measurement(tmp_path / "b", 1.6)
    assert any("config's model, predicted" in n and "wholly below" in n for n in quality["notes"])
