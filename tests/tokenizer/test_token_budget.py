"""A training mixture given in tokens: data.total_tokens and a share per source.
The realised token counts per source come out at the shares (within a document
or so), counted directly from the token file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmforge.config import ConfigError, config_from_dict
from fmforge.data.stage import run_data_stage
from fmforge.rundir import RunDir
from fmforge.tokenizer.encode import run_tokenize_stage
from fmforge.tokenizer.tokens import open_tokens
from fmforge.tokenizer.train import run_tokenizer_stage


def _cfg(tmp_path, **data):
    return config_from_dict({
        "name": "b", "seed": 3, "out_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "short", "paths": [str(tmp_path / "s" / "*.txt")], "share": 0.5},
                             {"name": "long", "paths": [str(tmp_path / "l" / "*.txt")], "share": 0.5}],
                 "min_chars": 1, "val_fraction": 0.0, **data},
        "tokenizer": {"vocab_size": 300}, "model": {"seq_len": 16},
    })


def test_shares_of_a_token_budget_are_met(tmp_path):
    for i in range(200):  # short documents: few tokens per source
        (tmp_path / "s").mkdir(exist_ok=True)
        (tmp_path / "s" / f"{i:03d}.txt").write_text(f"short note {i}\n")
    for i in range(40):  # long documents: many more tokens
        (tmp_path / "l").mkdir(exist_ok=True)
        (tmp_path / "l" / f"{i:03d}.txt").write_text(f"a long chapter {i} " + "with many words " * 40)
    cfg = _cfg(tmp_path, total_tokens=8_000)
    run = RunDir(tmp_path / "run")
    run_data_stage(cfg, run)
    run_tokenizer_stage(cfg, run)
    run_tokenize_stage(cfg, run)
    meta = json.loads((run.tokens / "meta.json").read_text())
    offsets = np.load(run.tokens / "train.docs.npy")
    src = np.load(run.tokens / "train.sources.npy")
    per_source = np.bincount(src, weights=np.diff(offsets), minlength=2)
    assert len(open_tokens(run, "train")) == offsets[-1] == meta["train_tokens"] == per_source.sum()
    # each source within a few of its documents of half the budget
    names = meta["sources"]
    for i, name in enumerate(names):
        doc_tokens = meta["mixture"]["per_source"][name]["tokens_before"] / max(1, int((src == i).sum()))
        assert abs(per_source[i] - 4_000) < 4_000 * 0.15 + 5 * doc_tokens, (name, per_source[i])
        assert meta["mixture"]["per_source"][name]["tokens"] == per_source[i]
    # the short source had far fewer tokens, so it is repeated, the long one subsampled
    assert meta["mixture"]["per_source"]["short"]["weight"] > 1 > meta["mixture"]["per_source"]["long"]["weight"]


def test_a_budget_needs_shares_on_every_source_and_no_weights(tmp_path):
    with pytest.raises(ConfigError, match="share on every source"):
        config_from_dict({"name": "x", "data": {"total_tokens": 100, "sources": [
            {"name": "a", "paths": ["a"], "share": 1.0}, {"name": "b", "paths": ["b"]}]}})
    with pytest.raises(ConfigError, match="sum to 1"):
        config_from_dict({"name": "x", "data": {"total_tokens": 100, "sources": [
            {"name": "a", "paths": ["a"], "share": 0.3}, {"name": "b", "paths": ["b"], "share": 0.3}]}})


def _split_on_disk(root, parts, offsets, src):
    """``root`` as a tokens/ directory whose train split is ``parts``, one file each."""
    (root / "train").mkdir(parents=True)
    files = []
    for k, p in enumerate(parts):
        p.tofile(root / "train" / f"{k:05d}.bin")
        files.append({"path": f"train/{k:05d}.bin", "tokens": len(p)})
    np.save(root / "train.docs.npy", offsets)
    np.save(root / "train.sources.npy", src)
    return files


def test_a_budget_over_a_split_of_several_files_mixes_as_over_one(tmp_path, monkeypatch):
    """The same documents in one file or cut into several at document ends (one per
    encoded unit): the same mixed tokens, document index and sources; the mixed
    split is written again as files of about the largest one's size, each ending
    at a document's end."""
    from fmforge.tokenizer import mixture

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    src = (rng.random(300) < 0.3).astype(np.uint16)
    whole = rng.integers(0, 60_000, offsets[-1]).astype(np.uint16)
    cuts = [0, 40, 41, 170, 300]  # documents per input file: 40, 1, 129, 130
    parts = [whole[offsets[a]:offsets[b]] for a, b in zip(cuts, cuts[1:])]
    args = (["a", "b"], {"a": 0.5, "b": 0.5}, 9_000, 7, np.dtype(np.uint16))
    one = _split_on_disk(tmp_path / "one", [whole], offsets, src)
    many = _split_on_disk(tmp_path / "many", parts, offsets, src)
    mix1, files1 = mixture.apply_token_budget(tmp_path / "one", "train", one, *args)
    monkeypatch.setattr(mixture, "WRITE_BUFFER_TOKENS", 50)  # written a few documents at a time
    mix2, files2 = mixture.apply_token_budget(tmp_path / "many", "train", many, *args)
    assert mix1 == mix2 and mix2["tokens"] == sum(f["tokens"] for f in files2)

    def read(root, files):
        got = [np.fromfile(root / f["path"], dtype=np.uint16) for f in files]
        assert [len(g) for g in got] == [f["tokens"] for f in files]
        assert sorted(p.name for p in (root / "train").iterdir()) == [f["path"][6:] for f in files]
        return np.concatenate(got)

    assert np.array_equal(read(tmp_path / "one", files1), read(tmp_path / "many", files2))
    for name in ("train.docs.npy", "train.sources.npy"):
        assert np.array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "many" / name))
    new_offsets = np.load(tmp_path / "many" / "train.docs.npy")
    largest = max(len(p) for p in parts)
    ends = np.cumsum([f["tokens"] for f in files2])
    assert len(files2) > 2 and set(ends.tolist()) <= set(new_offsets.tolist())  # files end at documents' ends
    assert all(largest <= f["tokens"] < largest + 40 for f in files2[:-1]) and 0 < files2[-1]["tokens"] < largest + 40
    assert not list(tmp_path.glob("*/.train.mix"))
