"""A token split stored as several files (one per encoded unit) read as one
sequence: against ``np.concatenate`` of the files for lengths, dtypes, slices
(those straddling a file boundary included), integer indexing and empty files;
the per-file damage checks; and a run written in the one-file layout of
earlier versions still opening."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fmforge.rundir import RunDir
from fmforge.tokenizer import encode
from fmforge.tokenizer.tokens import DamagedTokensError, SplitTokens, open_tokens
from fmforge.tokenizer.train import run_tokenizer_stage


def _parts(sizes, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, np.iinfo(dtype).max, n).astype(dtype) for n in sizes]


@pytest.mark.parametrize("sizes", [[7], [5, 0, 9, 1, 0, 13], [0, 3, 3], [4, 4, 0], [1] * 9, [0, 0]])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_reads_as_the_concatenation_of_its_files(sizes, dtype):
    parts = _parts(sizes, dtype)
    oracle = np.concatenate(parts)
    tokens = SplitTokens(parts, dtype)
    n = len(oracle)
    assert len(tokens) == n and tokens.dtype == np.dtype(dtype) and tokens.shape == (n,)
    assert np.asarray(tokens).dtype == np.dtype(dtype)
    assert np.array_equal(np.asarray(tokens), oracle)
    assert np.array_equal(np.asarray(tokens, dtype=np.int64), oracle.astype(np.int64))
    for i in range(-n, n):
        assert tokens[i] == oracle[i], i
    for bad in (n, -n - 1):
        with pytest.raises(IndexError):
            tokens[bad]
    # every window, so every one that straddles a boundary (or an empty file)
    for a in range(-2, n + 3):
        for b in range(-2, n + 3):
            got = tokens[a:b]
            assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype)
            assert np.array_equal(got, oracle[a:b]), (a, b)
    assert np.array_equal(tokens[:], oracle) and np.array_equal(tokens[1::3], oracle[1::3])
    assert np.array_equal(tokens[::-2], oracle[::-2])


def test_random_windows_over_many_files_match_the_concatenation():
    rng = np.random.default_rng(1)
    parts = _parts(rng.integers(0, 300, 40).tolist(), seed=2)
    oracle, tokens = np.concatenate(parts), SplitTokens(parts, np.uint16)
    bounds = np.cumsum([len(p) for p in parts])
    for _ in range(2000):
        a = int(rng.integers(0, len(oracle)))
        b = a + int(rng.integers(0, 700))
        assert np.array_equal(tokens[a:b], oracle[a:b]), (a, b)
    for edge in bounds[:-1]:  # windows just across each boundary
        assert np.array_equal(tokens[edge - 3: edge + 4], oracle[edge - 3: edge + 4])


def test_no_files_is_an_empty_split():
    tokens = SplitTokens([], np.uint32)
    assert len(tokens) == 0 and tokens.dtype == np.uint32
    assert np.asarray(tokens).shape == (0,) and tokens[0:5].shape == (0,)


@pytest.fixture
def multi_file_run(direct_run, make_docs, monkeypatch):
    """A tokenized run whose train split is several files (one per unit)."""
    import fmforge.data.shards as shards

    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", 16)
    monkeypatch.setattr(encode, "ROW_GROUPS_PER_UNIT", 1)
    cfg, run = direct_run(make_docs(100, 1, "wiki"), make_docs(20, 2, "wiki"), vocab_size=300, min_frequency=1)
    run_tokenizer_stage(cfg, run)
    encode.run_tokenize_stage(cfg, run)
    return run


def _files(run, split):
    meta = json.loads((run.tokens / "meta.json").read_text())
    return [(run.tokens / f["path"], f["tokens"]) for f in meta["files"][split]]


def test_a_tokenized_split_is_one_file_per_unit_read_without_copying(multi_file_run):
    run = multi_file_run
    files = _files(run, "train")
    assert len(files) == 7  # 100 documents in row groups of 16
    assert [p.relative_to(run.tokens).as_posix() for p, _ in files] == [f"train/{k:05d}.bin" for k in range(7)]
    assert not (run.tokens / "train.bin").exists()
    tokens = open_tokens(run, "train")
    oracle = np.concatenate([np.fromfile(p, dtype=np.uint16) for p, _ in files])
    assert [len(np.fromfile(p, dtype=np.uint16)) for p, _ in files] == [n for _, n in files]
    assert len(tokens) == len(oracle) == json.loads((run.tokens / "meta.json").read_text())["train_tokens"]
    assert isinstance(tokens[3:9], np.memmap)  # a window inside one file: a view of its map
    assert np.array_equal(np.asarray(tokens), oracle)


def test_a_truncated_middle_file_is_named(multi_file_run):
    run = multi_file_run
    files = _files(run, "train")
    middle, n = files[3]
    os.truncate(middle, 2 * (n - 5))
    with pytest.raises(DamagedTokensError) as e:
        open_tokens(run, "train")
    msg = str(e.value)
    assert str(middle) in msg and "fmforge tokenize CONFIG --force" in msg
    assert f"{n - 5} uint16 tokens" in msg and str(n) in msg
    assert not any(str(p) in msg for p, _ in files if p != middle)


def test_a_missing_middle_file_is_named(multi_file_run):
    run = multi_file_run
    middle, _ = _files(run, "train")[2]
    middle.unlink()
    with pytest.raises(DamagedTokensError, match="is missing") as e:
        open_tokens(run, "train")
    assert str(middle) in str(e.value) and "--force" in str(e.value)


def test_a_run_in_the_one_file_layout_still_opens(tmp_path):
    """Runs tokenized before the split was kept as several files: ``tokens/train.bin``."""
    run = RunDir(tmp_path)
    run.tokens.mkdir(parents=True)
    train, val = _parts([50], seed=3)[0], _parts([9], seed=4)[0]
    train.tofile(run.tokens / "train.bin")
    val.tofile(run.tokens / "val.bin")
    (run.tokens / "meta.json").write_text(json.dumps({"dtype": "uint16", "train_tokens": 50, "val_tokens": 9}))
    assert np.array_equal(open_tokens(run, "train")[10:40], train[10:40])
    assert np.array_equal(np.asarray(open_tokens(run, "val")), val)
    os.truncate(run.tokens / "train.bin", 99)
    with pytest.raises(DamagedTokensError, match="truncated mid-token") as e:
        open_tokens(run, "train")
    assert str(run.tokens / "train.bin") in str(e.value)


def test_a_split_of_more_files_than_the_process_may_open_reads_whole(tmp_path):
    """Hundreds of gigabytes are thousands of units, one file each; a memory map
    holds its file open, and many systems allow a process 1,024 open files. With a
    limit of 200 here, a split of 600 files must still open, slice across files and
    concatenate (it kept every file mapped, and stopped at the 200th)."""
    import resource

    run = RunDir(tmp_path)
    (run.tokens / "train").mkdir(parents=True)
    parts = _parts([7] * 600, seed=5)
    files = []
    for k, part in enumerate(parts):
        part.tofile(run.tokens / "train" / f"{k:05d}.bin")
        files.append({"path": f"train/{k:05d}.bin", "tokens": len(part)})
    (run.tokens / "meta.json").write_text(json.dumps({"dtype": "uint16", "train_tokens": 7 * 600,
                                                      "files": {"train": files}}))
    whole = np.concatenate(parts)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        tokens = open_tokens(run, "train")
        rng = np.random.default_rng(0)
        for start in rng.integers(0, len(whole) - 20, 300):
            assert np.array_equal(tokens[start:start + 20], whole[start:start + 20])
        assert np.array_equal(np.asarray(tokens), whole)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
