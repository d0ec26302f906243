"""The line `fmforge run` ends with, from eval.json: the model against gzip, with
the relative difference computed by hand here."""

from __future__ import annotations

import json

from fmforge.eval.headline import headline
from fmforge.rundir import RunDir


def _run(tmp_path, **ev) -> RunDir:
    run = RunDir(tmp_path)
    run.eval_json.write_text(json.dumps(ev))
    return run


def test_a_model_that_beats_gzip_says_by_how_much(tmp_path):
    run = _run(tmp_path, bits_per_byte=1.2, gzip_bits_per_byte=1.8, perplexity=12.345)
    # (1.8 - 1.2) / 1.8 = 33.3%
    assert headline(run) == ("held-out bits per byte: model 1.200 vs gzip -9 1.800 "
                             "(better than gzip by 33%); perplexity 12.35")


def test_a_model_worse_than_gzip_says_worse(tmp_path):
    run = _run(tmp_path, bits_per_byte=2.5, gzip_bits_per_byte=2.0, perplexity=40.0)
    assert "(worse than gzip by 25%)" in headline(run)  # (2.5 - 2.0) / 2.0


def test_no_headline_before_the_eval_stage_or_without_a_gzip_figure(tmp_path):
    assert headline(RunDir(tmp_path)) is None
    assert headline(_run(tmp_path, bits_per_byte=1.0, perplexity=3.0)) is None
