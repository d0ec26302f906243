"""``eval.json``: every evaluation of a run, keyed by checkpoint step.

```
{"loss": ..., "bits_per_byte": ..., ...   the held-out figures of the latest step evaluated
 "per_source": {source: {...}},            (the same, per source)
 "steps": {"346": {"overall": {...}, "per_source": {...}, "stride": ..., ...}},
 "history": [{"step": 180, "loss": ..., ...}, ...],    one line per evaluation, in order
 "harness": {"346": {"tasks": {...}, "config": {...}}},   lm-eval results per step
 "against": {name: {"path", "params", "context", "bits_per_byte", "per_source": {...}}}}
                                           other models scored on the same held-out bytes
```
"""

from __future__ import annotations

import json
from typing import Any

from fmforge.rundir import ArtifactError, RunDir, atomic_write_json

HEADLINE = ("loss", "perplexity", "bits_per_byte", "gzip_bits_per_byte", "xz_bits_per_byte",
            "tokens", "bytes")


def read_eval(run: RunDir) -> dict[str, Any]:
    """The run's ``eval.json`` (empty when nothing was evaluated yet)."""
    if not run.eval_json.is_file():
        return {}
    try:
        return json.loads(run.eval_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{run.eval_json} is not valid JSON ({exc.msg}): move it aside and rerun "
                            "`fmforge eval RUN`") from exc


def record_heldout(run: RunDir, step: int, entry: dict[str, Any]) -> dict[str, Any]:
    """Add one held-out evaluation of ``step`` (``overall``, ``per_source`` ...);
    the top-level figures follow the highest step evaluated."""
    ev = read_eval(run)
    steps = ev.get("steps", {})
    steps[str(step)] = entry
    ev["steps"] = dict(sorted(steps.items(), key=lambda kv: int(kv[0])))
    ev.setdefault("history", []).append(
        {"step": step, **{k: entry["overall"].get(k) for k in HEADLINE[:5]},
         "stride": entry.get("stride")})
    latest = max(int(s) for s in ev["steps"])
    top = ev["steps"][str(latest)]
    ev.update({k: top["overall"].get(k) for k in HEADLINE})
    ev.update({"step": latest, "stride": top.get("stride"), "per_source": top["per_source"]})
    atomic_write_json(run.eval_json, ev)
    return ev


def record_harness(run: RunDir, step: int, results: dict[str, Any]) -> dict[str, Any]:
    """Store lm-eval results of ``step`` (tasks merge with earlier ones of that step)."""
    ev = read_eval(run)
    harness = ev.setdefault("harness", {})
    previous = harness.get(str(step), {"tasks": {}, "runs": []})
    previous["tasks"].update(results["tasks"])
    previous["runs"].append(results["config"])
    harness[str(step)] = previous
    atomic_write_json(run.eval_json, ev)
    return ev


def record_against(run: RunDir, name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Store another model's bits per byte on the run's held-out bytes under
    ``against[name]`` (a new scoring of the same name replaces the old)."""
    ev = read_eval(run)
    ev.setdefault("against", {})[name] = result
    atomic_write_json(run.eval_json, ev)
    return ev
