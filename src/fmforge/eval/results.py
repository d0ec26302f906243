"""``eval.json``: every evaluation of the run's current model, keyed by checkpoint
step, and other models scored on the run's held-out bytes.

```
{"loss": ..., "bits_per_byte": ..., ...   the held-out figures of the current model's latest step
 "step": 346, "lineage": "...",             (and the training lineage of its checkpoints)
 "per_source": {source: {...}},            (the same, per source)
 "steps": {"346": {"overall": {...}, "per_source": {...}, "stride": ..., "lineage": ...}},
 "history": [{"step": 180, "lineage": ..., "loss": ..., ...}, ...],   one line per evaluation
 "harness": {"346": {"tasks": {...}, "config": {...}, "lineage": ...}},  lm-eval results per step
 "against": {name: {"path", "params", "context", "bits_per_byte", "per_source": {...},
                    "heldout_data": ...}}   other models scored on the same held-out bytes
}
```

Evaluations belong to the model they scored. When training starts afresh (a
changed config, ``--force``) the trainer moves the earlier model's evaluations
into ``checkpoints.previous/<time>/eval.json`` with its checkpoints
(``fmforge.rundir.set_aside_evaluations``); an evaluation recorded here of a
checkpoint of another lineage moves the ones of other lineages aside the same
way, including those of an eval.json written before lineages were recorded
whose checkpoints are gone. ``against`` entries stay (they score other models),
each with the data stage's output it was scored on (``heldout_data``);
``current_against`` leaves out those the data stage has since replaced.
"""

from __future__ import annotations

from typing import Any

from fmforge.rundir import (
    EVAL_HEADLINE,
    RunDir,
    against_stale,
    atomic_write_json,
    heldout_data,
    new_aside_folder,
    read_eval_json,
    refresh_eval_top,
    set_aside_evaluations,
)

HEADLINE = EVAL_HEADLINE


def read_eval(run: RunDir) -> dict[str, Any]:
    """The run's ``eval.json`` (empty when nothing was evaluated yet)."""
    return read_eval_json(run)


def checkpoint_lineages(run: RunDir) -> dict[int, str | None]:
    """The training lineage of each checkpoint in ``checkpoints/``, by step."""
    from fmforge.train.checkpoint import list_checkpoints, load_trainer_state

    found: dict[int, str | None] = {}
    for step, ckpt in list_checkpoints(run.checkpoints):
        try:
            found[step] = load_trainer_state(ckpt).get("lineage")
        except ValueError:  # a damaged trainer_state.json: nothing known of it
            found[step] = None
    return found


def _claim(run: RunDir, lineage: str | None, lineages: dict[int, str | None]) -> None:
    """Before an evaluation of ``lineage`` is recorded: set aside evaluations of
    other lineages, and those without one (an earlier fmforge's) unless the
    checkpoint of their step is of this lineage."""
    if lineage is None:  # a checkpoint of an fmforge that did not record lineages
        return

    def other(step: int, recorded: str | None) -> bool:
        return (recorded if recorded is not None else lineages.get(step)) != lineage

    ev = read_eval(run)
    if not any(other(int(s), e.get("lineage")) for key in ("steps", "harness") for s, e in (ev.get(key) or {}).items()):
        return
    aside = new_aside_folder(run, "evaluations in eval.json of another model than the run's checkpoints "
                                  "(an earlier one's, or recorded without their model's lineage, their "
                                  "checkpoints gone)")
    moved = set_aside_evaluations(run, aside, other)
    from fmforge.progress import log

    log(f"eval.json held {moved} evaluation(s) of another model than the current checkpoints: moved to "
        f"{aside / 'eval.json'}")


def record_heldout(run: RunDir, step: int, entry: dict[str, Any], lineage: str | None = None) -> dict[str, Any]:
    """Add one held-out evaluation of ``step`` (``overall``, ``per_source`` ...) of
    the model of ``lineage`` (by default that of the checkpoint of ``step``); the
    top-level figures follow the current model's highest step evaluated."""
    lineages = checkpoint_lineages(run)
    lineage = lineage or lineages.get(step)
    _claim(run, lineage, lineages)
    ev = read_eval(run)
    if lineage is not None:
        entry = {**entry, "lineage": lineage}
    steps = ev.get("steps", {})
    steps[str(step)] = entry
    ev["steps"] = dict(sorted(steps.items(), key=lambda kv: int(kv[0])))
    line = {"step": step, **{k: entry["overall"].get(k) for k in HEADLINE[:5]}, "stride": entry.get("stride")}
    if lineage is not None:
        line["lineage"] = lineage
    ev.setdefault("history", []).append(line)
    _adopt(ev, lineage, lineages)
    ev = refresh_eval_top(ev)
    atomic_write_json(run.eval_json, ev)
    return ev


def _adopt(ev: dict[str, Any], lineage: str | None, lineages: dict[int, str | None]) -> None:
    """Name the lineage of evaluations an earlier fmforge recorded without one,
    whose checkpoint is of ``lineage`` (``_claim`` moved the others aside)."""
    if lineage is None:
        return
    for entry in [*(ev.get("steps") or {}).values(), *(ev.get("harness") or {}).values()]:
        entry.setdefault("lineage", lineage)
    for line in ev.get("history") or []:
        line.setdefault("lineage", lineage)


def record_harness(run: RunDir, step: int, results: dict[str, Any]) -> dict[str, Any]:
    """Store lm-eval results of ``step`` (tasks merge with earlier ones of that step)."""
    lineages = checkpoint_lineages(run)
    lineage = lineages.get(step)
    _claim(run, lineage, lineages)
    ev = read_eval(run)
    harness = ev.setdefault("harness", {})
    previous = harness.get(str(step), {"tasks": {}, "runs": []})
    previous["tasks"].update(results["tasks"])
    previous["runs"].append(results["config"])
    if lineage is not None:
        previous["lineage"] = lineage
    harness[str(step)] = previous
    _adopt(ev, lineage, lineages)
    atomic_write_json(run.eval_json, ev)
    return ev


def record_against(run: RunDir, name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Store another model's bits per byte on the run's held-out bytes under
    ``against[name]`` (a new scoring of the same name replaces the old), with the
    data stage's output it was scored on (``heldout_data``)."""
    ev = read_eval(run)
    data = heldout_data(run)
    ev.setdefault("against", {})[name] = {**result, **({"heldout_data": data} if data else {})}
    atomic_write_json(run.eval_json, ev)
    return ev


def current_against(run: RunDir, ev: dict[str, Any] | None = None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(the ``against`` entries scored on the run's current held-out bytes, a note
    for each one left out because the data stage has since made other bytes)."""
    ev = read_eval(run) if ev is None else ev
    current, notes = {}, []
    for name, r in sorted((ev.get("against") or {}).items()):
        why = against_stale(run, r)
        if why is None:
            current[name] = r
        else:
            notes.append(f"{name}: left out as stale, {why}; rescore it with "
                         f"`fmforge eval {run.root} --against {r.get('path', name)}`")
    return current, notes
