import json

import pytest

from fmforge.config import config_from_dict


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's ~/.cache/fmforge from tests."""
    monkeypatch.setenv("FMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    # No test here needs this machine's own matmul peak (the hardware tests measure it): a fixed 50 GFLOP/s
    # for `cpu` keeps each `model: auto` test from timing torch.mm for 1-7 s on a busy machine.
    monkeypatch.setattr("fmforge.hardware.measure_cpu_peak_flops", lambda refresh=False, dtype="float32": 5e10)


@pytest.fixture
def finished_run():
    """Makes a run directory whose training went at ``speed`` × the planned tokens/s;
    ``torn``: its metrics.jsonl ends in a half-written line (a run killed mid-write)."""
    return _run


def _run(tmp_path, speed=0.5, torn=False):
    """A run whose training went at ``speed`` × the planned tokens/s."""
    plan = {"tokens": 1280.0, "tokens_per_s": 1000.0, "mfu": 0.4, "peak_flops": 5e10, "flops_per_token": 2e7,
            "num_gpus": 1, "price_per_gpu_hour": 2.0, "gpu": "cpu", "run": {"tokens_per_step": 128}}
    run = tmp_path / "runs" / "t"
    run.mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps(plan))
    (run / "config.yaml").write_text(config_from_dict({"name": "t", "data": {"sources": [
        {"name": "a", "paths": ["x"]}]}}).to_yaml())
    tps = 1000.0 * speed
    wall = 1280 / tps
    (run / "stages.json").write_text(json.dumps({"train": {"fingerprint": "x", "completed_at": 0, "summary": {
        "wall_s": wall, "tokens": 1280, "tokens_per_s": tps}}}))
    lines = [json.dumps({"step": s, "tokens_per_s": tps, "elapsed_s": s * wall / 10, "mfu": 0.2}) for s in range(1, 11)]
    text = "\n".join(lines) + "\n" + ('{"step": 11, "tokens_p' if torn else "")
    (run / "metrics.jsonl").write_text(text)
    return run
