"""``fmforge datamix`` on a corpus built here: a clean, learnable source, the same
documents again under another name, and a planted source of the clean source's
words shuffled (noise). Proxies are tiny; one base run and one ablation
experiment are shared by the tests."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fmforge.config import load_config
from fmforge.data.dedup import content_digest
from fmforge.data.shards import iter_split_records
from fmforge.errors import UserError
from fmforge.ladder import datamix as dm
from fmforge.ladder.datamix import Budget, run_datamix
from fmforge.ladder.run import Rung
from fmforge.ladder.target import Target
from fmforge.ladder.variants import BASE, DatamixError, Variant, collect
from fmforge.pipeline import run_pipeline

ADJ = "small large red quiet old bright cold green".split()
NOUN = "cat dog bird farmer child teacher river garden".split()
VERB = "sees finds follows paints helps watches".split()
PLACE = "house hill market bridge school forest".split()
PROXY = Rung(32, 1)
BUDGET = Budget(tokens_per_param=6)  # 194 steps of 8 x 64 tokens: past the steep part of the loss curve
SEEDS = 2


def _sentence(rng: random.Random) -> str:
    return (f"the {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(NOUN)} "
            f"near the {rng.choice(PLACE)}.")


def _clean_doc(rng: random.Random, i: int) -> str:
    # every document names an address: a variant that redacts it (data.pii) rewrites them all
    return " ".join(_sentence(rng) for _ in range(rng.randint(6, 10))) + f" Write to clerk{i}@example.org.\n"


def make_corpus(root: Path, n_docs: int = 60, noise_docs: int = 120) -> dict[str, Path]:
    rng = random.Random(3)
    dirs = {name: root / name for name in ("clean", "dup", "noise")}
    for d in dirs.values():
        d.mkdir(parents=True)
    for i in range(n_docs):
        text = _clean_doc(rng, i)
        (dirs["clean"] / f"c{i:03d}.txt").write_text(text)
        (dirs["dup"] / f"c{i:03d}.txt").write_text(text)  # the same documents under another name
    for i in range(noise_docs):
        words = _clean_doc(rng, 1000 + i).split()
        rng.shuffle(words)  # clean words, shuffled: the planted noise
        (dirs["noise"] / f"n{i:03d}.txt").write_text(" ".join(words) + "\n")
    return dirs


def base_config(root: Path, **data) -> dict:
    make_corpus(root / "corpus")
    return {  # source paths relative to the config's directory, ``root``
        "name": "mix", "out_dir": str(root / "run"), "seed": 11,
        "data": {"sources": [{"name": "clean", "paths": ["corpus/clean/*.txt"]},
                             {"name": "dup", "paths": ["corpus/dup/*.txt"]},
                             {"name": "noise", "paths": ["corpus/noise/*.txt"]}],
                 "min_chars": 16, "val_fraction": 0.2, **data},
        "tokenizer": {"vocab_size": 320, "min_frequency": 1},
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
        "train": {"max_steps": 50, "micro_batch_size": 8, "lr": 1e-2, "warmup_steps": 5, "log_every": 10,
                  "eval_batches": 2, "num_threads": 1, "dtype": "float32", "tensorboard": False},
        "eval": {"batch_size": 8},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("datamix")
    path = root / "mix.yaml"
    path.write_text(yaml.safe_dump(base_config(root)))
    cfg = load_config(path)
    run, _ = run_pipeline(cfg, stages=("data", "tokenizer", "tokenize"))
    return path, cfg, run


@pytest.fixture(scope="module")
def ablated(base):
    """The mixture without each source in turn, and a variant that differs from the
    base by its seed alone; scored on the clean source's held-out part."""
    path, cfg, run = base
    found = collect(cfg, [], ablate=True, grid=False, extra=[Variant("seed=5", "try", ("seed=5",))])
    result = run_datamix(cfg, run, found.variants, rung=PROXY, budget=BUDGET, seeds=SEEDS,
                         target=Target("source", "clean"))
    return cfg, run, found, result


def _row(result: dict, name: str) -> dict:
    return next(r for r in result["variants"] if r["name"] == name)


@pytest.mark.slow  # the shared experiment: about 40 s on 2 cores
def test_planted_noise_hurts_the_clean_target_beyond_the_seed_noise(ablated):
    _, _, _, result = ablated
    worth = {w["source"]: w for w in result["sources_worth"]}
    noise = worth["noise"]
    # without the shuffled words the clean target is predicted better: the source hurts
    assert noise["verdict"] == "hurts" and noise["effect"] < -result["noise"]["threshold"]
    assert _row(result, "without-noise")["verdict"] == "better"
    assert result["best"] == "without-noise"
    # the table's figures are the proxies' own: each variant's mean over its seeds
    for row in result["variants"]:
        assert row["bits_per_byte"] == pytest.approx(sum(r["bits_per_byte"] for r in row["runs"]) / SEEDS)
        assert [r["seed"] for r in row["runs"]] == [(5 if row["name"] == "seed=5" else 11) + k for k in range(SEEDS)]


