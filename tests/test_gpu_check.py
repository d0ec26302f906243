"""benchmarks/gpu_train_check.py, what benchmarks/gpu_check.sh runs on a GPU: its
--smoke mode runs every part in tiny dims on CPU (FSDP and HSDP on 2 gloo
processes, HSDP as 2 x 1) and writes one JSON with each part ok; the verdicts,
the HSDP layout and the kill of a part that overruns its budget are checked
without it."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmforge.config import load_config
from fmforge.model.counting import count_parameters

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load_check():
    sys.path.insert(0, str(BENCH))  # it imports measure_step from beside itself
    try:
        return importlib.import_module("gpu_train_check")
    finally:
        sys.path.remove(str(BENCH))


check = _load_check()


def test_hsdp_layout_is_two_replicas_on_an_even_count_and_none_on_one_process():
    assert check.hsdp_layout(1) is None
    assert check.hsdp_layout(2) == (2, 1)
    assert check.hsdp_layout(4) == (2, 2)
    assert check.hsdp_layout(8) == (2, 4)
    assert check.hsdp_layout(6) == (2, 3)
    assert check.hsdp_layout(3) == (3, 1)
    assert check.hsdp_layout(9) == (3, 3)


def _result(device: str, mfu: float | None, step_err: float, mem_err: float, fsdp_ok: bool = True) -> dict:
    parts = {
        "plan_eager": {"ok": True, "error_pct": {"step_time_s": step_err, "peak_memory_gb": mem_err}},
        "throughput_gpt2_350m": {"ok": mfu is not None, "mfu": mfu},
        "fsdp": {"ok": fsdp_ok},
        "hsdp": {"ok": None, "skipped": "1 process"},
    }
    result = {"device": device, "parts": parts}
    check.finish(result, time.monotonic())
    return result


def test_the_goals_are_judged_on_a_gpu_against_the_issue_figures():
    met = _result("cuda", 0.50, -15.0, 14.9)
    assert [g["met"] for g in met["goals"]] == [True, True, True]
    assert met["ok"] is True and met["goals_met"] is True  # a skipped part is not a failure
    assert met["verdict"] == "every part ran and passed; goals met"

    missed = _result("cuda", 0.499, 15.1, -3.0)
    assert [g["met"] for g in missed["goals"]] == [False, False, True]
    assert missed["ok"] is True and missed["goals_met"] is False
    assert "goals missed: mfu_350m, plan_step_time" in missed["verdict"]

    failed = _result("cuda", None, 0.0, 0.0, fsdp_ok=False)
    assert failed["ok"] is False
    assert failed["goals"][0]["met"] is False and "failed" in failed["goals"][0]["note"]
    assert failed["verdict"].startswith("parts failed: throughput_gpt2_350m, fsdp")


def test_off_a_gpu_the_goals_are_reported_but_not_judged():
    r = _result("cpu", 0.01, -99.0, -80.0)
    assert [g["met"] for g in r["goals"]] == [None, None, None]
    assert [g["measured"] for g in r["goals"]] == [0.01, -99.0, -80.0]
    assert r["goals_met"] is None and r["ok"] is True


def test_a_part_over_its_budget_is_killed_with_the_processes_it_started(tmp_path):
    """torchrun's workers hold GPUs: a timeout must not leave them running."""
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    with pytest.raises(check.PartFailed, match="timed out"):
        check.call([sys.executable, "-c", script], dict(os.environ), time.monotonic() + 3, "the sleeper")
    assert time.monotonic() - t0 < 20
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the grandchild {grandchild} survived the part's timeout")


@pytest.mark.slow
@pytest.mark.dist
def test_smoke_mode_runs_every_part_and_writes_one_json_with_each_ok(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_train_check.py"), "--device", "cpu", "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["complete"] is True and r["ok"] is True and r["goals_met"] is None
    assert list(r["parts"]) == list(check.BUDGETS)
    for name, part in r["parts"].items():
        assert part["ok"] is True, (name, part.get("error"))
    parts = r["parts"]

    # The throughput models are the presets' (shrunk), compiled.
    for preset in ("gpt2-350m", "gpt2-124m"):
        p = parts[f"throughput_{preset.replace('-', '_')}"]
        cfg = load_config(ROOT / "configs" / f"{preset}.yaml", check.smoke_overrides(preset))
        assert p["params"] == count_parameters(cfg.resolved_model()).total
        assert (p["micro_batch"], p["seq_len"]) == (cfg.train.micro_batch_size, cfg.model.seq_len)
        assert p["tokens_per_s"] > 0 and p["peak_memory_gb"] > 0 and "torch.compile" in p["compile"]
    assert parts["plan_eager"]["preset"] == "gpt2-350m" and parts["plan_eager"]["compile"] is False

    for mode in ("fsdp", "hsdp"):
        p = parts[mode]
        assert p["processes"] == 2 and p["mode_line_in_log"] and p["dcp_checkpoint"] and p["consolidated"]
        assert p["last_logged_step"] == check.SMOKE_TRAINER_STEPS and math.isfinite(p["final_loss"])
    assert (parts["hsdp"]["replicas"], parts["hsdp"]["shards"]) == (2, 1)
    assert parts["hsdp"]["expected_log_line"] == "hsdp on 2 process(es) (2 replicas × 1 shards)"

    meta = parts["meta_build_1b"]
    shrunk_1b = load_config(ROOT / "configs" / "llama-1b.yaml", check.smoke_overrides("llama-1b"))
    assert meta["params"] == count_parameters(shrunk_1b.resolved_model()).total and meta["tied"]
    assert sum(meta["local_numel_per_rank"]) == meta["params"] and len(meta["local_numel_per_rank"]) == 2
    assert len(meta["losses"]) == check.META_STEPS and all(math.isfinite(v) for v in meta["losses"])

    assert [g["goal"] for g in r["goals"]] == ["mfu_350m", "plan_step_time", "plan_memory"]
    assert all(g["met"] is None and g["measured"] is not None for g in r["goals"])
