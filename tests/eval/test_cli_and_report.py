"""The commands: `fmforge eval RUN --step N`, bad input with a message naming the
command that fixes it, `fmforge report` (every section and image present) and
`fmforge compare`."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fmforge.cli import app
from fmforge.eval.report import SECTIONS

runner = CliRunner()


def invoke(*args: str, code: int = 0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the shared trained run that a test may damage."""
    dst = tmp_path / "copy"
    shutil.copytree(trained_run.root, dst, ignore=shutil.ignore_patterns(".lock", "*.html", "eval.json"))
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["out_dir"] = str(dst)  # the copy's own stages write to the copy
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def test_eval_step_appends_by_step_and_prints_per_source(run_copy):
    out = invoke("eval", str(run_copy), "--step", "6")
    assert "code" in out and "prose" in out and "xz -9e" in out
    invoke("eval", str(run_copy))  # the latest, as a stage
    ev = json.loads((run_copy / "eval.json").read_text())
    assert set(ev["steps"]) == {"6", "12"} and ev["step"] == 12
    assert [h["step"] for h in ev["history"]] == [6, 12]
    # the config file works as before
    out = invoke("eval", str(run_copy / "config.yaml"), "eval.stride=16", "--force")
    ev = json.loads((run_copy / "eval.json").read_text())
    assert ev["stride"] == 16 and len(ev["history"]) == 3


def test_missing_step_lists_the_steps_there_are(run_copy):
    out = invoke("eval", str(run_copy), "--step", "7", code=2)
    assert "no checkpoint of step 7" in out and "6, 12" in out


def test_no_checkpoint_says_to_train(run_copy):
    shutil.rmtree(run_copy / "checkpoints")
    out = invoke("eval", str(run_copy), "--step", "12", code=2)
    assert "no complete checkpoint" in out and "fmforge train" in out


def test_checkpoint_of_another_tokenizer_is_refused(run_copy):
    cfg = str(run_copy / "config.yaml")
    invoke("tokenizer", cfg, "tokenizer.vocab_size=290")
    invoke("tokenize", cfg, "tokenizer.vocab_size=290")
    out = invoke("eval", str(run_copy), "tokenizer.vocab_size=290", "--step", "12", code=2)
    assert "rebuilt" in out and "fmforge run" in out
    out = invoke("eval", str(run_copy), "tokenizer.vocab_size=290", code=2)
    assert "fmforge train" in out  # the train stage is no longer complete for these tokens


def test_empty_heldout_split_says_what_to_raise(run_copy):
    meta_path = run_copy / "tokens" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(val_tokens=0, val_documents=0)
    meta["files"]["val"] = []
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(run_copy / "tokens" / "val")
    out = invoke("eval", str(run_copy), "--step", "12", code=2)
    assert "held-out split" in out and "empty" in out and "data.val_fraction" in out


class _Parts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.tables = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append((a.get("alt"), a.get("src", "")))
        elif tag == "table":
            self.tables += 1


def parse(path: Path) -> _Parts:
    parts = _Parts()
    parts.feed(path.read_text(encoding="utf-8"))
    for alt, src in parts.images:
        assert src.startswith("data:image/png;base64,"), alt
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n", alt
    return parts


def test_report_has_every_section_and_plot(run_copy):
    invoke("eval", str(run_copy))
    out = invoke("report", str(run_copy))
    path = Path(out.strip().splitlines()[-1])
    assert path == run_copy / "report.html"
    parts = parse(path)
    assert parts.sections == list(SECTIONS)
    alts = [alt for alt, _ in parts.images]
    for title in ("Loss against tokens seen", "Learning rate", "Throughput", "Model FLOPs utilisation",
                  "Gradient norm", "Held-out bits per byte (lower is better)"):
        assert title in alts
    text = path.read_text()
    assert "plan versus actual unavailable" not in text and "tokens_per_s" in text  # plan vs actual table
    assert "prose" in text and "xz -9e" in text and "Greedy completions" in text
    assert "no lm-eval results" in text  # harness section present, says how to fill it
    # no external resource: the file stands alone
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_compare_two_runs(trained_run, run_copy, tmp_path):
    invoke("eval", str(run_copy))
    out = invoke("compare", str(trained_run.root), str(run_copy), "--out", str(tmp_path / "c.html"))
    parts = parse(Path(out.strip()))
    assert parts.sections == ["curves", "final"]
    assert {"Training loss", "Validation loss", "Held-out bits per byte"} <= {alt for alt, _ in parts.images}
    text = (tmp_path / "c.html").read_text()
    assert trained_run.root.name in text and "copy" in text
    out = invoke("compare", str(run_copy), code=2)
    assert "at least two runs" in out


def test_val_stream_matches_tokenize(trained_run):
    """The per-source streams are the val documents encoded as the tokenize stage
    encodes them: together they hold exactly the val split's tokens."""
    from fmforge.eval.heldout import source_streams
    from fmforge.inference.loading import load_trained
    from fmforge.tokenizer.tokens import open_tokens

    trained = load_trained(trained_run, device="cpu")
    streams = source_streams(trained_run, trained.tokenizer, trained.eos_id)
    val = np.asarray(open_tokens(trained_run, "val"))
    assert sum(len(s) - 1 for s in streams.values()) == len(val)
    assert sorted(np.concatenate([s[1:] for s in streams.values()]).tolist()) == sorted(val.tolist())