@pytest.mark.slow  # the shared experiment: about 40 s on 2 cores
def test_a_duplicate_of_a_good_source_is_not_called_harmful(ablated):
    _, _, _, result = ablated
    worth = {w["source"]: w for w in result["sources_worth"]}
    assert worth["dup"]["verdict"] != "hurts"
    # exact dedup keeps the first copy: the duplicate adds no training bytes
    assert worth["dup"]["bytes"] == 0


@pytest.mark.slow  # the shared experiment: about 40 s on 2 cores
def test_a_variant_that_differs_only_by_seed_is_within_noise(ablated):
    _, _, _, result = ablated
    row = _row(result, "seed=5")
    assert row["verdict"] == "within noise"
    assert abs(row["delta"]) <= result["noise"]["threshold"]


@pytest.mark.slow  # the shared experiment: about 40 s on 2 cores
def test_no_variant_trains_on_a_base_held_out_document(ablated, base):
    """The split hashes a document's cleaned text: a variant that rewrites text (PII
    redaction) or changes the seed would otherwise put base held-out documents into
    its training split."""
    path, cfg, run = base
    held = list(iter_split_records(run.data, "val", columns=("id", "text")))
    ids = {r["id"] for r in held}
    digests = {content_digest(r["text"].encode()) for r in held}
    assert held
    pii = Variant("data.pii.enabled=true", "try", ("data.pii.enabled=true",))
    from fmforge.ladder.variants import variant_config

    exp = dm._Experiment(cfg, run, [BASE, pii], PROXY, BUDGET, 2, Target("heldout", "heldout"), False)
    exp.prepare(exp.plans[1])
    variant_dirs = [run.root / "datamix" / d for d in ("without-clean", "without-noise", "seed=5",
                                                        pii.dirname)]
    for d in variant_dirs:
        train = list(iter_split_records(d / "data", "train", columns=("id", "text")))
        assert train
        leaked = [r["id"] for r in train if r["id"] in ids or content_digest(r["text"].encode()) in digests]
        assert leaked == [], d.name
    # the redacted texts are new texts, hashed to new sides: some base held-out
    # document was put into the variant's own training split, and left out
    card = json.loads((run.root / "datamix" / pii.dirname / "data" / "data_card.json").read_text())
    assert sum(card["datamix"]["held_out_removed_from_train"].values()) > 0
    assert variant_config(cfg, pii).data.pii.enabled


def test_a_weight_only_variant_reuses_the_curated_work(base, monkeypatch):
    path, cfg, run = base
    import fmforge.data.stage as stage

    calls = []
    real = stage.curate_task
    monkeypatch.setattr(stage, "curate_task", lambda payload: calls.append(1) or real(payload))
    heavier = Variant("noise.weight=2", "weights", ("data.sources.2.weight=2",))
    lighter = Variant("noise.weight=0.5", "weights", ("data.sources.2.weight=0.5",))
    exp = dm._Experiment(cfg, run, [BASE, heavier, lighter], PROXY, BUDGET, 2, Target("heldout", "heldout"),
                         False)
    exp.prepare(exp.plans[1])
    first = len(calls)
    exp.prepare(exp.plans[2])
    assert first > 0 and len(calls) == first  # the second variant curated nothing
    cards = [json.loads((p.run.data / "data_card.json").read_text()) for p in exp.plans[1:]]
    for name in ("clean", "dup", "noise"):
        a, b = (c["sources"][name] for c in cards)
        assert (a["documents_read"], a["kept_documents"], a["duplicates"]) == \
               (b["documents_read"], b["kept_documents"], b["duplicates"])
    # and the weights did apply: about 4 times the noise documents at 2 as at 0.5
    heavy, light = (p.run.tokens_meta()["per_source"]["train"]["noise"]["documents"] for p in exp.plans[1:])
    assert 3 * light < heavy < 5 * light


