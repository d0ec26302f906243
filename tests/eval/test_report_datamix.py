"""The run report's "Which data" section (issue 31, part 3), read from
``RUN/datamix/datamix.json``: what a data team reads off it. The variants with
their verdicts, a variant within the seed noise left unranked, the best one
named; with a source ablation, each source's worth beside its bytes and tokens,
and the chart of those worths with the noise band.

Most tests read an experiment written by hand after the contract (docs/datamix.md):
three sources, one of them shuffled-word noise, with numbers chosen so that
each verdict appears once; one (slow) runs `fmforge datamix --ablate-sources`
on a planted noise source and reads `fmforge report`'s page."""

from __future__ import annotations

import base64
import io
import json
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.eval.report import datamix_section, render_report
from fmforge.rundir import RunDir

SOURCES = {"code": (600_000, 180_000), "prose": (300_000, 75_000), "noise-words": (200_000, 60_000)}
SEED_SD, THRESHOLD = 0.004, 0.012  # called beyond 3 x the seed sd


def _variant(name, kind, bpb_by_seed, base_bpb=None, removed=None, overrides=(), verdict="base",
             weights=None):
    mean = sum(bpb_by_seed) / len(bpb_by_seed)
    delta = None if base_bpb is None else mean - base_bpb
    kept = {s: {"bytes": b, "tokens": t, "weight": (weights or {}).get(s, 1.0)}
            for s, (b, t) in SOURCES.items() if s != removed}
    return {"name": name, "kind": kind, "overrides": list(overrides), "removed_source": removed,
            "sources": kept,
            "runs": [{"seed": seed, "bits_per_byte": v, "per_source": {s: v for s in SOURCES}, "tokens": 400_000,
                      "steps": 100, "seconds": 12.0} for seed, v in zip((1, 2), bpb_by_seed)],
            "bits_per_byte": mean, "per_source": {s: mean for s in SOURCES},
            "spread": max(bpb_by_seed) - min(bpb_by_seed), "delta": delta,
            "delta_over_noise": None if delta is None else abs(delta) / SEED_SD, "verdict": verdict}


def experiment() -> dict:
    base = 2.000
    variants = [
        _variant("base", "base", [1.998, 2.002]),
        _variant("without-code", "ablate", [2.088, 2.092], base, removed="code", verdict="worse"),
        _variant("without-prose", "ablate", [2.001, 2.005], base, removed="prose", verdict="within noise"),
        _variant("without-noise-words", "ablate", [1.969, 1.971], base, removed="noise-words", verdict="better"),
        _variant("prose.weight=2", "weights", [1.978, 1.982], base, overrides=["data.sources.1.weight=2"],
                 weights={"prose": 2.0}, verdict="better"),
    ]
    worth = []
    for v in variants[1:4]:
        src = v["removed_source"]
        effect = v["bits_per_byte"] - base
        worth.append({"source": src, "bytes": SOURCES[src][0], "tokens": SOURCES[src][1], "effect": effect,
                      "effect_over_noise": abs(effect) / SEED_SD,
                      "verdict": {"worse": "helps", "better": "hurts"}.get(v["verdict"], "within noise"),
                      "per_source_effect": {s: effect * (3 if s == src else 0.5) for s in SOURCES}})
    return {"version": 1, "base_run": "runs/mix",
            "target": {"kind": "heldout", "name": "heldout", "bytes": 40_000, "tokens": 11_000, "documents": 12},
            "proxy": {"model": {"d_model": 32, "n_layers": 2}, "non_embedding_params": 24_704, "tokens": 400_000,
                      "steps": 100, "tokens_per_param": 16.2, "minutes_each": None, "seeds": [1, 2]},
            "price": {"proxies": 10, "flops": 6.1e12, "seconds_estimated": 150.0, "device": "this CPU",
                      "dollars": None, "seconds_measured": 131.0},
            "noise": {"seed_sd": SEED_SD, "threshold": THRESHOLD, "dof": 4, "t": 2.776,
                      "per_source_sd": {"code": 0.003, "prose": 0.005, "noise-words": 0.006},
                      "method": "pooled over every variant's seeds; threshold 3 sd of a difference"},
            "variants": variants, "sources_worth": worth, "best": "without-noise-words", "warnings": []}


