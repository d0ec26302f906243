"""``fmforge plan CONFIG --decide``'s table (plan/quality.py) read from a run
directory made by hand: each row's option, figure, cost and basis, which models
are left out as stale, which prediction is named better than a measurement, and
the ladder's rows priced for the training they predict. Costs are worked out by
hand from wall times and prices; predictions from the law written out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmforge.config import config_from_dict
from fmforge.hardware import get_hardware
from fmforge.model.counting import count_parameters
from fmforge.plan.errors import PlanError
from fmforge.plan.quality import quality_table

CPU = get_hardware("cpu", price_per_hour=0.5, measure_cpu=False)
H100 = get_hardware("h100-sxm")  # $2.99/h, 80 GB


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _model_dir(path: Path, summary: dict | None = None, adapter: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _write(path / ("adapter_config.json" if adapter else "config.json"), {})
    if summary is not None:
        _write(path.parent / "summary.json", summary)
    return path


def _run(tmp_path: Path, ev: dict, stages: dict | None = None) -> Path:
    root = tmp_path / "runs" / "own"
    _write(root / "eval.json", ev)
    if stages is not None:
        _write(root / "stages.json", stages)
    return root


def _rows(table):
    return {r["model"]: r for r in table["rows"]}


def test_every_kind_of_scored_model_is_its_option_with_its_cost(tmp_path):
    general = _model_dir(tmp_path / "models" / "general")
    adapter = _model_dir(tmp_path / "runs" / "tuned" / "finetune" / "adapter",
                         {"method": "dora", "wall_s": 1800.0, "device": "cuda:0"}, adapter=True)
    lora = _model_dir(tmp_path / "runs" / "plain" / "finetune" / "adapter", {"wall_s": 360.0}, adapter=True)
    nosummary = _model_dir(tmp_path / "runs" / "lost" / "finetune" / "adapter", adapter=True)
    untimed = _model_dir(tmp_path / "runs" / "untimed" / "finetune" / "model", {"wall_s": 0, "method": "full"})
    other_run = tmp_path / "runs" / "other"
    other_run.mkdir(parents=True)
    against = {
        "general": {"path": str(general), "kind": "hf", "bits_per_byte": 1.9, "params": 1000,
                    "per_source": {"docs": {"bits_per_byte": 2.1}, "code": {"bits_per_byte": 1.7}}},
        "tuned": {"path": str(adapter), "kind": "peft", "bits_per_byte": 1.4, "params": 1000},
        "plain": {"path": str(lora), "kind": "peft", "bits_per_byte": 1.45, "params": 1000},
        "lost": {"path": str(nosummary), "kind": "peft", "bits_per_byte": 1.5, "params": 1000},
        "untimed": {"path": str(untimed), "kind": "hf", "bits_per_byte": 1.6, "params": 1000},
        "other": {"path": str(other_run), "kind": "fmforge", "bits_per_byte": 1.3, "params": 500,
                  "max_bytes": 20000},
    }
    root = _run(tmp_path, {"against": against})
    rows = _rows(quality_table(root, None, {}, CPU))
    assert (rows["general"]["option"], rows["general"]["one_time_usd"]) == ("use as is", 0.0)
    assert rows["general"]["basis"] == "measured; weights already trained"
    assert rows["general"]["per_source"] == {"docs": 2.1, "code": 1.7}
    # a fine-tune on a GPU is priced at the catalogue's H100 ($2.99/h): 1,800 s = $1.495
    assert rows["tuned"]["option"] == "customize"
    assert rows["tuned"]["one_time_usd"] == pytest.approx(0.5 * 2.99)
    assert rows["tuned"]["basis"] == "measured; dora fine-tune, 1800 s"
    # a summary without a device ran on the CPU: 360 s at the user's $0.50/h; the method defaults to LoRA
    assert rows["plain"]["one_time_usd"] == pytest.approx(0.05)
    assert rows["plain"]["basis"] == "measured; lora fine-tune, 360 s"
    assert (rows["lost"]["option"], rows["lost"]["one_time_usd"], rows["lost"]["basis"]) == \
        ("customize", None, "measured")
    assert (rows["untimed"]["option"], rows["untimed"]["one_time_usd"]) == ("customize", None)
    # another fmforge run: train, its cost from its own plan and metrics (none here)
    assert (rows["other"]["option"], rows["other"]["one_time_usd"]) == ("train", None)
    assert rows["other"]["basis"] == "measured; first 20,000 held-out bytes"
    assert rows["other"]["per_source"] == {} and rows["other"]["params"] == 500


def test_the_user_price_applies_when_the_fine_tune_ran_on_the_same_kind_of_device(tmp_path):
    adapter = _model_dir(tmp_path / "runs" / "tuned" / "finetune" / "adapter",
                         {"method": "lora", "wall_s": 3600.0, "device": "cuda"}, adapter=True)
    root = _run(tmp_path, {"against": {"tuned": {"path": str(adapter), "kind": "peft", "bits_per_byte": 1.4}}})
    mine = get_hardware("h100-sxm", price_per_hour=1.0)
    assert _rows(quality_table(root, None, {}, mine))["tuned"]["one_time_usd"] == pytest.approx(1.0)


def test_the_runs_own_row_is_its_measured_figure_and_its_actual_cost(tmp_path, finished_run):
    run = finished_run(tmp_path, speed=0.5)
    # the fixture's run: 1,280 tokens at 500 tokens/s = 2.56 s on one device at $2/h = $0.001422
    stages = json.loads((run / "stages.json").read_text())
    stages["train"]["summary"]["params"] = 12345
    (run / "stages.json").write_text(json.dumps(stages))
    _write(run / "eval.json", {"bits_per_byte": 1.25, "step": 10, "gzip_bits_per_byte": 2.0,
                               "xz_bits_per_byte": 1.75,
                               "per_source": {"a": {"bits_per_byte": 1.2, "gzip_bits_per_byte": 2.1,
                                                    "xz_bits_per_byte": 1.8}}})
    table = quality_table(run, None, {}, get_hardware("l4"), monthly_tokens=1e6)
    row = table["rows"][0]
    assert row["model"] == "t (this run)" and row["option"] == "train" and row["params"] == 12345
    assert row["basis"] == "measured at step 10" and row["per_source"] == {"a": 1.2}
    assert row["one_time_usd"] == pytest.approx(2.56 / 3600 * 2.0)
    # serving a 12k-parameter model: one always-on L4, 730 h × $0.80
    assert row["monthly_usd"] == pytest.approx(584.0)
    assert table["references"] == {"gzip": 2.0, "xz": 1.75}
    assert table["reference_per_source"] == {"a": {"gzip": 2.1, "xz": 1.8}}
    assert table["monthly_tokens"] == 1e6 and table["gpu"] == "l4" and table["run"] == str(run)
    assert table["notes"] == [
        "lowest measured held-out bits per byte: t (this run) (train, 1.2500, measured at step 10)",
        "xz -9e on the same bytes: 1.7500 bits per byte; a model above it has learned less about this data "
        "than a general-purpose compressor"]
    # without a monthly volume, no serving cost
    assert quality_table(run, None, {}, CPU)["rows"][0]["monthly_usd"] is None


def test_a_model_scored_on_replaced_held_out_bytes_is_left_out(tmp_path):
    general = _model_dir(tmp_path / "models" / "general")
    stages = {"data": {"fingerprint": "f1", "output": "out-2", "completed_at": 100.0, "summary": {}}}
    against = {"old": {"path": str(general), "kind": "hf", "bits_per_byte": 1.0, "heldout_data": "out-1"},
               "current": {"path": str(general), "kind": "hf", "bits_per_byte": 1.1, "heldout_data": "out-2"}}
    table = quality_table(_run(tmp_path, {"against": against}, stages), None, {}, CPU)
    assert list(_rows(table)) == ["current"]
    assert table["notes"][-1] == (f"old left out: scored on held-out bytes that the data stage has since replaced; "
                                  f"rescore it with `fmforge eval RUN --against {general}`")


def test_nothing_to_compare_is_an_error_that_says_what_to_run(tmp_path):
    root = tmp_path / "runs" / "empty"
    root.mkdir(parents=True)
    with pytest.raises(PlanError, match=r"nothing to compare in .*empty: evaluate the run \(`fmforge eval RUN`\)"):
        quality_table(root, None, {}, CPU)


def _lowest_notes(tmp_path, rows_bpb, ladder=None, cfg=None, plan=None):
    ev = {"against": {name: {"path": str(_model_dir(tmp_path / "m" / name)), "kind": "hf", "bits_per_byte": b}
                      for name, b in rows_bpb.items()}}
    root = _run(tmp_path, ev)
    if ladder is not None:
        _write(root / "ladder" / "ladder.json", ladder)
    return quality_table(root, cfg, plan or {}, CPU)


def test_the_lowest_measured_model_is_named(tmp_path):
    table = _lowest_notes(tmp_path, {"a": 1.5, "b": 1.2, "c": 1.3})
    assert table["notes"] == ["lowest measured held-out bits per byte: b (use as is, 1.2000, measured)"]


MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "seq_len": 64}


def _cfg():
    return config_from_dict({"name": "own", "data": {"sources": [{"name": "s", "paths": ["x"]}]},
                             "tokenizer": {"vocab_size": 512}, "model": MODEL})


NE = count_parameters(_cfg().resolved_model()).non_embedding  # 2 × (4 × 64² + 3 × 64 × 192 + 128) + 64


def _ladder(law, interval_e=None, **kw):
    lad = {"law": law, "rungs": [{"non_embedding_params": NE / 2, "epochs": 0.5}]}
    if interval_e is not None:
        lad["bootstrap"] = [{**law, "E": e} for e in interval_e]
    return {**lad, **kw}


ONE = {"E": 1.0, "A": 10.0, "alpha": 0.5, "tokens_per_param": 20.0}


def test_the_configs_model_is_predicted_and_priced_at_the_ladders_rule(tmp_path):
    assert NE == 106_816  # by hand: 2 × (16,384 + 36,864 + 128) + 64
    # the config plans 10 tokens per parameter; the one-variable law describes 20: priced at 20, twice the cost
    plan = {"tokens": 10 * NE, "cost_usd": 3.0}
    table = _lowest_notes(tmp_path, {"a": 1.2}, ladder=_ladder(ONE), cfg=_cfg(), plan=plan)
    row = _rows(table)["config's model, predicted"]
    assert row["option"] == "train" and row["tokens"] == 20 * NE
    assert row["bits_per_byte"] == pytest.approx(1.0 + 10.0 / NE ** 0.5)  # 1.0306
    assert row["one_time_usd"] == pytest.approx(6.0)
    assert row["params"] == count_parameters(_cfg().resolved_model()).total
    assert row["basis"].startswith("ladder, 2x its largest rung; quality and cost both for 2,136,320 tokens (20 "
                                   "tokens per non-embedding parameter, the ladder's rule); the config plans "
                                   "1,068,160 (10 per parameter)")
    # within 5% of the rule: priced as planned
    near = _lowest_notes(tmp_path / "near", {"a": 1.2}, ladder=_ladder(ONE), cfg=_cfg(),
                         plan={"tokens": 20.5 * NE, "cost_usd": 3.0})
    near_row = _rows(near)["config's model, predicted"]
    assert near_row["one_time_usd"] == 3.0 and "quality and cost both" not in near_row["basis"]
    # a prediction without an interval below the measurement is not shown to be better
    assert table["notes"] == ["lowest measured held-out bits per byte: a (use as is, 1.2000, measured)",
                              "config's model, predicted: 1.0306 is below a's measured 1.2000, but its interval "
                              "includes that figure: not shown to be better; train it and measure"]


def test_a_prediction_is_called_better_only_when_its_whole_interval_is_below(tmp_path):
    # predicted 1.0306; the bootstrap's E from 0.95 to 1.05 gives an interval 0.98-1.08
    wide = _lowest_notes(tmp_path / "w", {"a": 1.05}, ladder=_ladder(ONE, [0.95, 1.0, 1.05]), cfg=_cfg(),
                         plan={"tokens": 20 * NE, "cost_usd": 3.0})
    assert wide["notes"][1].startswith("config's model, predicted: 1.0306 (90% interval 0.9856-1.0756) is below "
                                       "a's measured 1.0500, but its interval includes that figure: not shown")
    below = _lowest_notes(tmp_path / "b", {"a": 1.2}, ladder=_ladder(ONE, [0.95, 1.0, 1.05]), cfg=_cfg(),
                          plan={"tokens": 20 * NE, "cost_usd": 3.0})
    assert below["notes"][1] == ("config's model, predicted: 1.0306, its 90% interval wholly below a's measured "
                                 "1.2000")
    above = _lowest_notes(tmp_path / "a", {"a": 1.0}, ladder=_ladder(ONE, [0.95, 1.0, 1.05]), cfg=_cfg(),
                          plan={"tokens": 20 * NE, "cost_usd": 3.0})
    assert len(above["notes"]) == 1  # worse than the measurement: nothing to say


def test_with_nothing_measured_the_lowest_prediction_is_named(tmp_path):
    root = tmp_path / "runs" / "own"
    _write(root / "ladder" / "ladder.json", _ladder(ONE))
    table = quality_table(root, _cfg(), {"tokens": 20 * NE, "cost_usd": 1.0}, CPU)
    assert table["notes"] == ["nothing measured yet; lowest prediction: config's model, predicted (1.0306)"]
    # with a budget that buys a bigger model too, the lower of the two predictions is named
    from fmforge.model.counting import from_model_config, train_flops_per_token

    fpt = train_flops_per_token(from_model_config(_cfg().resolved_model()))
    plan = {"tokens": 20 * NE, "cost_usd": 1.0, "sizing": {"compute_flops": 100 * 20 * NE * fpt, "budget_usd": 9}}
    both = quality_table(root, _cfg(), plan, CPU)
    figures = {r["model"]: r["bits_per_byte"] for r in both["rows"]}
    assert figures["budget optimum, predicted"] < figures["config's model, predicted"]
    assert both["notes"] == [f"nothing measured yet; lowest prediction: budget optimum, predicted "
                             f"({figures['budget optimum, predicted']:.4f})"]


def test_a_prediction_past_four_passes_is_a_row_without_a_figure(tmp_path):
    # 20 × 106,816 = 2,136,320 tokens over 400,000 tokens of data: 5.3 passes
    lad = _ladder(ONE, data_tokens=400_000)
    _lowest_notes(tmp_path, {"a": 1.2}, ladder=lad, cfg=_cfg(), plan={"tokens": 20 * NE, "cost_usd": 1.0})
    table = quality_table(tmp_path / "runs" / "own", _cfg(), {"tokens": 20 * NE, "cost_usd": 1.0}, CPU,
                          data_tokens=400_000)
    row = _rows(table)["config's model, predicted"]
    assert row["bits_per_byte"] is None
    assert "no prediction: not predicted: repeats its data 5.3x" in row["basis"]
    assert row["basis"].count("repeat") == 2  # the ladder's warning, and no second note of our own


def test_a_repeating_prediction_with_data_but_no_ladder_data_gets_a_note(tmp_path):
    # the ladder knows no data size; the planner's does: 2,136,320 tokens over 100,000 is 21.4 passes
    table = _lowest_notes(tmp_path, {"a": 1.2}, ladder=_ladder(ONE), cfg=_cfg(),
                          plan={"tokens": 20 * NE, "cost_usd": 1.0})
    assert "repeat" not in _rows(table)["config's model, predicted"]["basis"]
    root = tmp_path / "runs" / "own"
    again = quality_table(root, _cfg(), {"tokens": 20 * NE, "cost_usd": 1.0}, CPU, data_tokens=100_000)
    basis = _rows(again)["config's model, predicted"]["basis"]
    assert "the config's model would repeat its data 21.4 times" in basis


def test_the_budget_optimum_row_is_priced_at_the_budget(tmp_path):
    from fmforge.model.counting import from_model_config, train_flops_per_token

    arch = from_model_config(_cfg().resolved_model())
    fpt = train_flops_per_token(arch)
    compute = 20 * NE * fpt  # exactly the config's shape (d_model 64 × 2) trained by the rule
    plan = {"tokens": 20 * NE, "cost_usd": 1.0, "sizing": {"compute_flops": compute, "budget_usd": 7.5}}
    table = _lowest_notes(tmp_path, {"a": 1.2}, ladder=_ladder(ONE), cfg=_cfg(), plan=plan)
    row = _rows(table)["budget optimum, predicted"]
    assert row["one_time_usd"] == 7.5 and row["option"] == "train"
    assert row["tokens"] == pytest.approx(20 * NE, rel=1e-6)
    assert row["bits_per_byte"] == pytest.approx(1.0 + 10.0 / NE ** 0.5, rel=1e-6)
    assert row["params"] == pytest.approx(count_parameters(_cfg().resolved_model()).total, rel=1e-6)
    # a budget that buys exactly one of the family's shapes is inside the family, not beyond it
    assert row["basis"].startswith("ladder, 2x its largest rung; between the family's shapes"), row["basis"]
    assert f"= the budget's {compute:.3g} FLOPs" in row["basis"]
    assert row["monthly_usd"] is None
