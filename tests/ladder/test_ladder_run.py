"""``fmforge ladder`` around its training, fast: the rungs' trainer and eval stage
are replaced by stand-ins that record what they were asked and score a known law,
so what the ladder itself decides is checked: which rungs train again (the
stage records), the links to the run's own data, tokenizer and tokens, each rung's
budget, the rows and warnings of ``ladder.json``, the fit's backtest and the
errors a user meets. The real training is tested end to end in test_ladder.py."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import yaml

from fmforge.config import ModelConfig, load_config
from fmforge.ladder import run as ladder_run
from fmforge.ladder.fit import Point
from fmforge.ladder.run import LadderError, Rung, fit_ladder, on_family, parse_sizes, rung_model
from fmforge.model.transformer import Transformer
from fmforge.pipeline import prepare_run_dir, run_pipeline
from fmforge.plan.scaling import ScalingLaw
from fmforge.rundir import RunDir

TRUE = ScalingLaw(E=1.0, A=40.0, alpha=0.35, tokens_per_param=2)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_tiny_config):
    root = tmp_path_factory.mktemp("ladder-run")
    raw = make_tiny_config(root, data={"val_fraction": 0.2}, train={"tensorboard": False, "num_threads": 1})
    path = root / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    return cfg


def _fresh(cfg, tmp_path):
    """The prepared run's data, tokenizer and tokens under a new run directory (a
    copy of its records and links to its artifacts), so each test starts without rungs."""
    new = cfg.model_copy(update={"out_dir": str(tmp_path / "run")})
    root = new.run_dir
    root.mkdir(parents=True)
    for name in ("data", "tokenizer", "tokens"):
        (root / name).symlink_to(cfg.run_dir / name, target_is_directory=True)
    (root / "stages.json").write_text((cfg.run_dir / "stages.json").read_text())
    return new


@pytest.fixture
def stages(monkeypatch):
    """The trainer and the eval stage replaced: each call recorded; a rung 'trains'
    its configured steps (or ``tokens_of[name]`` tokens) and scores TRUE's loss."""
    calls = {"train": [], "eval": [], "tokens_of": {}, "bpb_of": {}}

    def train(rcfg, rung_run, fp, fresh, lineage):
        name = rung_run.root.name
        calls["train"].append({"name": name, "fresh": fresh, "cfg": rcfg, "lineage": lineage, "fp": fp,
                               "config_yaml": rung_run.config.read_text()})
        if name in calls["tokens_of"]:
            tokens = calls["tokens_of"][name]
        else:
            tokens = rcfg.train.max_steps * rcfg.train.tokens_per_step(rcfg.model.seq_len, 1)
        return {"tokens": tokens, "steps": rcfg.train.max_steps or 7, "wall_s": 0.25}

    def evaluate(rcfg, rung_run):
        name = rung_run.root.name
        calls["eval"].append(name)
        n = ladder_run.non_embedding_params(rcfg.model)
        bpb = calls["bpb_of"].get(name, TRUE.E + TRUE.A / n ** TRUE.alpha)
        return {"bits_per_byte": bpb, "loss": 0.5} if bpb is not None else {"loss": 0.5}

    monkeypatch.setattr(ladder_run, "run_train_stage", train)
    monkeypatch.setattr(ladder_run, "run_eval_stage", evaluate)
    # the picture takes seconds to draw: drawn for real in one test only
    calls["plots"] = []
    monkeypatch.setattr(ladder_run, "plot_ladder", lambda result, path: calls["plots"].append((result, path)))
    return calls


SIZES = "8x1,16x1,16x2,24x1,24x2"


def _ladder(cfg, sizes=SIZES, **kw):
    kw.setdefault("tokens_per_param", 2.0)
    kw.setdefault("samples", 10)
    return ladder_run.run_ladder(cfg, prepare_run_dir(cfg), parse_sizes(sizes), **kw)


