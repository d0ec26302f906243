"""``fmforge ladder`` end to end on a tiny corpus: every rung is trained on the
run's own tokens and evaluated by the eval stage, a rerun trains nothing, and
``fmforge plan`` predicts the config's model from the fitted law."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmforge.config import ModelConfig, load_config
from fmforge.ladder.run import rung_model, Rung
from fmforge.model.transformer import Transformer
from fmforge.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def _fmforge(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    done = subprocess.run([sys.executable, "-m", "fmforge", *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def laddered(tmp_path_factory, make_tiny_config):
    root = tmp_path_factory.mktemp("ladder")
    raw = make_tiny_config(root, data={"val_fraction": 0.2},
                           train={"tensorboard": False, "num_threads": 1, "dtype": "float32"})
    raw["ladder"] = {"sizes": ["32x1", "32x2", "32x3", "64x1"], "tokens_per_param": 2, "samples": 200}
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    first = _fmforge("ladder", str(path))
    return path, cfg, first


def _non_embedding_by_torch(model_cfg: ModelConfig) -> int:
    model = Transformer(model_cfg)
    skip = {id(model.embed.weight), id(model.lm_head.weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def test_each_rung_is_trained_on_its_budget_and_scored_by_the_eval_stage(laddered):
    path, cfg, first = laddered
    ladder = json.loads((cfg.run_dir / "ladder" / "ladder.json").read_text())
    assert [r["name"] for r in ladder["rungs"]] == ["d32-l1", "d32-l2", "d32-l3", "d64-l1"]
    per_step = cfg.train.micro_batch_size * cfg.model.seq_len
    for r in ladder["rungs"]:
        n = _non_embedding_by_torch(rung_model(cfg.resolved_model(), Rung(r["d_model"], r["n_layers"])))
        assert r["non_embedding_params"] == n
        assert 2 * n <= r["tokens"] < 2 * n + per_step  # whole steps of 2 tokens per parameter
        rung_dir = cfg.run_dir / "ladder" / r["name"]
        evaluated = json.loads((rung_dir / "eval.json").read_text())
        assert r["bits_per_byte"] == pytest.approx(evaluated["bits_per_byte"], rel=1e-4)
        # the rung read the run's own tokens, not a copy
        assert (rung_dir / "tokens").resolve() == (cfg.run_dir / "tokens").resolve()
    law = ladder["law"]
    # labelled with the rule the rungs realised (whole steps round 2 up), not the one asked
    realised = [r["tokens"] / r["non_embedding_params"] for r in ladder["rungs"]]
    assert min(realised) <= law["tokens_per_param"] <= max(realised) and ladder["form"].startswith("L(N) =")
    # 4 rungs determine L(N)'s 3 parameters too closely for a bootstrap: no
    # interval, and the user is told so rather than shown a zero-width one
    assert ladder["bootstrap"] == [] and any("no interval" in w for w in ladder["warnings"])
    shown = first.stdout + first.stderr
    assert "d64-l1" in shown and "predicted" in shown and "no interval" in shown


def test_a_rerun_trains_nothing(laddered):
    path, cfg, _ = laddered
    metrics = [cfg.run_dir / "ladder" / name / "metrics.jsonl" for name in ("d32-l1", "d32-l2", "d32-l3", "d64-l1")]
    before = [m.stat().st_mtime_ns for m in metrics]
    again = _fmforge("ladder", str(path))
    assert [m.stat().st_mtime_ns for m in metrics] == before
    assert "▶ train" not in again.stderr


def test_plan_predicts_the_configs_model_from_the_ladder(laddered):
    path, cfg, _ = laddered
    out = json.loads(_fmforge("plan", str(path), "--json").stdout)
    ladder = json.loads((cfg.run_dir / "ladder" / "ladder.json").read_text())
    predicted = out["ladder"]["planned"]
    n = _non_embedding_by_torch(cfg.resolved_model())
    assert predicted["non_embedding_params"] == n
    law = ladder["law"]
    meta = json.loads((cfg.run_dir / "tokens" / "meta.json").read_text())
    train_tokens = sum(f["tokens"] for f in meta["files"]["train"])
    epochs = law["tokens_per_param"] * n / train_tokens
    assert predicted["epochs"] == pytest.approx(epochs, rel=1e-3)
    if epochs > 4:  # the tiny corpus: the config's model by the ladder's rule repeats it
        assert "bits_per_byte" not in predicted
        assert any(f"{epochs:.1f} times" in w for w in predicted["warnings"])
    else:
        by_hand = law["E"] + law["A"] / n ** law["alpha"]
        assert predicted["bits_per_byte"] == pytest.approx(by_hand, rel=1e-9)
    assert "interval_90" not in predicted
