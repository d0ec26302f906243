"""``eval/heldout.py`` without a trained run: the error of each wrong setting, the
stream layout per source, and the compressor figures on exactly the scored bytes
(checked against ``gzip``/``lzma`` run here on bytes written out by hand)."""

from __future__ import annotations

import gzip
import lzma
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing

import fmforge.eval.heldout as heldout
from fmforge.config import ModelConfig
from fmforge.eval.heldout import (
    EVAL_STAGE_HINT,
    HeldoutSettings,
    evaluate_heldout,
    gzip_bits_per_byte,
    score_stream,
    source_streams,
    xz_bits_per_byte,
)
from fmforge.model.scoring import score_tokens
from fmforge.model.transformer import Transformer

CPU = torch.device("cpu")


def test_compressors_refuse_nothing_and_measure_by_hand():
    for f in (gzip_bits_per_byte, xz_bits_per_byte):
        with pytest.raises(ValueError) as err:
            f(b"")
        assert str(err.value) == "no bytes to compress"
    data = b"hello hello hello world " * 40
    assert gzip_bits_per_byte(data) == 8 * len(gzip.compress(data, 9, mtime=0)) / len(data)
    want_xz = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    assert xz_bits_per_byte(data) == 8 * len(want_xz) / len(data)
    # One byte: gzip's 20-byte frame plus the deflate block of it, read off the format.
    assert gzip_bits_per_byte(b"a") == 8 * 21


def _model(vocab=20, seq_len=4):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, seq_len=seq_len)).eval()


def test_score_stream_baselines_are_on_the_scored_targets_only():
    model = _model()
    # token i stands for the letter chr(97 + i): bytes by hand.
    table = [bytes([97 + i]) for i in range(20)]
    token_bytes = np.ones(20, dtype=np.int64)
    tokens = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], dtype=np.int64)
    settings = HeldoutSettings(seq_len=4, batch_size=2, max_tokens=7)
    got = score_stream(model, tokens, settings, CPU, table, token_bytes)
    scored = bytes(97 + int(t) for t in tokens[1:8])  # the 7 targets after the first token
    assert scored == b"bebfjcg"
    res = score_tokens(model, tokens, 4, 2, CPU, max_tokens=7, token_bytes=token_bytes)
    assert got == {
        "nats": res.nats,
        "loss": res.loss,
        "perplexity": res.perplexity,
        "bits_per_byte": res.bits_per_byte,
        "gzip_bits_per_byte": 8 * len(gzip.compress(scored, 9, mtime=0)) / 7,
        "xz_bits_per_byte": 8 * len(lzma.compress(scored, format=lzma.FORMAT_XZ,
                                                 preset=9 | lzma.PRESET_EXTREME)) / 7,
        "tokens": 7,
        "bytes": 7,
    }
    # stride is passed on: with stride 1 the loss is another figure, the bytes the same.
    strided = score_stream(model, tokens, HeldoutSettings(seq_len=4, stride=1), CPU, table, token_bytes)
    want = score_tokens(model, tokens, 4, 8, CPU, token_bytes=token_bytes, stride=1)
    assert strided["loss"] == want.loss and strided["tokens"] == 10
    # Targets that stand for no bytes (special tokens): no baseline rather than an error.
    empty = score_stream(model, tokens, settings, CPU, [b""] * 20, np.zeros(20, dtype=np.int64))
    assert empty["gzip_bits_per_byte"] is None and empty["xz_bits_per_byte"] is None
    assert empty["bits_per_byte"] is None and empty["bytes"] == 0


def _tokenizer() -> Tokenizer:
    vocab = {"<eos>": 0, "<unk>": 1, "a": 2, "b": 3, "c": 4, "d": 5, "<bos>": 6}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens(["<eos>", "<bos>"])  # stand for no bytes
    # A tokenizer that adds <bos> on its own: the stage encodes without it.
    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 6)])
    return tok