@pytest.mark.slow  # the shared experiment: about 40 s on 2 cores
def test_a_rerun_trains_nothing(ablated, monkeypatch):
    cfg, run, found, result = ablated
    monkeypatch.setattr(dm, "run_train_stage", lambda *a, **k: pytest.fail("a cached proxy was retrained"))
    monkeypatch.setattr(dm, "run_data_stage", lambda *a, **k: pytest.fail("a cached variant's data was rebuilt"))
    again = run_datamix(cfg, run, found.variants, rung=PROXY, budget=BUDGET, seeds=SEEDS,
                        target=Target("source", "clean"))
    assert again["price"]["to_train"] == 0
    assert [r["bits_per_byte"] for r in again["variants"]] == [r["bits_per_byte"] for r in result["variants"]]


def test_a_bad_try_key_names_the_key(base):
    path, cfg, run = base
    with pytest.raises(UserError, match=r"data\.sources\.0\.wieght"):
        collect(cfg, ["data.sources.0.wieght=2"], ablate=False, grid=False)
    with pytest.raises(DatamixError, match="model.n_layers"):
        collect(cfg, ["model.n_layers=1,3"], ablate=False, grid=False)
    with pytest.raises(DatamixError, match="nosie: no such source"):
        collect(cfg, [], ablate=False, grid=False, without=["nosie"])


def test_variants_from_the_options(base):
    path, cfg, run = base
    names = [v.name for v in collect(cfg, ["data.sources.2.weight=1,3", "data.dedup=none"], ablate=False,
                                     grid=True, without=["noise"]).variants]
    # weight 1 is the base's own: left out; the grid halves and doubles each source's weight
    assert names == ["base", "data.sources.2.weight=3", "data.dedup=none", "without-noise",
                     "clean.weight=0.5", "clean.weight=2", "dup.weight=0.5", "dup.weight=2",
                     "noise.weight=0.5", "noise.weight=2"]


