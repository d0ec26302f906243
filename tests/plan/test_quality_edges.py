"""``fmforge plan CONFIG --decide``'s table (plan/quality.py) at the edges mutmut's
survivors showed untested (issue 32): a measured model whose name holds the word
"predicted", a stale model listed before a current one, each row's monthly serving
cost, a two-variable ladder's prediction at the planned tokens, a prediction tied
with a measurement, the notes a ladder without its data size leaves to the planner,
a budget optimum's interval, a plan without a cost, a run without a ladder, and the
messages' words against docs/planner.md and the CLI. Figures are worked out by hand
from the laws written out, wall times and the catalogue's prices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.config import config_from_dict
from fmforge.hardware import get_hardware
from fmforge.model.counting import count_parameters, from_model_config, train_flops_per_token
from fmforge.plan.errors import PlanError
from fmforge.plan.quality import quality_table

CPU = get_hardware("cpu", price_per_hour=0.5, measure_cpu=False)
L4 = get_hardware("l4")  # $0.80/h
DOCS = Path(__file__).resolve().parents[2] / "docs" / "planner.md"
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "seq_len": 64}
ONE = {"E": 1.0, "A": 10.0, "alpha": 0.5, "tokens_per_param": 20.0}


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _cfg():
    return config_from_dict({"name": "own", "data": {"sources": [{"name": "s", "paths": ["x"]}]},
                             "tokenizer": {"vocab_size": 512}, "model": MODEL})


COUNTS = count_parameters(_cfg().resolved_model())
NE = COUNTS.non_embedding  # 106,816: 2 × (4 × 64² + 3 × 64 × 192 + 128) + 64


def _hf(tmp_path: Path, name: str) -> str:
    path = tmp_path / "models" / name
    _write(path / "config.json", {})
    return str(path)


def _root(tmp_path: Path, against: dict | None = None, ev: dict | None = None, ladder: dict | None = None) -> Path:
    root = tmp_path / "runs" / "own"
    _write(root / "eval.json", {**(ev or {}), "against": against or {}})
    if ladder is not None:
        _write(root / "ladder" / "ladder.json", ladder)
    return root


def _ladder(law=ONE, es=None, **kw):
    lad = {"law": law, "rungs": [{"non_embedding_params": NE / 2, "epochs": 0.5}]}
    if es is not None:
        lad["bootstrap"] = [{**law, "E": e} for e in es]
    return {**lad, **kw}


def _rows(table):
    return {r["model"]: r for r in table["rows"]}


def _words(text: str) -> str:
    return " ".join(text.split())


def test_a_measured_model_named_predicted_is_a_measurement(tmp_path):
    """A model's row is named after its folder (`fmforge eval RUN --against
    models/predicted-v2`); what makes a row a prediction is its interval, not a word
    in the user's folder name."""
    root = _root(tmp_path, {"predicted-v2": {"path": _hf(tmp_path, "predicted-v2"), "kind": "hf",
                                             "bits_per_byte": 1.1}},
                 ev={"bits_per_byte": 1.3, "step": 50})
    table = quality_table(root, None, {}, CPU)
    assert table["notes"] == ["lowest measured held-out bits per byte: predicted-v2 (use as is, 1.1000, measured)"]


def test_a_stale_model_does_not_hide_the_current_ones_after_it(tmp_path):
    stages = {"data": {"fingerprint": "f1", "output": "out-2", "completed_at": 100.0, "summary": {}}}
    against = {"a-old": {"path": _hf(tmp_path, "a"), "kind": "hf", "bits_per_byte": 1.0, "heldout_data": "out-1"},
               "b-now": {"path": _hf(tmp_path, "b"), "kind": "hf", "bits_per_byte": 1.1, "heldout_data": "out-2"},
               "c-now": {"path": _hf(tmp_path, "c"), "kind": "hf", "bits_per_byte": 1.2, "heldout_data": "out-2"}}
    root = _root(tmp_path, against)
    _write(root / "stages.json", stages)
    table = quality_table(root, None, {}, CPU)
    assert sorted(_rows(table)) == ["b-now", "c-now"]
    assert table["notes"][-1].startswith("a-old left out: scored on held-out bytes that the data stage has since")


def test_every_row_is_priced_to_serve_the_monthly_volume(tmp_path):
    """Serving 1M tokens a month from models of a few hundred thousand parameters
    keeps one L4 on all month: 730 h × $0.80 = $584, for a scored model, the config's
    model and the budget optimum alike; without a volume, no serving cost."""
    fpt = train_flops_per_token(from_model_config(_cfg().resolved_model()))
    plan = {"tokens": 20 * NE, "cost_usd": 1.0, "sizing": {"compute_flops": 4 * 20 * NE * fpt, "budget_usd": 2.0}}
    root = _root(tmp_path, {"general": {"path": _hf(tmp_path, "general"), "kind": "hf", "bits_per_byte": 1.2,
                                        "params": 300_000}}, ladder=_ladder())
    rows = _rows(quality_table(root, _cfg(), plan, L4, monthly_tokens=1e6))
    assert set(rows) == {"general", "config's model, predicted", "budget optimum, predicted"}
    for name, row in rows.items():
        assert row["monthly_usd"] == pytest.approx(584.0), name
    unpriced = _rows(quality_table(root, _cfg(), plan, L4))
    assert all(r["monthly_usd"] is None for r in unpriced.values())


def test_a_two_variable_ladder_predicts_the_configs_model_at_its_planned_tokens(tmp_path):
    # 1.0 + 10 / sqrt(106,816) + 100 / sqrt(10 × 106,816) = 1.0 + 0.030597 + 0.096755
    law = {"E": 1.0, "A": 10.0, "alpha": 0.5, "B": 100.0, "beta": 0.5}
    root = _root(tmp_path, ladder=_ladder(law))
    row = _rows(quality_table(root, _cfg(), {"tokens": 10 * NE, "cost_usd": 2.0}, CPU))["config's model, predicted"]
    assert row["bits_per_byte"] == pytest.approx(1.0 + 10 / 326.83 + 100 / 1033.52, rel=1e-4)
    assert row["tokens"] == 10 * NE and row["one_time_usd"] == 2.0  # the law describes the plan's own ratio
    assert row["basis"] == "ladder, 2x its largest rung"


def test_the_rule_note_reads_as_docs_planner_md_prints_it(tmp_path):
    root = _root(tmp_path, ladder=_ladder())
    row = _rows(quality_table(root, _cfg(), {"tokens": 10 * NE, "cost_usd": 3.0}, CPU))["config's model, predicted"]
    assert row["basis"] == (
        "ladder, 2x its largest rung; quality and cost both for 2,136,320 tokens (20 tokens per non-embedding "
        "parameter, the ladder's rule); the config plans 1,068,160 (10 per parameter), which this law does not "
        "describe: give the ladder rungs at a second tokens-per-parameter (the two-variable law) to predict that")
    tail = row["basis"][row["basis"].index("tokens per non-embedding parameter, the ladder's rule"):]
    assert _words(tail.replace("1,068,160 (10 per", "7,151,616 (21.5 per")) in _words(DOCS.read_text(encoding="utf-8"))


def test_a_plan_without_a_cost_is_a_row_without_one(tmp_path):
    root = _root(tmp_path, ladder=_ladder())
    row = _rows(quality_table(root, _cfg(), {"tokens": 10 * NE}, CPU))["config's model, predicted"]
    assert row["one_time_usd"] is None and row["tokens"] == 20 * NE


def test_a_prediction_equal_to_the_measurement_is_not_called_below_it(tmp_path):
    """Every bootstrap fit the same as the law: the interval is the point itself. A
    model measured at exactly that figure is neither beaten nor outside the interval."""
    plan = {"tokens": 20 * NE, "cost_usd": 1.0}
    first = quality_table(_root(tmp_path / "1", ladder=_ladder(es=[1.0, 1.0, 1.0])), _cfg(), plan, CPU)
    predicted = _rows(first)["config's model, predicted"]
    assert predicted["interval_90"] == [predicted["bits_per_byte"]] * 2
    tie = predicted["bits_per_byte"]
    root = _root(tmp_path / "2", {"same": {"path": _hf(tmp_path, "same"), "kind": "hf", "bits_per_byte": tie}},
                 ladder=_ladder(es=[1.0, 1.0, 1.0]))
    assert quality_table(root, _cfg(), plan, CPU)["notes"] == [
        f"lowest measured held-out bits per byte: same (use as is, {tie:.4f}, measured)"]


def test_a_ladder_without_its_data_size_leaves_the_repetition_note_to_the_planner(tmp_path):
    """The ladder knows no data size, so its only warning is its backtest's; the
    planner's 100,000 tokens are 21.4 passes of the config's 2,136,320 by the rule,
    and of the budget optimum's (the config's own shape: the budget is its cost)."""
    fpt = train_flops_per_token(from_model_config(_cfg().resolved_model()))
    plan = {"tokens": 20 * NE, "cost_usd": 1.0, "sizing": {"compute_flops": 20 * NE * fpt, "budget_usd": 1.0}}
    ladder = _ladder(backtest={"error": 0.08, "reach": 2.0})
    rows = _rows(quality_table(_root(tmp_path, ladder=ladder), _cfg(), plan, CPU, data_tokens=100_000))
    for name, what in (("config's model, predicted", "the config's model"),
                       ("budget optimum, predicted", "the budget optimum")):
        basis = rows[name]["basis"]
        assert "on your data, this ladder missed its own largest rung by +8.0%" in basis, name
        assert f"{what} would repeat its data 21.4 times (2.14M tokens over 100k of data;" in basis, name


def test_the_budget_optimum_shows_its_bootstrap_interval(tmp_path):
    """The bootstrap moves E alone (0.95-1.05 around 1.0): the interval is the
    prediction shifted by the 5th and 95th percentiles of E, less E."""
    fpt = train_flops_per_token(from_model_config(_cfg().resolved_model()))
    plan = {"tokens": 20 * NE, "cost_usd": 1.0, "sizing": {"compute_flops": 4 * 20 * NE * fpt, "budget_usd": 2.0}}
    es = [0.95, 1.0, 1.05]
    row = _rows(quality_table(_root(tmp_path, ladder=_ladder(es=es)), _cfg(), plan, CPU))["budget optimum, predicted"]
    lo, hi = np.percentile(es, [5, 95]) - 1.0
    assert row["interval_90"] == pytest.approx([row["bits_per_byte"] + lo, row["bits_per_byte"] + hi])


def test_a_run_without_a_ladder_shows_what_was_measured(tmp_path):
    root = _root(tmp_path, ev={"bits_per_byte": 1.3, "step": 50})
    table = quality_table(root, _cfg(), {"tokens": 20 * NE, "cost_usd": 1.0}, CPU)
    assert [r["model"] for r in table["rows"]] == ["own (this run)"]
    # and a ladder with no config to predict for: no predicted rows either
    _write(root / "ladder" / "ladder.json", _ladder())
    assert [r["model"] for r in quality_table(root, None, {}, CPU)["rows"]] == ["own (this run)"]


def test_an_fmforge_run_without_a_wall_time_is_a_row_without_a_cost(tmp_path, finished_run):
    other = finished_run(tmp_path)
    stages = json.loads((other / "stages.json").read_text())
    del stages["train"]["summary"]["wall_s"]  # a summary, and a log, that record no wall time
    (other / "stages.json").write_text(json.dumps(stages))
    records = [json.loads(line) for line in (other / "metrics.jsonl").read_text().splitlines()]
    (other / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "elapsed_s"}) + "\n"
                                                 for r in records))
    root = _root(tmp_path / "mine", {"other": {"path": str(other), "kind": "fmforge", "bits_per_byte": 1.2}})
    row = _rows(quality_table(root, None, {}, CPU))["other"]
    assert (row["option"], row["one_time_usd"], row["basis"]) == ("train", None, "measured")


def test_nothing_to_compare_names_three_commands_the_cli_has(tmp_path):
    root = tmp_path / "runs" / "empty"
    root.mkdir(parents=True)
    with pytest.raises(PlanError) as err:
        quality_table(root, None, {}, CPU)
    assert str(err.value) == (
        f"nothing to compare in {root}: evaluate the run (`fmforge eval RUN`), score other models on its held-out "
        "bytes (`fmforge eval RUN --against DIR`) or fit a ladder (`fmforge ladder CONFIG`) first")
    runner = CliRunner()
    assert "--against" in runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output
    assert "ladder [OPTIONS] {config}" in runner.invoke(app, ["ladder", "--help"], env={"COLUMNS": "200"}).output