def test_source_streams_layout(monkeypatch):
    records = [{"text": "a b", "source": "web"}, {"text": "c", "source": "books"},
               {"text": "d d", "source": "web"}, {"text": "b", "source": None},
               {"text": "", "source": "books"}]
    seen = {}

    def fake_records(data, split, columns):
        seen.update(data=data, split=split, columns=columns)
        return iter(records)

    monkeypatch.setattr(heldout, "iter_split_records", fake_records)
    run = SimpleNamespace(data=Path("/run/data"))
    assert _tokenizer().encode("a b").ids == [6, 2, 3]  # the post-processor is live
    streams = source_streams(run, _tokenizer(), eos_id=0)
    assert seen == {"data": Path("/run/data"), "split": "val", "columns": ("text", "source")}
    assert list(streams) == ["(none)", "books", "web"]  # sorted; no source is "(none)"
    assert streams["web"].tolist() == [0, 2, 3, 0, 5, 5, 0]
    assert streams["books"].tolist() == [0, 4, 0, 0]
    assert streams["(none)"].tolist() == [0, 3, 0]
    assert all(s.dtype == np.int64 for s in streams.values())
    assert source_streams(run, _tokenizer(), 0, dtype=np.int32)["web"].dtype == np.int32


class _Run:
    def __init__(self, root: Path, meta: dict):
        self.root, self.tokens, self._meta = root, root / "tokens", meta

    def tokens_meta(self):
        return self._meta


def test_each_wrong_setting_is_refused_with_what_to_do(monkeypatch, tmp_path):
    model = _model(vocab=20, seq_len=4)
    ok = {"val_tokens": 5, "vocab_size": 20}
    with pytest.raises(ValueError) as err:
        evaluate_heldout(model, _tokenizer(), 0, _Run(tmp_path, ok), HeldoutSettings(seq_len=4, stride=5), CPU)
    assert str(err.value) == ("eval.stride=5 is longer than the window (model.seq_len=4): set eval.stride "
                              "to at most 4, or leave it unset for non-overlapping windows")
    with pytest.raises(ValueError) as err:
        evaluate_heldout(model, _tokenizer(), 0, _Run(tmp_path, {"val_tokens": 0, "val_documents": 3}),
                         HeldoutSettings(seq_len=4, stride=4), CPU)
    assert str(err.value) == (f"the held-out split of {tmp_path} is empty (3 documents in the val split of "
                              f"{tmp_path / 'tokens'}): raise data.val_fraction (or add "
                              f"documents) and rerun {EVAL_STAGE_HINT}")
    with pytest.raises(ValueError, match=r"is empty \(0 documents in "):
        evaluate_heldout(model, _tokenizer(), 0, _Run(tmp_path, {}), HeldoutSettings(seq_len=4), CPU)
    with pytest.raises(ValueError) as err:
        evaluate_heldout(model, _tokenizer(), 0, _Run(tmp_path, {"val_tokens": 1, "vocab_size": 21}),
                         HeldoutSettings(seq_len=4), CPU)
    assert str(err.value) == ("the run's tokens use a vocabulary of 21 ids but the checkpoint's model has "
                              "20: the checkpoint belongs to another tokenizer; retrain it with "
                              "`fmforge train CONFIG` (or `fmforge run CONFIG`)")
    assert EVAL_STAGE_HINT == "`fmforge data CONFIG` then `fmforge tokenize CONFIG` (or `fmforge run CONFIG`)"