class _Page(HTMLParser):
    """The page's tables (each a list of rows of cell text; a header cell that spans
    columns stands for the header cells under it), its images (alt, PNG bytes) and
    its sections."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict[str, list[list[str]]]] = []
        self.images: list[tuple[str, bytes]] = []
        self.sections: list[str] = []
        self._cell: list[str] | None = None
        self._part = "body"
        self._spans = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"head": [], "body": []})
        elif tag in ("thead", "tbody"):
            self._part = tag[1:]
        elif tag == "tr":
            self.tables[-1][self._part].append([])
        elif tag in ("td", "th"):
            self._cell = []
            self._spans = a.get("colspan") is not None
        elif tag == "img":
            self.images.append((a.get("alt"), base64.b64decode(a["src"].split(",", 1)[1])))
        elif tag == "section":
            self.sections.append(a.get("id"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if not self._spans:
                self.tables[-1][self._part][-1].append("".join(self._cell).strip())
            self._cell = None


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _rows(table: dict) -> dict[str, dict[str, str]]:
    """A table's rows by their name column ("variant", else the first), as {header: text}."""
    head = [h for row in table["head"] for h in row]
    key = head.index("variant") if "variant" in head else 0
    return {row[key].replace("★ best", "").strip(): dict(zip(head, row)) for row in table["body"]}


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir(tmp_path / "mix")


def write(run: RunDir, mix: dict) -> None:
    (run.root / "datamix").mkdir(parents=True, exist_ok=True)
    (run.root / "datamix" / "datamix.json").write_text(json.dumps(mix))


def test_no_experiment_no_section(run):
    run.root.mkdir(parents=True)
    assert datamix_section(run) == ""
    assert 'id="datamix"' not in render_report(run)


def test_the_variants_table_reads_as_the_verdicts(run):
    write(run, experiment())
    page = _page(render_report(run))
    assert "datamix" in page.sections
    variants = _rows(page.tables[0])
    assert list(variants) == ["base", "without-noise-words", "prose.weight=2", "without-prose", "without-code"]
    # ranked: the two called better, the larger gain first; the one within noise and the worse one are not
    assert [variants[v]["rank"] for v in variants] == ["–", "1", "2", "–", "–"]
    assert variants["without-prose"]["verdict"] == "within noise"
    assert variants["without-code"]["verdict"] == "worse"
    # what each variant changes, in words: the weight by the source's name, not its index
    assert variants["prose.weight=2"]["what changes"] == "prose weight 1 → 2"
    assert variants["without-prose"]["what changes"] == "without source prose"
    # the per-seed figures and the difference as a reader checks it by hand
    assert variants["without-code"]["seed 1"] == "2.0880" and variants["without-code"]["seed 2"] == "2.0920"
    assert variants["without-code"]["vs base"] == "+0.0900"
    assert variants["without-noise-words"]["vs base"] == "−0.0300"
    assert variants["without-noise-words"]["× seed sd"] == "7.5×"


def test_the_best_variant_is_named(run):
    write(run, experiment())
    html = render_report(run)
    assert "Best: <b>without-noise-words</b> (without source noise-words), −0.0300 bits/byte" in html
    assert "★ best" in _rows(_page(html).tables[0])["without-noise-words"]["variant"]


def test_no_best_says_keep_the_base(run):
    mix = experiment()
    mix["best"] = None
    for v in mix["variants"][1:]:
        v["verdict"] = "within noise"
    write(run, mix)
    html = datamix_section(run)
    assert "No variant beats the base mixture beyond the seed noise" in html and "★ best" not in html
    assert {row["rank"] for row in _rows(_page(html).tables[0]).values()} == {"–"}  # nothing ranked


def test_what_each_source_is_worth(run):
    write(run, experiment())
    page = _page(datamix_section(run))
    worth = _rows(page.tables[1])
    # most valuable first, the harmful one last
    assert list(worth) == ["code", "prose", "noise-words"]
    assert [worth[s]["verdict"] for s in worth] == ["helps", "within noise", "hurts"]
    assert worth["code"]["worth to the target"] == "+0.0900"
    assert worth["noise-words"]["worth to the target"] == "−0.0300"
    # the bytes and tokens each source contributes, and its share of the tokens: 180k of 315k
    assert worth["code"]["bytes"] == "600,000" and worth["code"]["tokens"] == "180,000"
    assert worth["code"]["share of tokens"] == "57.1%"
    # its effect on each source's held-out part
    assert worth["code"]["prose"] == "+0.0450" and worth["code"]["code"] == "+0.2700"


def _colours(png: bytes) -> set[tuple[int, int, int]]:
    from PIL import Image

    return {rgb for _, rgb in Image.open(io.BytesIO(png)).convert("RGB").getcolors(1 << 20)}


def test_the_charts_colour_each_verdict_over_the_noise_band(run):
    write(run, experiment())
    html = datamix_section(run)
    charts = dict(_page(html).images)
    assert set(charts) == {"Each variant against the base mixture", "What each source is worth to the target"}
    seen = _colours(charts["What each source is worth to the target"])
    green, red, grey = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28), (0x85, 0x85, 0x85)
    band = (0xDE, 0xDE, 0xDE)  # the noise band: #bdbdbd at half opacity on white
    assert {green, red, grey, band} <= seen  # helps, hurts, within noise, and the band behind them
    assert "beyond <b>0.0120</b>" in html  # the band's half-width, stated in the text


