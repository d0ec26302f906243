"""eval.json's figures belong to the model they scored (issue 29, defect 1).

A tiny run is trained and evaluated, another model is scored on its held-out
bytes, then the run is trained again with another width and fewer steps: the
trainer starts afresh, and every reader (eval.json's top level, the line `fmforge
run` ends with, the report, `fmforge compare`, `plan --decide`) must show the new
model's figure, which the eval stage returned when it scored it, not the discarded
model's. Scores of other models stay while the held-out bytes are the same and are
marked stale when the data stage makes other ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fmforge.config import config_from_dict
from fmforge.eval.compare import render_compare
from fmforge.eval.headline import headline
from fmforge.eval.report import fmt, heldout_section
from fmforge.eval.results import current_against, read_eval
from fmforge.hardware import get_hardware
from fmforge.pipeline import run_pipeline
from fmforge.plan.quality import quality_table
from fmforge.rundir import RunDir


def _evaluated(run: RunDir, outcomes) -> dict:
    """The step the eval stage scored, and the figure it recorded for that step."""
    step = next(o.summary for o in outcomes if o.stage == "eval")["step"]
    entry = json.loads(run.eval_json.read_text())["steps"][str(step)]
    return {"step": step, "bits_per_byte": entry["overall"]["bits_per_byte"]}


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, make_tiny_config):
    """(run, raw config of the second model, the first model's figure, the second's)."""
    from fmforge.eval.against import evaluate_against

    tmp = tmp_path_factory.mktemp("restart")
    raw = make_tiny_config(tmp, train={"max_steps": 20, "checkpoint_every": 10})
    run, outcomes = run_pipeline(config_from_dict(raw))
    first = _evaluated(run, outcomes)
    assert first["step"] == 20
    # another model on the same held-out bytes: the run's own first model, as an fmforge run
    shutil.copytree(run.root, tmp / "first")
    import torch

    evaluate_against(run, [tmp / "first"], torch.device("cpu"))
    raw2 = json.loads(json.dumps(raw))
    raw2["model"]["d_model"] = 48
    raw2["train"]["max_steps"] = 10
    run, outcomes = run_pipeline(config_from_dict(raw2))
    second = _evaluated(run, outcomes)
    assert second["step"] == 10
    assert abs(second["bits_per_byte"] - first["bits_per_byte"]) > 1e-3  # two models, two figures
    return run, raw2, first["bits_per_byte"], second["bits_per_byte"]


def _copy(restarted, tmp_path: Path, **data) -> tuple[RunDir, dict]:
    """A copy of the restarted run to change (the module's run stays as built)."""
    run, raw, _, _ = restarted
    raw = json.loads(json.dumps(raw))
    raw["out_dir"] = str(tmp_path / "run")
    raw["data"].update(data)
    shutil.copytree(run.root, tmp_path / "run")
    return RunDir(tmp_path / "run"), raw


def test_after_a_fresh_restart_every_reader_shows_the_new_model(restarted):
    run, _, old, new = restarted
    ev = read_eval(run)
    assert ev["step"] == 10 and ev["bits_per_byte"] == pytest.approx(new, abs=1e-4)
    assert sorted(ev["steps"]) == ["10"]  # the discarded model's step 20 is not the run's any more
    assert f"model {new:.3f}" in headline(run)
    assert f"model {old:.3f}" not in headline(run)
    html = heldout_section(run)
    assert "Checkpoint of step 10" in html and fmt(new) in html
    compared = render_compare([run, run])
    assert fmt(new) in compared and fmt(old) not in compared.split("Other models")[0]
    decision = quality_table(run.root, None, {}, get_hardware("cpu", measure_cpu=False))
    own = next(r for r in decision["rows"] if r["model"].endswith("(this run)"))
    assert own["bits_per_byte"] == pytest.approx(new, abs=1e-4) and own["basis"] == "measured at step 10"
    # the other model scored before the restart stays: the held-out bytes are the same
    assert [r["model"] for r in decision["rows"]] == ["run (this run)", "first"]
    assert current_against(run, ev)[1] == []


def test_the_earlier_models_evaluations_are_kept_with_its_checkpoints(restarted):
    run, _, old, _ = restarted
    asides = sorted((run.root / "checkpoints.previous").iterdir())
    assert len(asides) == 1
    kept = json.loads((asides[0] / "eval.json").read_text())
    assert kept["step"] == 20 and kept["bits_per_byte"] == pytest.approx(old, abs=1e-4)
    assert (asides[0] / "step-000020").is_dir()
    assert "against" not in kept  # other models' scores stay with the run's held-out bytes


def test_an_eval_json_of_an_earlier_fmforge_shows_the_current_model_after_the_next_eval(
        restarted, tmp_path):
    """What the old code left after a restart: both models' steps, no lineage, and the
    discarded model's step 20 at the top level."""
    from fmforge.eval.stage import run_eval_stage

    run, raw = _copy(restarted, tmp_path)
    _, _, old, new = restarted
    ev = read_eval(run)
    # the first model's eval.json, as it was before the restart (the fixture copied it)
    discarded = json.loads((Path(restarted[0].root).parent / "first" / "eval.json").read_text())
    shutil.rmtree(run.root / "checkpoints.previous")
    shutil.copytree(Path(restarted[0].root).parent / "first" / "checkpoints",
                    run.root / "checkpoints.previous" / "20250101-000000")
    steps = {"10": ev["steps"]["10"], "20": discarded["steps"]["20"]}
    for entry in steps.values():
        entry.pop("lineage", None)
    legacy = {**{k: v for k, v in discarded.items() if k not in ("lineage", "steps", "history")},
              "steps": steps, "history": [{"step": 20}, {"step": 10}], "against": ev["against"]}
    run.eval_json.write_text(json.dumps(legacy))
    assert f"model {old:.3f}" in headline(run)  # as the old code left it

    run_eval_stage(config_from_dict(raw), run)
    ev = read_eval(run)
    assert ev["step"] == 10 and ev["bits_per_byte"] == pytest.approx(new, abs=1e-4)
    assert sorted(ev["steps"]) == ["10"] and f"model {new:.3f}" in headline(run)
    assert ev["against"] == legacy["against"]
    moved = [json.loads(p.read_text()) for p in (run.root / "checkpoints.previous").glob("*/eval.json")]
    assert [sorted(m["steps"]) for m in moved] == [["20"]]


def test_another_models_score_on_other_held_out_bytes_is_stale(restarted, tmp_path):
    run, raw = _copy(restarted, tmp_path, val_fraction=0.3)  # the data stage splits anew
    before = read_eval(run)["against"]["first"]["bits_per_byte"]
    run, _ = run_pipeline(config_from_dict(raw))
    ev = read_eval(run)
    assert ev["against"]["first"]["bits_per_byte"] == before  # kept, for the record ...
    current, notes = current_against(run, ev)
    assert current == {} and len(notes) == 1 and "first" in notes[0]  # ... but not current
    decision = quality_table(run.root, None, {}, get_hardware("cpu", measure_cpu=False))
    assert [r["model"] for r in decision["rows"]] == ["run (this run)"]
    assert any("first" in n and "held-out" in n for n in decision["notes"])
    html = heldout_section(run)
    assert "first" in html and "stale" in html and fmt(before) not in html
    compared = render_compare([run, run])
    assert "stale" in compared and fmt(before) not in compared


def test_a_shortened_wsd_run_shows_its_new_last_step_not_the_set_aside_one(tmp_path, make_tiny_config):
    """Under WSD a shorter max_steps continues from before the decay began; the
    checkpoints after it go aside, and their evaluations with them."""
    train = {"max_steps": 20, "schedule": "wsd", "decay_fraction": 0.25, "warmup_steps": 2,
             "checkpoint_every": 4, "keep_checkpoints": 10, "eval_every": 1000}
    raw = make_tiny_config(tmp_path, train=train)
    run, _ = run_pipeline(config_from_dict(raw))
    assert read_eval(run)["step"] == 20
    raw["train"]["max_steps"] = 12  # the decay now begins at step 9: continue from step 8
    run, outcomes = run_pipeline(config_from_dict(raw))
    shortened = _evaluated(run, outcomes)
    assert shortened["step"] == 12
    ev = read_eval(run)
    assert ev["step"] == 12 and ev["bits_per_byte"] == shortened["bits_per_byte"]
    assert f"model {shortened['bits_per_byte']:.3f}" in headline(run)
    (aside,) = (run.root / "checkpoints.previous").iterdir()
    assert sorted(json.loads((aside / "eval.json").read_text())["steps"]) == ["20"]


def test_a_score_recorded_before_fmforge_named_the_held_out_bytes_is_judged_by_time(tmp_path):
    """eval.json of an earlier fmforge: an ``against`` entry without the data stage's
    output it was scored on is stale when the data stage ran after it was scored."""
    from fmforge.rundir import atomic_write_json

    run = RunDir(tmp_path)
    run.mark_complete("data", "fp", {})
    done = run.stage_record("data")["completed_at"]
    before, after = {"path": "/m/a", "bits_per_byte": 1.0, "evaluated_at": done - 60}, \
        {"path": "/m/b", "bits_per_byte": 1.1, "evaluated_at": done + 60}
    atomic_write_json(run.eval_json, {"against": {"a": before, "b": after}})
    current, notes = current_against(run)
    assert list(current) == ["b"] and len(notes) == 1 and notes[0].startswith("a: ")
