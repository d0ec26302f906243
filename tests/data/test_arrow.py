"""The data stage's Arrow helpers (``fmforge.data.arrow``): the same arrays as
pyarrow's own conversion, and no pandas import in the stages' processes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def test_built_arrays_equal_pyarrows_own_conversion(tmp_path):
    from fmforge.data import arrow

    texts = ["plain", "", "naïve café", "emoji \U0001f468\u200d\U0001f469 and CJK 漢字", "x" * 10_000]
    assert arrow.strings(texts).equals(pa.array(texts, pa.string()))
    digests = [bytes(range(i, i + 16)) for i in range(4)]
    assert arrow.fixed_binary(digests, 16).equals(pa.array(digests, pa.binary(16)))
    big = [0, 1, 2**63 + 5, 2**64 - 1]
    assert arrow.numbers(big, pa.uint64()).equals(pa.array(big, pa.uint64()))
    assert arrow.numbers([-3, 7], pa.int32()).equals(pa.array([-3, 7], pa.int32()))
    schema = pa.schema([("id", pa.string()), ("digest", pa.binary(16)), ("n", pa.int64())])
    cols = [["a", "b", "c", "d"], digests, [5, 6, 7, 8]]
    expected = pa.table([pa.array(c, f.type) for c, f in zip(cols, schema)], schema=schema)
    assert arrow.table(cols, schema).equals(expected)
    assert arrow.record_batch(cols, schema).equals(expected.to_batches()[0])
    with pytest.raises(ValueError):
        arrow.fixed_binary([b"short"], 16)

    # a parquet file reads back as pq.read_table reads it; numbers come out as to_numpy gives them
    pq.write_table(expected, tmp_path / "t.parquet", row_group_size=3)
    got = arrow.read_parquet(str(tmp_path / "t.parquet"))
    assert got.equals(pq.read_table(tmp_path / "t.parquet"))
    chunked = pa.chunked_array([pa.array([5, 6], pa.int64()), pa.array([7, 8], pa.int64())])
    np.testing.assert_array_equal(arrow.to_numpy(chunked), chunked.to_numpy())
    sliced = expected.column("n").chunk(0).slice(1, 2)
    np.testing.assert_array_equal(arrow.to_numpy(sliced), sliced.to_numpy())
    with pytest.raises(ValueError):
        arrow.to_numpy(pa.array([1, None], pa.int64()))


STAGES = textwrap.dedent("""
    import json, sys
    from fmforge.config import config_from_dict
    from fmforge.data.stage import run_data_stage
    from fmforge.rundir import RunDir
    from fmforge.tokenizer.encode import run_tokenize_stage
    from fmforge.tokenizer.train import run_tokenizer_stage

    corpus, out = sys.argv[1], sys.argv[2]
    cfg = config_from_dict({"name": "t", "out_dir": out, "data": {
        "sources": [{"name": "docs", "paths": [corpus + "/*.txt"]}], "min_chars": 1, "workers": 1,
        "dedup": "minhash", "keep_rejected": True, "val_fraction": 0.2},
        "tokenizer": {"vocab_size": 300}})
    run = RunDir(out)
    before = "pandas" in sys.modules
    run_data_stage(cfg, run)
    after_data = "pandas" in sys.modules
    run_tokenizer_stage(cfg, run)
    run_tokenize_stage(cfg, run)
    print(json.dumps({"before": before, "data": after_data, "tokenize": "pandas" in sys.modules}))
""")


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pyarrow imports pandas only where it is installed")
def test_the_stages_keep_pandas_out_of_their_processes(tmp_path):
    """pyarrow imports pandas (about 50 MB resident) the first time it converts a list or
    reads through pq.read_table; the data and tokenize stages run in one process here
    (workers=1), so this process is what every worker of theirs would be."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        words = " ".join(f"w{k}" for k in rng.integers(0, 100_000, 60))
        (corpus / f"{i:02d}.txt").write_text(f"Document {i}. {words}.\n")
    (corpus / "dup.txt").write_text((corpus / "03.txt").read_text())
    out = subprocess.run([sys.executable, "-c", STAGES, str(corpus), str(tmp_path / "run")], capture_output=True,
                         text=True, env={**os.environ, "FMFORGE_NO_PROGRESS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"before": False, "data": False, "tokenize": False}
    assert (Path(tmp_path / "run") / "tokens" / "meta.json").is_file()