def test_no_ablation_no_source_table(run):
    mix = experiment()
    mix["sources_worth"] = []
    mix["variants"] = [v for v in mix["variants"] if v["kind"] != "ablate"]
    mix["best"] = "prose.weight=2"
    write(run, mix)
    page = _page(datamix_section(run))
    assert len(page.tables) == 1 and [alt for alt, _ in page.images] == ["Each variant against the base mixture"]


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": 2})])
def test_an_unreadable_experiment_says_to_rerun(run, text):
    (run.root / "datamix").mkdir(parents=True)
    (run.root / "datamix" / "datamix.json").write_text(text)
    html = datamix_section(run)
    assert "fmforge datamix CONFIG" in html and "again" in html


# --------------------------------------------------------------------------- from a real experiment

WORDS = "the cat dog bird sees finds follows near house hill river garden small red old".split()


def _real_corpus(root: Path) -> dict:
    """A learnable source of sentences and a planted source of the same words shuffled."""
    rng = random.Random(5)
    for name in ("clean", "noise"):
        (root / name).mkdir(parents=True)
    for i in range(40):
        sentences = [" ".join(["the", rng.choice(WORDS[1:4]), rng.choice(WORDS[4:7]), "the",
                               rng.choice(WORDS[1:4]), "near", "the", rng.choice(WORDS[8:11])]) + "."
                     for _ in range(8)]
        (root / "clean" / f"c{i:02d}.txt").write_text(" ".join(sentences) + "\n")
        words = " ".join(sentences).split()
        rng.shuffle(words)
        (root / "noise" / f"n{i:02d}.txt").write_text(" ".join(words) + "\n")
    return {"name": "mix", "out_dir": str(root / "run"), "seed": 3,
            "data": {"sources": [{"name": "clean", "paths": [str(root / "clean" / "*.txt")]},
                                 {"name": "noise", "paths": [str(root / "noise" / "*.txt")]}],
                     "min_chars": 16, "val_fraction": 0.2},
            "tokenizer": {"vocab_size": 300, "min_frequency": 1},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 1, "seq_len": 64},
            "train": {"micro_batch_size": 8, "lr": 1e-2, "warmup_steps": 5, "num_threads": 1, "dtype": "float32",
                      "tensorboard": False},
            "eval": {"batch_size": 8}}


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory) -> Path:
    """A base run (data, tokenizer, tokens) and `fmforge datamix --ablate-sources`
    on it, scored on the clean source's held-out part, then `fmforge report`."""
    root = tmp_path_factory.mktemp("datamix-report")
    config = root / "mix.yaml"
    config.write_text(yaml.safe_dump(_real_corpus(root)))
    for stage in ("data", "tokenizer", "tokenize"):
        _invoke(stage, str(config))
    _invoke("datamix", str(config), "--ablate-sources", "--size", "32x1", "--tokens-per-param", "4",
            "--target", "source:clean")
    _invoke("report", str(root / "run"))
    return root / "run"


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow  # the experiment: 4 tiny proxies, about 25 s on 2 cores
def test_a_real_experiment_in_the_report(experiment_run):
    html = (experiment_run / "report.html").read_text(encoding="utf-8")
    page = _page(html)
    assert "datamix" in page.sections
    variants = _rows(page.tables[_table_after(html, "The variants")])
    assert set(variants) == {"base", "without-clean", "without-noise"}
    # the shuffled words cost the clean target: leaving them out is better, and named best
    assert variants["without-noise"]["verdict"] == "better" and variants["without-noise"]["rank"] == "1"
    assert "Best: <b>without-noise</b>" in html
    worth = _rows(page.tables[_table_after(html, "What each source is worth")])
    assert worth["noise"]["verdict"] == "hurts" and worth["clean"]["verdict"] == "helps"
    # each source's bytes and tokens are its training split's, as the tokenize stage counted them
    meta = json.loads((experiment_run / "tokens" / "meta.json").read_text())["per_source"]["train"]
    for source in ("clean", "noise"):
        assert worth[source]["bytes"] == f"{meta[source]['bytes']:,}"
        assert worth[source]["tokens"] == f"{meta[source]['tokens']:,}"
    assert "What each source is worth to the target" in dict(page.images)


def _table_after(html: str, heading: str) -> int:
    """The index of the first table after ``heading`` in the page."""
    return html[:html.index(heading)].count("<table")