def _fmforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FMFORGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "fmforge", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.slow  # the shared experiment: about 40 s on 2 cores
def test_write_best_writes_a_loadable_config_with_the_winner(ablated, base):
    """The command line, on the cached experiment: the table, and --write-best."""
    path, cfg, run = base
    out = path.parent / "best" / "best.yaml"
    done = _fmforge("datamix", str(path), "--ablate-sources", "--try", "seed=5", "--seeds", str(SEEDS),
                    "--size", "32x1", "--tokens-per-param", "6", "--target", "source:clean",
                    "--write-best", str(out), cwd=path.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shown = done.stdout + done.stderr
    assert "without-noise" in shown and "hurts" in shown and "within noise" in shown
    assert "still to train: 0 proxies" in shown  # all cached
    written = out.read_text()
    assert written.startswith("# Written by `fmforge datamix")
    assert "Winner: without-noise" in written and "target: source:clean" in written
    best = load_config(out)
    assert [s.name for s in best.data.sources] == ["clean", "dup"]
    # the paths still name the corpus from the new directory
    assert best.data.sources[0].paths == ["../corpus/clean/*.txt"]
    from fmforge.data.stage import list_all_sources

    assert len(list_all_sources(best)[0].files) == 60


def test_a_target_of_files_is_scored_on_exactly_their_bytes(base, tmp_path):
    import torch

    from fmforge.ladder.run import rung_model
    from fmforge.ladder.target import Scorer, parse_target
    from fmforge.model.transformer import Transformer

    path, cfg, run = base
    (tmp_path / "eval").mkdir()
    files = [tmp_path / "eval" / "a.txt", tmp_path / "eval" / "b.txt"]
    files[0].write_text("the old farmer paints the river near the bridge. " * 20)
    files[1].write_text("a quiet child follows the green bird — near the school. " * 5)
    target = parse_target([str(tmp_path / "eval" / "*.txt")])
    assert target.kind == "files" and len(target.files) == 2
    scorer = Scorer(run, target, cfg.vocab_size, batch_size=8)
    torch.manual_seed(0)
    scored = scorer.score(Transformer(rung_model(cfg.resolved_model(), PROXY)), torch.device("cpu"))
    assert scored["target_bytes"] == sum(len(f.read_bytes()) for f in files)
    assert set(scored["per_source"]) == {"clean", "noise"}  # dup's documents were all duplicates


def test_target_files_the_base_trained_on_are_refused(base, tmp_path):
    from fmforge.ladder.target import parse_target

    path, cfg, run = base
    trained = next(iter_split_records(run.data, "train", columns=("text",)))["text"]
    (tmp_path / "leak.txt").write_text(trained)
    with pytest.raises(DatamixError, match="training split"):
        dm._Experiment(cfg, run, [BASE], PROXY, BUDGET, 2, parse_target([str(tmp_path / "leak.txt")]), False)


def test_a_base_built_from_other_data_settings_is_refused(base):
    path, cfg, run = base
    other = cfg.model_copy(update={"data": cfg.data.model_copy(update={"min_chars": 17})})
    with pytest.raises(DatamixError, match="rebuild it first"):
        dm._Experiment(other, run, [BASE], PROXY, BUDGET, 2, Target("heldout", "heldout"), False)


def test_price_only_trains_nothing_and_a_minutes_budget_is_shared(base):
    path, cfg, run = base
    variants = [BASE, Variant("noise.weight=2", "weights", ("data.sources.2.weight=2",))]
    out = run_datamix(cfg, run, variants, rung=PROXY, budget=Budget(tokens_per_param=None, minutes=0.5),
                      seeds=3, price_only=True)
    price = out["price"]
    assert price["proxies"] == 6 and price["to_train"] == 6
    # the steps every proxy trains fit the half minute, all 6 proxies together, as the planner prices them
    assert 0.8 * 30 < price["seconds_estimated"] <= 30
    assert not any((run.root / "datamix" / "base").glob("seed-*/checkpoints"))


def test_the_noise_threshold_is_students_t_on_the_pooled_seed_spread():
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    from fmforge.ladder.noise import pick_best, pooled_noise, t975, t_quantile

    groups = [[1.50, 1.53], [1.41, 1.47], [1.60, 1.58], [1.52, 1.51]]
    noise = pooled_noise(groups)
    # the pooled variance: the mean of the per-variant sample variances (equal sizes), 4 dof
    assert noise.seed_sd == pytest.approx(np.sqrt(np.mean([np.var(g, ddof=1) for g in groups])))
    assert noise.dof == 4 and noise.t == pytest.approx(stats.t.ppf(0.975, 4), abs=1e-3)
    # two means of 2 seeds each: a standard error of sd * sqrt(2 / 2)
    assert noise.threshold == pytest.approx(stats.t.ppf(0.975, 4) * noise.seed_sd, rel=1e-3)
    for dof in (1, 2, 7, 13, 30, 45, 100, 500):  # the table to 10, the Cornish-Fisher series beyond
        exact = stats.t.ppf(0.975, dof)
        assert exact - 1e-3 <= t975(dof) <= 1.02 * exact
        # the same home gives the ladder's one-sided 0.95 quantile
        assert t_quantile(0.95, dof) == pytest.approx(stats.t.ppf(0.95, dof), abs=1e-3)
    rows = [{"name": "a", "bits_per_byte": 1.40, "verdict": "better"},
            {"name": "b", "bits_per_byte": 1.40 + noise.threshold / 2, "verdict": "better"}]
    best, warnings = pick_best(rows, noise)
    assert best is None and "a, b" in warnings[0]  # two winners within noise of each other: no ranking
    assert pick_best(rows[:1], noise) == ("a", [])


def test_write_best_without_a_winner_writes_the_base_config_and_says_so(base, tmp_path):
    from fmforge.ladder.variants import best_comment, write_best

    path, cfg, run = base
    out = tmp_path / "elsewhere" / "best.yaml"
    write_best(path, ["train.lr=0.002"], None, out,
               best_comment("fmforge datamix mix.yaml --weights-grid", "heldout", None, 1.2345, 0.01, 2))
    text = out.read_text()
    assert text.startswith("# Written by `fmforge datamix mix.yaml --weights-grid`")
    assert "No variant beat the base config beyond the seed noise" in text and "1.2345" in text
    written = load_config(out)
    # the config as run (the user's override included), its data unchanged
    assert written.train.lr == 0.002
    from fmforge.data.stage import list_all_sources

    def files(c):
        return [(l.source, os.path.realpath(l.root), [f.rel for f in l.files]) for l in list_all_sources(c)]

    assert files(written) == files(cfg)  # the same files, read from the new directory
    assert written.data.model_dump(exclude={"sources"}) == cfg.data.model_dump(exclude={"sources"})


def test_a_fresh_config_prepares_its_base_run_first(tmp_path):
    """A newcomer runs the README's `fmforge datamix CONFIG` before any other stage:
    the base run's data, tokenizer and tokens are built (the stages the comparison
    needs, not a training), then the experiment is priced."""
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(base_config(tmp_path)))
    out = subprocess.run([sys.executable, "-m", "fmforge", "datamix", str(tmp_path / "mix.yaml"),
                          "--ablate-sources", "--price-only"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "run"
    assert (run / "tokens" / "meta.json").is_file() and (run / "data" / "data_card.json").is_file()
    assert not (run / "checkpoints").exists()  # the base model is not trained for a comparison of data
    # the base and one variant without each of the three sources, two seeds each
    said = out.stdout + out.stderr
    assert "4 variants x 2 seeds = 8 proxies" in said, said