def test_overall_is_the_sum_over_the_per_source_streams(monkeypatch, tmp_path):
    """Each source's stream is scored once; overall is their nats over their bytes
    (and the compressors' bits over the same bytes), not a second pass over the
    interleaved split (failed before: the val split of tokens/ was scored too)."""
    model = _model(vocab=20, seq_len=4)
    monkeypatch.setattr(heldout, "source_streams",
                        lambda run, tok, eos: {"x": np.array([0, 2, 3, 0]), "y": np.array([0, 4, 0])})
    calls = []
    real = heldout.score_stream

    def spy(m, tokens, settings, device, table, token_bytes):
        calls.append(tokens.tolist())
        assert len(table) == 20 and len(token_bytes) == 20
        return real(m, tokens, settings, device, table, token_bytes)

    monkeypatch.setattr(heldout, "score_stream", spy)
    # Equal vocabularies and a meta without vocab_size both pass; stride == window passes.
    for meta in ({"val_tokens": 7, "vocab_size": 20}, {"val_tokens": 7}):
        calls.clear()
        out = evaluate_heldout(model, _tokenizer(), 0, _Run(tmp_path, meta),
                               HeldoutSettings(seq_len=4, stride=4), CPU)
        assert calls == [[0, 2, 3, 0], [0, 4, 0]]
        assert set(out["per_source"]) == {"x", "y"} and out["overall_is"] == "sum over per-source streams"
        assert out["dtype"] == "float32" and out["convention"]["bos"] is False
        x, y, o = out["per_source"]["x"], out["per_source"]["y"], out["overall"]
        assert o["tokens"] == 5 and y["tokens"] == 2
        # tokenizer ids: b"a" for 2, b"b" for 3 ...; <eos> stands for no bytes.
        assert x["bytes"] == 2 and o["bytes"] == 3
        assert math.isclose(o["bits_per_byte"], (x["nats"] + y["nats"]) / math.log(2) / 3, rel_tol=1e-9)
        assert math.isclose(o["loss"], (x["nats"] + y["nats"]) / 5, rel_tol=1e-9)
        gz = (gzip_bits_per_byte(b"ab") * 2 + gzip_bits_per_byte(b"c")) / 3
        assert math.isclose(o["gzip_bits_per_byte"], gz, rel_tol=1e-9)


def test_overall_by_hand_with_a_source_of_no_bytes_and_a_missing_baseline():
    """Overall: every source's nats and tokens, over every source's bytes; the
    compressors' bits over the bytes of the sources that have any (a source whose
    targets stand for no bytes has no baseline and weighs nothing)."""
    per_source = {
        "a": {"nats": 10.0, "tokens": 5, "bytes": 20, "gzip_bits_per_byte": 2.0, "xz_bits_per_byte": 1.5},
        "b": {"nats": 3.0, "tokens": 2, "bytes": 0, "gzip_bits_per_byte": None, "xz_bits_per_byte": None},
        "c": {"nats": 6.0, "tokens": 4, "bytes": 10, "gzip_bits_per_byte": 3.0, "xz_bits_per_byte": 2.5},
    }
    o = heldout.overall_of(per_source)
    assert (o["nats"], o["tokens"], o["bytes"]) == (19.0, 11, 30)
    assert o["loss"] == pytest.approx(19 / 11) and o["perplexity"] == pytest.approx(math.exp(19 / 11))
    assert o["bits_per_byte"] == pytest.approx(19 / math.log(2) / 30)
    assert o["gzip_bits_per_byte"] == pytest.approx((2.0 * 20 + 3.0 * 10) / 30)
    assert o["xz_bits_per_byte"] == pytest.approx((1.5 * 20 + 2.5 * 10) / 30)
    # a source with bytes but no baseline: no overall baseline rather than a wrong one
    per_source["c"]["xz_bits_per_byte"] = None
    o = heldout.overall_of(per_source)
    assert o["xz_bits_per_byte"] is None and o["gzip_bits_per_byte"] == pytest.approx(70 / 30)
    # no bytes at all: no bits per byte, no baselines, the loss still there
    nothing = heldout.overall_of({"b": per_source["b"]})
    assert nothing["bits_per_byte"] is None and nothing["gzip_bits_per_byte"] is None
    assert nothing["xz_bits_per_byte"] is None and nothing["loss"] == 1.5 and nothing["bytes"] == 0
    # one source: overall is that source
    one = heldout.overall_of({"a": per_source["a"]})
    assert one["bits_per_byte"] == pytest.approx(10 / math.log(2) / 20)
    assert (one["gzip_bits_per_byte"], one["xz_bits_per_byte"]) == (2.0, 1.5)
    # an untrained model's loss can be huge: a number, not an OverflowError
    huge = heldout.overall_of({"a": {**per_source["a"], "nats": 5 * 800.0}})
    assert huge["loss"] == 800.0 and math.isfinite(huge["perplexity"]) and huge["perplexity"] > 1e300


