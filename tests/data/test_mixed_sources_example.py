"""The README's mixed-sources example runs: five source types, each
contributing documents, under the filters and dedup it configures."""

from __future__ import annotations

import json
from pathlib import Path

from fmforge.config import load_config
from fmforge.data.stage import run_data_stage
from fmforge.rundir import RunDir

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mixed_sources" / "mixed.yaml"


def test_the_mixed_sources_example_reads_every_source_type(tmp_path):
    cfg = load_config(EXAMPLE, [f"out_dir={tmp_path / 'run'}"])
    run = RunDir(tmp_path / "run")
    run_data_stage(cfg, run)
    card = json.loads(run.data_card.read_text())
    types = {s["type"] for s in card["sources"].values() if s["kept_documents"] > 0}
    assert types == {"jsonl", "parquet", "csv", "warc", "text"}
    assert all(s["problems"]["total"] == 0 for s in card["sources"].values())
    # the web preset ran on the crawl, the prose preset on the manuals
    site = card["sources"]["site"]["dropped_reasons"]
    assert any(n and r.startswith(("c4:", "fineweb:", "gopher")) for r, n in site.items())
    assert "gopher_quality:min_words" in site  # every rule of the chain listed, from zero
    assert not any(r.startswith(("c4:", "fineweb:")) for r in card["sources"]["manuals"]["dropped_reasons"])
    assert card["dedup"]["method"] == "minhash"
