"""Plan versus actual on a finished (or killed) run directory."""

import pytest

from fmforge.plan.actual import compare_plan_to_actual
from fmforge.plan.errors import PlanError


def test_half_speed_run_shows_the_plan_twice_too_fast(tmp_path, finished_run):
    c = compare_plan_to_actual(finished_run(tmp_path))
    rows = {r["metric"]: r for r in c["rows"]}
    assert rows["tokens_per_s"]["error_pct"] == pytest.approx(100.0)
    assert rows["mfu"]["actual"] == pytest.approx(0.2)  # 500 tokens/s × 2e7 FLOPs / 5e10
    assert rows["wall_s"]["error_pct"] == pytest.approx(-50.0)
    assert rows["cost_usd"]["actual"] == pytest.approx(2.56 / 3600 * 2.0)  # 1280 tokens at 500/s, $2 an hour
    assert c["trainer_mfu"] == pytest.approx(0.2)


def test_a_torn_last_metrics_line_is_skipped(tmp_path, finished_run):
    run = finished_run(tmp_path, torn=True)
    (run / "stages.json").unlink()  # killed: no train summary, only the log
    c = compare_plan_to_actual(run)
    rows = {r["metric"]: r for r in c["rows"]}
    assert c["tokens"] == 10 * 128  # last whole record's step × tokens per step
    assert rows["tokens_per_s"]["actual"] == pytest.approx(500.0)


def test_nothing_to_compare(tmp_path):
    with pytest.raises(PlanError, match="plan.json does not exist"):
        compare_plan_to_actual(tmp_path)
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(PlanError, match="nothing measured yet"):
        compare_plan_to_actual(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(PlanError, match="metrics.jsonl:2"):
        compare_plan_to_actual(tmp_path)