def test_a_source_whose_documents_are_empty_counts_its_tokens_but_no_bytes(monkeypatch, tmp_path):
    """A source of empty documents is [eos] [eos]: one target, the end-of-text token,
    which stands for no bytes. It adds its nats and its token to the overall, nothing
    to its bytes or to the compressors' figures."""
    model = _model(vocab=20, seq_len=4)
    run, tok, asked = _Run(tmp_path, {"val_tokens": 4}), _tokenizer(), []

    def streams(run_, tok_, eos):
        asked.append((run_, tok_, eos))
        return {"x": np.array([0, 2, 3, 0]), "y": np.array([0, 0])}

    monkeypatch.setattr(heldout, "source_streams", streams)
    out = evaluate_heldout(model, tok, 0, run, HeldoutSettings(seq_len=4), CPU)
    assert asked == [(run, tok, 0)]  # this run's documents, with this tokenizer and end-of-text id
    # what eval.json records of the stream's shape: the tokenizer's own name of the token
    assert out["convention"] == {"bos": False, "bos_token": None, "separator": "<eos>",
                                 "stream": "<eos> doc <eos> doc <eos> ...", "window_start": None,
                                 "scored": "every document token and its closing <eos>"}
    x, y, o = out["per_source"]["x"], out["per_source"]["y"], out["overall"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[0]]))[0, 0], -1)
    assert y["tokens"] == 1 and y["bytes"] == 0 and y["nats"] == pytest.approx(-float(logp[0]), rel=1e-5)
    assert y["bits_per_byte"] is None and y["gzip_bits_per_byte"] is None and y["xz_bits_per_byte"] is None
    assert (o["tokens"], o["bytes"]) == (4, 2)
    assert o["bits_per_byte"] == pytest.approx((x["nats"] + y["nats"]) / math.log(2) / 2, rel=1e-9)
    assert o["gzip_bits_per_byte"] == pytest.approx(gzip_bits_per_byte(b"ab"))
    assert o["xz_bits_per_byte"] == pytest.approx(xz_bits_per_byte(b"ab"))


def test_max_tokens_caps_each_source_and_the_overall_sums_them(monkeypatch, tmp_path):
    """``eval.max_tokens`` (docs/config.md): at most that many held-out tokens of each
    source; the bytes and baselines are those of exactly the scored targets."""
    model = _model(vocab=20, seq_len=4)
    monkeypatch.setattr(heldout, "source_streams", lambda run, tok, eos: {
        "x": np.array([0, 2, 3, 4, 5, 0, 2, 0]), "y": np.array([0, 4, 4, 0])})
    out = evaluate_heldout(model, _tokenizer(), 0, _Run(tmp_path, {"val_tokens": 9}),
                           HeldoutSettings(seq_len=4, max_tokens=3), CPU)
    x, y, o = out["per_source"]["x"], out["per_source"]["y"], out["overall"]
    assert (x["tokens"], x["bytes"], y["tokens"], y["bytes"]) == (3, 3, 3, 2)  # x: "a b c", y: "c c" + eos
    assert (o["tokens"], o["bytes"]) == (6, 5)
    assert x["gzip_bits_per_byte"] == gzip_bits_per_byte(b"abc") and y["gzip_bits_per_byte"] == gzip_bits_per_byte(b"cc")
    assert o["gzip_bits_per_byte"] == pytest.approx((gzip_bits_per_byte(b"abc") * 3 + gzip_bits_per_byte(b"cc") * 2) / 5)
