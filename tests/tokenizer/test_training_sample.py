"""The tokenizer's training sample holds each source in proportion to the mixture,
not the first files."""

from __future__ import annotations

import json
import random

import yaml

from fmforge.config import load_config
from fmforge.pipeline import run_pipeline


def write_jsonl(path, n, seed, words):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = f"{i} " + " ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
            f.write(json.dumps({"text": text}) + "\n")


def test_sample_follows_mixture_weights(tmp_path, make_tiny_config):
    write_jsonl(tmp_path / "a.jsonl", 3000, 1, ["alpha", "beta", "gamma", "delta"])
    write_jsonl(tmp_path / "b.jsonl", 3000, 2, ["uno", "dos", "tres", "cuatro", "cinco"])
    raw = make_tiny_config(tmp_path)
    raw["data"] = {"sources": [
        {"name": "light", "type": "jsonl", "paths": [str(tmp_path / "a.jsonl")], "weight": 1.0},
        {"name": "heavy", "type": "jsonl", "paths": [str(tmp_path / "b.jsonl")], "weight": 3.0}],
        "min_chars": 8, "val_fraction": 0.05, "workers": 1}
    raw["tokenizer"]["max_train_bytes"] = 60_000
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    run, _ = run_pipeline(load_config(path), stages=("data", "tokenizer"))
    card = json.loads(run.data_card.read_text())
    sample = json.loads((run.tokenizer / "training_sample.json").read_text())
    assert card["splits"]["train"]["bytes"] > 5 * sample["bytes"]  # well below the corpus
    assert abs(sample["bytes"] - 60_000) < 200
    assert sum(sample["bytes_per_source"].values()) == sample["bytes"]
    for name in ("light", "heavy"):
        want = card["sources"][name]["mixture"]["share_of_train_bytes"]
        assert abs(sample["share_per_source"][name] - want) < 0.03, (name, sample, want)
    # the weights did their work: about 1:3 (light's documents are a little shorter)
    assert 0.2 < sample["share_per_source"]["light"] < 0.3
