"""Held-out evaluation: bits per byte against a hand computation, per source and
overall, the sliding-window stride, the compressor baselines, eval.json by step."""

from __future__ import annotations

import json
import lzma
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from fmforge.config import ModelConfig, config_from_dict
from fmforge.eval.heldout import gzip_bits_per_byte, xz_bits_per_byte
from fmforge.eval.stage import run_eval_stage
from fmforge.inference.loading import load_trained
from fmforge.model.scoring import score_tokens
from fmforge.model.transformer import Transformer


@pytest.mark.skipif(not (shutil.which("gzip") and shutil.which("xz")), reason="needs the gzip and xz programs")
@pytest.mark.parametrize("kind", ["text", "code", "repetitive", "noise"])
def test_compressor_baselines_equal_what_the_gzip_and_xz_programs_achieve(kind):
    """The report says "gzip -9" and "xz -9e": the figures must be what those
    programs give on the same bytes (their own output sizes, read back here)."""
    rng = np.random.default_rng(0)
    data = {
        "text": " ".join(f"word{i % 97} value{i % 13} and{rng.integers(0, 50)}" for i in range(3000)).encode(),
        "code": Path(lzma.__file__).read_bytes(),
        "repetitive": b"abc" * 10_000,
        "noise": rng.bytes(10_000),
    }[kind]
    gz = subprocess.run(["gzip", "-9", "-n", "-c"], input=data, capture_output=True, check=True).stdout
    xz = subprocess.run(["xz", "-9e", "-c"], input=data, capture_output=True, check=True).stdout
    # xz is the same LZMA2 encoder at the same preset: byte for byte the same size.
    assert xz_bits_per_byte(data) == pytest.approx(8 * len(xz) / len(data), rel=1e-9)
    # gzip's deflate and zlib's differ in their match search: within 1%.
    assert gzip_bits_per_byte(data) == pytest.approx(8 * len(gz) / len(data), rel=0.01)
    if kind == "repetitive":
        assert gzip_bits_per_byte(data) < 0.1 and xz_bits_per_byte(data) < 0.1
    if kind == "noise":  # incompressible: a little over 8 bits per byte
        assert 8.0 < gzip_bits_per_byte(data) < 8.1 and 8.0 < xz_bits_per_byte(data) < 8.1


@pytest.mark.parametrize("stride", [None, 8, 3, 1])
def test_bits_per_byte_by_hand_with_each_target_scored_in_its_window(stride):
    """Each target t is predicted from tokens[pos:t], pos the start of the window
    that scores it: 0 for t <= L, else the first multiple of the stride with pos + L >= t."""
    torch.manual_seed(0)
    L = 8
    model = Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, seq_len=L)).eval()
    tokens = np.random.default_rng(1).integers(0, 40, size=29)
    token_bytes = np.arange(40) % 3 + 1  # token i stands for i % 3 + 1 bytes
    res = score_tokens(model, tokens, L, batch_size=2, device=torch.device("cpu"),
                       token_bytes=token_bytes, stride=stride)
    s = stride or L
    nats = 0.0
    with torch.no_grad():
        for t in range(1, len(tokens)):
            pos = 0 if t <= L else math.ceil((t - L) / s) * s
            logits = model(torch.from_numpy(tokens[pos:t].astype(np.int64))[None])[0, -1]
            nats -= float(torch.log_softmax(logits, -1)[tokens[t]])
    n_bytes = sum(int(tokens[t]) % 3 + 1 for t in range(1, len(tokens)))
    assert res.tokens == len(tokens) - 1
    assert res.bytes == n_bytes
    assert math.isclose(res.nats, nats, rel_tol=1e-5)
    assert math.isclose(res.bits_per_byte, nats / math.log(2) / n_bytes, rel_tol=1e-5)


@pytest.mark.parametrize("stride", [None, 5, 1])
def test_a_bos_model_sees_bos_first_in_every_window_and_bos_is_never_scored(stride):
    """A model trained with a beginning-of-sequence token: target t is predicted from
    [bos] + tokens[pos+1:t] (the window's first position holds BOS in place of its
    stream token), pos as without BOS; targets that are BOS are not scored."""
    torch.manual_seed(0)
    L, bos = 8, 1
    model = Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, seq_len=L)).eval()
    tokens = np.random.default_rng(2).integers(2, 40, size=31)
    tokens[[0, 6, 13, 14, 22]] = bos  # documents open with BOS
    res = score_tokens(model, tokens, L, batch_size=3, device=torch.device("cpu"), stride=stride, bos_id=bos)
    s = stride or L
    nats, scored = 0.0, 0
    with torch.no_grad():
        for t in range(1, len(tokens)):
            if tokens[t] == bos:
                continue
            pos = 0 if t <= L else math.ceil((t - L) / s) * s
            context = np.concatenate([[bos], tokens[pos + 1: t]]).astype(np.int64)
            logits = model(torch.from_numpy(context)[None])[0, -1]
            nats -= float(torch.log_softmax(logits, -1)[tokens[t]])
            scored += 1
    assert res.tokens == scored == len(tokens) - 5
    assert math.isclose(res.nats, nats, rel_tol=1e-5)