def test_a_rung_trains_once_and_again_only_when_its_inputs_change_or_when_forced(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    first = _ladder(cfg)
    assert stages["plots"] == [(first, cfg.run_dir / "ladder" / "ladder.png")]
    names = ["d8-l1", "d16-l1", "d16-l2", "d24-l1", "d24-l2"]
    assert [c["name"] for c in stages["train"]] == names and stages["eval"] == names
    assert not any(c["fresh"] for c in stages["train"])
    for c in stages["train"]:  # the rung's config was written before it trained, and is the one it trained
        assert yaml.safe_load(c["config_yaml"])["model"]["d_model"] == c["cfg"].model.d_model
        assert c["lineage"] == c["fp"]
    stages["train"].clear(), stages["eval"].clear()
    _ladder(cfg)  # nothing changed: nothing trains or evaluates again
    assert stages["train"] == [] and stages["eval"] == []
    # an evaluation lost: only that rung is evaluated again, not trained
    RunDir(cfg.run_dir / "ladder" / "d16-l2").invalidate("eval")
    _ladder(cfg)
    assert stages["train"] == [] and stages["eval"] == ["d16-l2"]
    stages["eval"].clear()
    _ladder(cfg, force=True)  # forced: every rung trains afresh and is evaluated again
    assert [c["name"] for c in stages["train"]] == names and all(c["fresh"] for c in stages["train"])
    assert stages["eval"] == names
    stages["train"].clear(), stages["eval"].clear()
    # another seed is another rung: all train again (not fresh: their own checkpoints are not theirs)
    _ladder(cfg.model_copy(update={"seed": cfg.seed + 1}))
    assert [c["name"] for c in stages["train"]] == names and stages["eval"] == names
    # a changed budget retrains: 3 tokens per parameter are more steps
    stages["train"].clear(), stages["eval"].clear()
    _ladder(cfg, tokens_per_param=3.0)
    assert len(stages["train"]) == 5


def test_a_rung_reads_the_runs_own_data_through_relative_links(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    rung_dir = cfg.run_dir / "ladder" / "d16-l1"
    rung_dir.mkdir(parents=True)
    (rung_dir / "tokens").symlink_to(tmp_path, target_is_directory=True)  # stale: somewhere else
    (rung_dir / "tokenizer").symlink_to(tmp_path / "gone", target_is_directory=True)  # dangling
    _ladder(cfg)
    run = RunDir(cfg.run_dir)
    for rung in ("d8-l1", "d16-l1", "d24-l2"):
        root = cfg.run_dir / "ladder" / rung
        for name in ("data", "tokenizer", "tokens"):
            link = root / name
            assert link.is_symlink() and not os.path.isabs(os.readlink(link))
            assert link.resolve() == (cfg.run_dir / name).resolve()
        # the rung carries the records of the stages it reads, so its trainer trusts them
        rung_records = RunDir(root).stage_records()
        for stage in ("data", "tokenizer", "tokenize"):
            assert rung_records[stage]["fingerprint"] == run.stage_record(stage)["fingerprint"]
            assert rung_records[stage]["output"] == run.stage_record(stage)["output"]


def test_each_rung_trains_its_tokens_per_parameter_in_whole_steps(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    result = _ladder(cfg, tokens_per_param=3.0)
    per_step = cfg.train.micro_batch_size * cfg.model.seq_len
    for c, row in zip(stages["train"], result["rungs"]):
        rcfg = c["cfg"]
        n = row["non_embedding_params"]
        steps = rcfg.train.max_steps
        assert 3 * n <= steps * per_step < 3 * n + per_step  # the fewest whole steps reaching 3 N
        assert rcfg.train.max_minutes is None
        assert 1 <= rcfg.train.warmup_steps <= max(1, steps // 10) and rcfg.train.warmup_steps <= cfg.train.warmup_steps
        assert rcfg.train.eval_every == steps  # one evaluation, at the end
        assert 1 <= rcfg.train.checkpoint_every <= min(steps, cfg.train.checkpoint_every)
        assert rcfg.train.tensorboard is False
        assert rcfg.out_dir == str(cfg.run_dir / "ladder" / row["name"])
        assert (rcfg.model.d_model, rcfg.model.n_layers) == (row["d_model"], row["n_layers"])
        assert rcfg.model.vocab_size == cfg.resolved_model().vocab_size and rcfg.model.seq_len == cfg.model.seq_len
    # the largest rung is long enough for a tenth of warmup and a checkpoint before its end
    last = stages["train"][-1]["cfg"].train
    assert last.max_steps > 20 and last.warmup_steps == min(cfg.train.warmup_steps, last.max_steps // 10)
    assert last.checkpoint_every == min(cfg.train.checkpoint_every, last.max_steps)


def test_the_rows_say_what_each_rung_trained_and_where_the_law_puts_it(prepared, stages, tmp_path, monkeypatch):
    from fmforge.ladder.plot import plot_ladder

    monkeypatch.setattr(ladder_run, "plot_ladder", plot_ladder)
    cfg = _fresh(prepared, tmp_path)
    result = _ladder(cfg)
    meta = json.loads((cfg.run_dir / "tokens" / "meta.json").read_text())
    assert result["data_tokens"] == meta["train_tokens"]
    law = ScalingLaw.from_dict(result["law"])
    for row in result["rungs"]:
        model = rung_model(cfg.resolved_model(), Rung(row["d_model"], row["n_layers"]))
        torch_model = Transformer(model)
        embed = {id(torch_model.embed.weight), id(torch_model.lm_head.weight)}
        total = sum(p.numel() for p in {id(p): p for p in torch_model.parameters()}.values())
        n = sum(p.numel() for p in torch_model.parameters() if id(p) not in embed)
        assert row["non_embedding_params"] == n and row["params"] == total and row["params"] > n
        assert row["n_heads"] == model.n_heads
        assert row["tokens_per_param"] == pytest.approx(row["tokens"] / n, abs=1e-3)
        assert row["epochs"] == pytest.approx(row["tokens"] / meta["train_tokens"], abs=1e-4)
        assert row["bits_per_byte"] == pytest.approx(TRUE.E + TRUE.A / n ** TRUE.alpha)
        assert row["fit"] == pytest.approx(row["bits_per_byte"], rel=1e-4)  # the law through exact points
        assert row["fit"] == pytest.approx(law.predict(n), rel=1e-12)
        assert row["train_seconds"] == 0.25 and row["loss"] == 0.5 and row["seconds"] >= 0
    assert result["budget"]["tokens_per_param"] == 2.0
    assert result["budget"]["realised_tokens_per_param"] == pytest.approx(result["law"]["tokens_per_param"])
    on_disk = json.loads((cfg.run_dir / "ladder" / "ladder.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert (cfg.run_dir / "ladder" / "ladder.png").stat().st_size > 0
    # the config's own model, by the law
    target = result["target"]
    assert target["non_embedding_params"] == ladder_run.non_embedding_params(cfg.resolved_model())
    assert target["model"] == cfg.resolved_model().model_dump(mode="json")
    assert target["extrapolation"] == pytest.approx(
        target["non_embedding_params"] / max(r["non_embedding_params"] for r in result["rungs"]), abs=1e-3)


def test_rungs_of_uneven_rules_or_many_epochs_are_warned_about(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    n = {name: ladder_run.non_embedding_params(rung_model(cfg.resolved_model(), r))
         for name, r in ((r.name, r) for r in parse_sizes(SIZES))}
    data = json.loads((cfg.run_dir / "tokens" / "meta.json").read_text())["train_tokens"]
    # every rung exactly 2 tokens per parameter: no warning of uneven rules
    stages["tokens_of"].update({name: 2 * v for name, v in n.items()})
    even = _ladder(cfg)
    assert result_rule(even) == pytest.approx(2.0)
    assert not any("whole steps" in w for w in even["warnings"])
    # one rung 4% over, the rest exact: still one rule (5% is the limit)
    stages["tokens_of"]["d16-l2"] = 2.08 * n["d16-l2"]
    assert not any("whole steps" in w for w in _ladder(cfg, force=True)["warnings"])
    # one rung 7% over: labelled with the geometric mean, and said
    stages["tokens_of"]["d16-l2"] = 2.14 * n["d16-l2"]
    uneven = _ladder(cfg, force=True)
    assert result_rule(uneven) == pytest.approx(2.0 * 1.07 ** 0.2, rel=1e-9)
    # the backtest refits at the ladder's own rule, not at the rule its four smaller rungs share
    assert uneven["backtest"]["law"]["tokens_per_param"] == result_rule(uneven)
    (w,) = [w for w in uneven["warnings"] if "whole steps" in w]
    assert "2 to 2.14 tokens per parameter" in w and "the asked 2 up" in w and "mean, 2.03" in w
    # epochs: a rung over exactly 4 passes over the run's tokens is named, one at 4 is not
    stages["tokens_of"].update({"d24-l1": 4 * data, "d24-l2": 4.2 * data})
    repeated = _ladder(cfg, force=True)
    (w,) = [w for w in repeated["warnings"] if "repeat the run's" in w]
    assert "d24-l2 (4.2 epochs)" in w and "d24-l1" not in w and f"{data:,} training tokens" in w


def result_rule(result):
    return result["law"]["tokens_per_param"]


def test_a_minutes_budget_is_shared_by_the_rungs_and_fits_the_two_variable_law(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    sizes = "8x1,16x1,16x2,24x1,24x2,32x1,32x2"
    rungs = parse_sizes(sizes)
    law2 = ScalingLaw(E=1.0, A=40.0, alpha=0.35, B=300.0, beta=0.3)
    ns = {r.name: ladder_run.non_embedding_params(rung_model(cfg.resolved_model(), r)) for r in rungs}
    # the same minutes each: a smaller rung reads more tokens per parameter (and each
    # rung its own speed, so that N and D are not tied by one power law)
    speed = dict(zip(ns, (1.0, 1.7, 0.8, 1.3, 0.6, 1.9, 1.1)))
    tokens = {name: speed[name] * 3e9 / n ** 0.9 for name, n in ns.items()}
    stages["tokens_of"].update(tokens)
    stages["bpb_of"].update({name: law2.predict(n, tokens[name]) for name, n in ns.items()})
    result = _ladder(cfg, sizes, tokens_per_param=None, minutes=14.0)
    for c in stages["train"]:
        assert c["cfg"].train.max_minutes == pytest.approx(2.0) and c["cfg"].train.max_steps is None
    assert result["budget"] == {"minutes": 14.0, "minutes_per_rung": 2.0}
    assert result["form"] == "L(N, D) = E + A/N^alpha + B/D^beta"
    law = ScalingLaw.from_dict(result["law"])
    assert not law.one_variable
    assert (law.E, law.A, law.alpha, law.B, law.beta) == pytest.approx((1.0, 40.0, 0.35, 300.0, 0.3), rel=1e-3)
    for row in result["rungs"]:  # each rung's fit at its own tokens
        assert row["fit"] == pytest.approx(law2.predict(row["non_embedding_params"], row["tokens"]), rel=1e-5)
    assert len(result["bootstrap"]) == 10  # 7 rungs: two more than L(N, D)'s 5 parameters
    # the config's model at the tokens its own steps train
    planned = cfg.train.max_steps * cfg.train.micro_batch_size * cfg.model.seq_len
    assert result["target"]["tokens"] == planned
    assert result["target"]["bits_per_byte"] == pytest.approx(
        law.predict(result["target"]["non_embedding_params"], planned), rel=1e-9)
    # a config with a minutes budget of its own has no step count: no tokens to predict at
    open_ended = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": None,
                                                                              "max_minutes": 5.0})})
    again = ladder_run.run_ladder(open_ended, prepare_run_dir(open_ended), rungs, tokens_per_param=None,
                                  minutes=14.0, samples=10)
    assert "bits_per_byte" not in again["target"] and "token count" in again["target"]["note"]


def test_what_a_ladder_refuses(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    with pytest.raises(LadderError, match="at least 3 rungs.*got 2.*--sizes"):
        _ladder(cfg, "8x1,16x1")
    with pytest.raises(ValueError, match="one of the two"):
        _ladder(cfg, tokens_per_param=2.0, minutes=5.0)
    with pytest.raises(ValueError, match="one of the two"):
        _ladder(cfg, tokens_per_param=None, minutes=None)
    stages["bpb_of"]["d16-l2"] = None
    with pytest.raises(ValueError, match="d16-l2.*no bits per byte.*held-out split may be empty"):
        _ladder(cfg)
    for missing in ("tokenize", "tokenizer", "data"):
        bare = cfg.model_copy(update={"out_dir": str(tmp_path / f"bare-{missing}")})
        bare.run_dir.mkdir()
        records = json.loads((cfg.run_dir / "stages.json").read_text())
        del records[missing]
        (bare.run_dir / "stages.json").write_text(json.dumps(records))
        for name in ("data", "tokenizer", "tokens"):
            (bare.run_dir / name).symlink_to(cfg.run_dir / name, target_is_directory=True)
        with pytest.raises(LadderError, match="has none yet.*fmforge data CONFIG.*fmforge tokenize CONFIG"):
            _ladder(bare)
        assert not (bare.run_dir / "ladder").exists()


def test_the_ladder_tells_its_law_and_backtest(prepared, stages, tmp_path, capsys):
    cfg = _fresh(prepared, tmp_path)
    result = _ladder(cfg)
    err = " ".join(capsys.readouterr().err.split())
    law = result["law"]
    assert f"L(N) = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} at {law['tokens_per_param']:.3g} " \
           "tokens per parameter over 5 rungs" in err
    bt = result["backtest"]
    assert f"fitted without its largest rung (d24-l2), the law predicts it at {bt['predicted']:.4f}" in err
    assert f"measured {bt['measured']:.4f}" in err
    assert "ladder rung 1/5: d8-l1" in err and "ladder rung 5/5: d24-l2" in err


# fit_ladder on its own: the warnings and figures of ladder.json from known points


def _one(law, sizes, noise=()):
    return [Point(n, law.tokens_per_param * n, law.predict(n) * (noise[i] if i < len(noise) else 1.0))
            for i, n in enumerate(sizes)]


SIX = (1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5)


def test_a_clean_ladder_has_no_warnings_and_its_figures():
    points = _one(TRUE, SIX)
    result = fit_ladder(points, 2.0, samples=12, seed=3)
    assert result["warnings"] == []
    assert result["form"] == "L(N) = E + A/N^alpha" and result["n_points"] == 6
    assert len(result["bootstrap"]) == 12 and result["bootstrap_resamples"] == 12
    assert result["max_abs_residual"] < 1e-6 and result["objective"] < 1e-12
    # exact points: no residual noise, so the interval's noise is the seed noise floor
    assert result["noise"]["floor"] == ladder_run.SEED_NOISE == result["noise"]["used"]
    assert result["noise"]["dof"] == 3 and result["noise"]["residual"] < 1e-6
    bt = result["backtest"]
    assert bt["non_embedding_params"] == 3.2e5 and bt["reach"] == pytest.approx(2.0)
    assert bt["measured"] == pytest.approx(TRUE.predict(3.2e5)) and abs(bt["error"]) < 1e-4
    assert ScalingLaw.from_dict(bt["law"]).predict(3.2e5) == pytest.approx(TRUE.predict(3.2e5), rel=1e-4)
    # the same seed, the same interval; another seed, another
    assert fit_ladder(points, 2.0, samples=12, seed=3)["bootstrap"] == result["bootstrap"]
    assert fit_ladder(points, 2.0, samples=12, seed=4)["bootstrap"] != result["bootstrap"]
    assert fit_ladder(points, 2.0, samples=12, noise_floor=0.02)["noise"]["used"] == 0.02


def test_a_ladder_of_three_or_four_rungs_says_what_it_cannot_do():
    four = fit_ladder(_one(TRUE, SIX[:4]), 2.0, samples=10)
    (w,) = [w for w in four["warnings"] if "no interval" in w]
    assert "needs 5 rungs or more" in w and "the law's 3 parameters" in w and "this ladder has 4" in w
    assert four["bootstrap"] == [] and four["noise"]["residual"] < 1e-6 and four["noise"]["used"] is None
    assert four["noise"]["dof"] == 1 and four["backtest"]["reach"] == pytest.approx(2.0)
    assert not any("no backtest" in w for w in four["warnings"])
    three = fit_ladder(_one(TRUE, SIX[:3]), 2.0, samples=10)
    assert three["backtest"] is None and any("no backtest" in w and "fewer than 4 sizes" in w
                                             for w in three["warnings"])


def test_a_ladder_whose_loss_rises_with_size_is_warned_about_only_for_the_one_variable_law():
    points = _one(TRUE, SIX, noise=(1, 1, 1, 1.2, 1, 1))  # the fourth rung worse than the third
    flat = fit_ladder(points, 2.0, samples=5)
    assert any("larger rung did not reach a lower loss" in w for w in flat["warnings"])
    equal = _one(TRUE, SIX)
    equal[3] = Point(equal[3].params, equal[3].tokens, equal[2].loss)  # not lower is not better
    assert any("larger rung did not reach" in w for w in fit_ladder(equal, 2.0, samples=5)["warnings"])
    # L(N, D): a larger model on fewer tokens may lose to a smaller one on more, as the law says
    law2 = ScalingLaw(E=1.0, A=40.0, alpha=0.35, B=300.0, beta=0.3)
    grid = [(n, d) for n in (1e4, 4e4, 1.6e5) for d in (1e5, 1e6, 1e7)]
    two = fit_ladder([Point(n, d, law2.predict(n, d)) for n, d in grid], None, samples=5)
    assert two["form"] == "L(N, D) = E + A/N^alpha + B/D^beta"
    assert not any("larger rung did not reach" in w for w in two["warnings"])
    assert two["backtest"] is None  # 3 sizes


def test_exponents_outside_published_fits_are_warned_about():
    steep = ScalingLaw(E=1.0, A=1e9, alpha=2.5, tokens_per_param=2)
    (w,) = [w for w in fit_ladder(_one(steep, (10, 14, 20, 28, 40, 56)), 2.0, samples=5)["warnings"]
            if "outside (0, 2)" in w]
    assert "alpha 2.5" in w and "beta" not in w
    law2 = ScalingLaw(E=1.0, A=40.0, alpha=0.35, B=1e12, beta=2.2)
    grid = [(n, d) for n in (1e4, 4e4, 1.6e5, 6.4e5) for d in (1e5, 2e5, 4e5)]
    (w2,) = [w for w in fit_ladder([Point(n, d, law2.predict(n, d)) for n, d in grid], None,
                                   samples=5)["warnings"] if "outside (0, 2)" in w]
    assert "alpha" in w2 and "beta 2.2" in w2
    near = ScalingLaw(E=1.0, A=60.0, alpha=1.9, tokens_per_param=2)
    assert not any("outside" in w for w in fit_ladder(_one(near, (10, 14, 20, 28, 40, 56)), 2.0,
                                                     samples=5)["warnings"])


def test_a_rung_the_law_misses_by_more_than_two_percent_is_warned_about():
    points = _one(TRUE, SIX, noise=(1, 1, 1.1, 1, 1, 1))
    mean = sum(p.loss for p in points) / 6
    off = fit_ladder(points, 2.0, samples=5)
    (w,) = [w for w in off["warnings"] if "misses a rung" in w]
    miss = 0.1 * TRUE.predict(4e4)  # the robust fit follows the five others
    assert off["max_abs_residual"] == pytest.approx(miss, rel=0.02)
    assert f"{off['max_abs_residual']:.3f} bits per byte" in w and f"({off['max_abs_residual'] / mean:.1%})" in w
    below = fit_ladder(_one(TRUE, SIX, noise=(1, 1, 0.9, 1, 1, 1)), 2.0, samples=5)
    assert any("misses a rung" in w for w in below["warnings"])  # below the law as well as above
    near = fit_ladder(_one(TRUE, SIX, noise=(1, 1, 1.015, 1, 1, 1)), 2.0, samples=5)
    assert not any("misses a rung" in w for w in near["warnings"])


def test_the_backtest_of_several_token_counts_at_the_largest_size_averages_them():
    law2 = ScalingLaw(E=1.0, A=40.0, alpha=0.35, B=300.0, beta=0.3)
    grid = [(n, d) for n in (1e4, 3e4, 9e4, 2.7e5) for d in (1e6, 1e7)]
    points = [Point(n, d, law2.predict(n, d) * (0.96 if n == 2.7e5 else 1.0)) for n, d in grid]
    bt = fit_ladder(points, None, samples=5)["backtest"]
    assert bt["non_embedding_params"] == 2.7e5 and bt["reach"] == pytest.approx(3.0)
    want = (law2.predict(2.7e5, 1e6) + law2.predict(2.7e5, 1e7)) / 2
    assert bt["predicted"] == pytest.approx(want, rel=1e-3)
    assert bt["measured"] == pytest.approx(0.96 * want, rel=1e-9)
    assert bt["error"] == pytest.approx(1 / 0.96 - 1, rel=1e-2)  # the law was pessimistic: positive


@pytest.mark.parametrize("spec,want", [("64x2,96x3", [(64, 2), (96, 3)]), (" 32X1 , 64x4", [(32, 1), (64, 4)]),
                                       (["16x1", "16x2"], [(16, 1), (16, 2)])])
def test_sizes_parse_as_width_by_depth(spec, want):
    assert [(r.d_model, r.n_layers) for r in parse_sizes(spec)] == want
    assert parse_sizes(spec)[0].name == f"d{want[0][0]}-l{want[0][1]}"


@pytest.mark.parametrize("spec,match", [("64", "write d_model x n_layers"), ("64x2x1", "write d_model x"),
                                        ("64xa", "write d_model x"), ("0x2", "must be positive"),
                                        ("64x0", "must be positive"), ("-32x2", "must be positive"),
                                        ("32x1,32x1,64x1", "repeat a rung: d32-l1, d32-l1")])
def test_bad_sizes_name_the_item(spec, match):
    with pytest.raises(LadderError, match=match):
        parse_sizes(spec)


def test_the_family_is_the_heads_and_width_per_layer_within_a_factor_1_3():
    target = ModelConfig(vocab_size=512, d_model=160, n_layers=8, n_heads=10, seq_len=64)  # 20 per layer, heads of 16
    assert on_family(target, Rung(80, 4)) and on_family(target, Rung(160, 8))
    assert on_family(target, Rung(48, 2))  # 24 per layer: 1.2x
    assert on_family(target, Rung(208, 8))  # 26 per layer: exactly 1.3x
    assert not on_family(target, Rung(224, 8))  # 28: 1.4x
    assert on_family(target, Rung(32, 2)) and not on_family(target, Rung(48, 4))  # 16: 0.8x; 12: 0.6x
    assert not on_family(target, Rung(40, 2))  # 20 per layer, but heads of 16 do not divide 40
    assert not on_family(target, Rung(96, 3))  # 32 per layer: 1.6x


def test_a_rung_model_keeps_the_configs_heads_and_grouping_where_they_divide():
    base = ModelConfig(vocab_size=512, d_model=96, n_layers=4, n_heads=6, n_kv_heads=2, seq_len=64)  # heads of 16, 3 q per kv
    m = rung_model(base, Rung(48, 2))
    assert (m.d_model, m.n_layers, m.n_heads, m.kv_heads, m.head_dim) == (48, 2, 3, 1, 16)
    m = rung_model(base, Rung(32, 1))  # 2 heads of 16: 3 does not divide, every head its own kv
    assert (m.n_heads, m.kv_heads) == (2, 2)
    m = rung_model(base, Rung(144, 3))
    assert (m.n_heads, m.kv_heads, m.vocab_size, m.seq_len) == (9, 3, 512, 64)
    assert m.d_ff == ModelConfig(vocab_size=512, d_model=144, n_layers=3, n_heads=9, seq_len=64).d_ff
    odd = ModelConfig(vocab_size=512, d_model=96, n_layers=2, n_heads=2, seq_len=64)  # heads of 48
    assert rung_model(odd, Rung(128, 1)).head_dim == 64
    assert rung_model(odd, Rung(160, 1)).head_dim == 32
    with pytest.raises(LadderError, match="d50-l1.*multiple of the config's head dimension \\(48\\) or of 32"):
        rung_model(odd, Rung(50, 1))


def test_default_rungs_span_sixteen_times_evenly_below_the_target():
    target = ModelConfig(vocab_size=8192, d_model=1536, n_layers=24, n_heads=12, seq_len=256)  # heads of 128
    rungs = ladder_run.default_rungs(target)
    sizes = [ladder_run.non_embedding_params(rung_model(target, r)) for r in rungs]
    n_target = ladder_run.non_embedding_params(target)
    # every family member under the target / 1.8, by brute force over whole heads and layers
    family = sorted({ladder_run.non_embedding_params(rung_model(target, Rung(128 * h, layers)))
                     for layers in range(1, 25) for h in range(1, 13)
                     if on_family(target, Rung(128 * h, layers))} - {n_target})
    under = [n for n in family if n <= n_target / 1.8]
    assert len(rungs) == 5 and sizes[-1] == max(under)
    assert 16 / 1.5 < sizes[-1] / sizes[0] < 16 * 1.5
    steps = [math.log(b / a) for a, b in zip(sizes, sizes[1:])]
    assert all(0.4 * math.log(2) < s < 1.6 * math.log(2) for s in steps)  # about 2x apart
    # three rungs asked: the smallest about a sixteenth of the largest
    three = [ladder_run.non_embedding_params(rung_model(target, r)) for r in ladder_run.default_rungs(target, 3)]
    assert len(three) == 3 and three[-1] == max(under) and 16 / 1.5 < three[-1] / three[0] < 16 * 1.5
    # a model with just 4 smaller members of its shape: all 4 are the rungs
    small = ModelConfig(vocab_size=8192, d_model=256, n_layers=8, n_heads=8, seq_len=256)
    got = ladder_run.default_rungs(small)
    assert all(on_family(small, r) for r in got) and 3 <= len(got) <= 5
    n_small = ladder_run.non_embedding_params(small)
    assert all(ladder_run.non_embedding_params(rung_model(small, r)) <= n_small / 1.8 for r in got)


def test_a_second_command_on_the_run_is_told_the_ladder_holds_it(prepared, stages, tmp_path, monkeypatch):
    from fmforge.rundir import RunLockedError, run_lock

    cfg = _fresh(prepared, tmp_path)
    seen = []
    train = ladder_run.run_train_stage

    def meanwhile(rcfg, rung_run, fp, fresh, lineage):  # another command while the ladder works
        with pytest.raises(RunLockedError) as err:
            with run_lock(cfg.run_dir, "fmforge train"):
                pass
        seen.append(str(err.value))
        return train(rcfg, rung_run, fp, fresh, lineage)

    monkeypatch.setattr(ladder_run, "run_train_stage", meanwhile)
    _ladder(cfg)
    assert len(seen) == 5 and all("(`fmforge ladder`, since" in s for s in seen)
    with run_lock(cfg.run_dir, "fmforge train"):  # released after
        pass


def test_settings_that_do_not_change_a_rung_do_not_retrain_it(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    _ladder(cfg)
    stages["train"].clear(), stages["eval"].clear()
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"num_threads": 3, "device": "cpu",
                                                                         "tensorboard": True})})
    _ladder(other)
    assert stages["train"] == [] and stages["eval"] == []
    lr = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": cfg.train.lr * 2})})
    _ladder(lr)  # another learning rate is another rung
    assert len(stages["train"]) == 5


def test_rungs_of_one_step_checkpoint_and_warm_up_within_it(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    _ladder(cfg, "8x1,16x1,24x1", tokens_per_param=0.01)
    for c in stages["train"]:
        t = c["cfg"].train
        assert (t.max_steps, t.warmup_steps, t.eval_every, t.checkpoint_every) == (1, 1, 1, 1)


def test_rungs_that_mix_head_sizes_are_warned_about(prepared, stages, tmp_path):
    cfg = _fresh(prepared, tmp_path)
    # heads of 48: rungs 48 and 96 wide keep them, 64 takes heads of 64, 32 heads of 32
    wide = cfg.model_copy(update={"model": cfg.model.model_copy(update={"d_model": 48, "n_heads": 1,
                                                                        "n_kv_heads": 1, "n_layers": 2})})
    result = _ladder(wide, "32x1,48x1,64x1,96x2")
    assert [r["d_model"] // r["n_heads"] for r in result["rungs"]] == [32, 48, 64, 48]
    (w,) = [w for w in result["warnings"] if "mix heads" in w]
    assert w.startswith("the rungs mix heads of 32 and 48 and 64 dimensions: they are not one family")
    (off,) = [w for w in result["warnings"] if "off the family" in w]
    assert off.startswith("the config's model (d_model 48 x 2 layers: 24 wide per layer, heads of 48) is off the "
                          "family of rung(s) d32-l1, d48-l1, d64-l1, d96-l2 (another head dimension, or a width per layer "
                          "more than 1.3x off)")
    assert "Leave ladder.sizes/--sizes out for rungs of its own shape" in off
    same = _ladder(cfg, "8x1,16x1,16x2")  # heads of 8 throughout
    assert not any("mix heads" in w for w in same["warnings"])


def test_a_model_too_shallow_for_its_own_shape_gets_the_nearest_shapes():
    # 128 x 4 with heads of 64: 32 wide per layer. Under 1/1.8 of it, by hand: d64-l2
    # is its shape; the others by how far their width per layer is off (d64-l3: 21
    # per layer, x1.5; d64-l1, d64-l4 and d128-l2: 64, 16, 64, x2), then by size.
    target = ModelConfig(vocab_size=8192, d_model=128, n_layers=4, n_heads=2, seq_len=256)
    assert [r.name for r in ladder_run.default_rungs(target)] == ["d64-l1", "d64-l2", "d64-l3", "d64-l4",
                                                                  "d128-l2"]
    assert [r.name for r in ladder_run.default_rungs(target, 3)] == ["d64-l1", "d64-l2", "d64-l3"]


def test_a_two_variable_ladder_without_an_interval_says_it_needs_seven_rungs():
    law2 = ScalingLaw(E=1.0, A=40.0, alpha=0.35, B=300.0, beta=0.3)
    grid = [(1e4, 1e5), (2e4, 3e5), (4e4, 1e5), (8e4, 1e6), (1.6e5, 2e6), (3.2e5, 1e6)]
    result = fit_ladder([Point(n, d, law2.predict(n, d)) for n, d in grid], None, samples=5)
    assert "no interval: an interval needs 7 rungs or more (two more than the law's 5 parameters, to " \
           "estimate the rungs' noise), this ladder has 6" in result["warnings"]