def test_stride_longer_than_the_window_is_refused():
    model = Transformer(ModelConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=2, seq_len=8))
    with pytest.raises(ValueError, match="stride must be in 1..8"):
        score_tokens(model, np.arange(20), 8, 2, torch.device("cpu"), stride=9)


def _val_docs(run) -> dict[str, list[str]]:
    docs: dict[str, list[str]] = {}
    for shard in sorted(run.data.glob("val*.parquet")):
        for row in pq.read_table(shard, columns=["text", "source"]).to_pylist():
            docs.setdefault(row["source"], []).append(row["text"])
    return docs


def test_per_source_bits_per_byte_equal_a_hand_computation_on_the_real_run(trained_run):
    """The eval stage's per-source figure: encode the source's held-out documents with
    the run's tokenizer, [eos] doc [eos] doc ..., score them with the model's logits
    directly, divide by the documents' UTF-8 bytes."""
    cfg = config_from_dict(yaml.safe_load(trained_run.config.read_text()))
    summary = run_eval_stage(cfg, trained_run)
    ev = json.loads(trained_run.eval_json.read_text())
    assert summary["step"] == ev["step"] == 12
    assert set(ev["per_source"]) == {"code", "prose"}
    trained = load_trained(trained_run, device="cpu")
    L = trained.model.cfg.seq_len
    total_nats = 0.0
    for source, texts in _val_docs(trained_run).items():
        stream = [trained.eos_id]
        for text in texts:
            stream += trained.tokenizer.encode(text, add_special_tokens=False).ids + [trained.eos_id]
        nats = 0.0
        with torch.no_grad():
            for start in range(0, len(stream) - 1, L):  # non-overlapping windows
                window = torch.tensor(stream[start: start + L + 1])
                logp = torch.log_softmax(trained.model(window[None, :-1])[0], -1)
                nats -= float(logp.gather(1, window[1:, None]).sum())
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        got = ev["per_source"][source]
        assert got["bytes"] == n_bytes and got["tokens"] == len(stream) - 1
        assert math.isclose(got["bits_per_byte"], nats / math.log(2) / n_bytes, rel_tol=1e-4)
        assert math.isclose(got["loss"], nats / (len(stream) - 1), rel_tol=1e-4)
        joined = "".join(texts).encode("utf-8")
        assert got["gzip_bits_per_byte"] == pytest.approx(gzip_bits_per_byte(joined))
        assert got["xz_bits_per_byte"] == pytest.approx(xz_bits_per_byte(joined))
        total_nats += nats
    total = sum(len(t.encode()) for ts in _val_docs(trained_run).values() for t in ts)
    assert ev["bytes"] == total  # overall: every held-out byte, once
    # overall: the sum over the per-source streams, as for every --against candidate
    # (failed before: the run's overall was its interleaved val split)
    assert math.isclose(ev["bits_per_byte"], total_nats / math.log(2) / total, rel_tol=1e-5)
    assert ev["steps"]["12"]["overall_is"] == "sum over per-source streams"
    compressed = sum(ev["per_source"][s]["xz_bits_per_byte"] * ev["per_source"][s]["bytes"]
                     for s in ev["per_source"])
    assert ev["xz_bits_per_byte"] == pytest.approx(compressed / total)


def test_step_and_stride_append_to_eval_json_by_step(trained_run):
    cfg = config_from_dict(yaml.safe_load(trained_run.config.read_text()))
    run_eval_stage(cfg, trained_run)
    before = json.loads(trained_run.eval_json.read_text())
    strided = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"stride": 8})})
    run_eval_stage(strided, trained_run, step=6)
    ev = json.loads(trained_run.eval_json.read_text())
    assert set(ev["steps"]) >= {"6", "12"}
    assert ev["step"] == 12 and ev["bits_per_byte"] == before["bits_per_byte"]  # latest stays on top
    assert ev["steps"]["6"]["stride"] == 8 and ev["steps"]["12"]["stride"] == 32
    assert ev["history"][-1]["step"] == 6 and len(ev["history"]) == len(before["history"]) + 1
    # more context per token cannot be measured on 12 steps reliably, but the figures differ
    assert ev["steps"]["6"]["overall"]["bits_per_byte"] != ev["steps"]["12"]["overall"]["bits_per_byte"]


def test_missing_step_names_the_steps_there_are(trained_run):
    cfg = config_from_dict(yaml.safe_load(trained_run.config.read_text()))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .* there are: 6, 12"):
        run_eval_stage(cfg, trained_run, step=7)
