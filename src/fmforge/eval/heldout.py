"""Held-out evaluation: loss, perplexity and bits per byte of one checkpoint,
overall and per source, beside what ``gzip -9`` and ``xz -9e`` achieve on exactly
the bytes the model was scored on.

Per source, the source's held-out documents (the ``source`` column of the val
shards, in shard order) are encoded with the run's tokenizer (special-token text
as plain text, as the tokenize stage encodes it) and joined by
``tokenizer.stream.join_documents``: ``[eos] doc1 [eos] doc2 [eos] ...``, the
shape the trainer saw, starting with the end-of-text token so the first
document's first token is predicted from a document boundary like every other's.
Each source's stream is scored alone, in float32.

**Overall** is the sum over the per-source streams: their nats over their bytes
(and, for the compressors, their compressed bits over their bytes). It is the
byte-weighted mean of the per-source figures printed beside it, every document
sees context from its own source only, whatever order the data stage shuffled
the split into, and it is exactly how every ``--against`` candidate's overall is
found (``eval/against.py``), so the two compare on one definition. (The trainer's
periodic validation scores the interleaved val split of ``tokens/``: a figure
within noise of this one, not equal to it.)
"""

from __future__ import annotations

import gzip
import lzma
import math
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from fmforge.config import ConfigError, EmptyHeldOutError
from fmforge.data.shards import iter_split_records
from fmforge.inference.loading import StaleCheckpointError
from fmforge.model.scoring import score_tokens
from fmforge.rundir import RunDir
from fmforge.tokenizer.load import decode_bytes, token_byte_lengths, token_byte_table
from fmforge.tokenizer.stream import Convention, join_documents

# What eval.json records with every scored model (the run's own and each candidate).
OVERALL_IS = "sum over per-source streams"
EVAL_STAGE_HINT = "`fmforge data CONFIG` then `fmforge tokenize CONFIG` (or `fmforge run CONFIG`)"


def gzip_bits_per_byte(data: bytes) -> float:
    """What ``gzip -9`` achieves on the same bytes, in bits per byte."""
    if not data:
        raise ValueError("no bytes to compress")
    return 8.0 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data)


def xz_bits_per_byte(data: bytes) -> float:
    """What ``xz -9e`` (LZMA2, preset 9 | extreme) achieves on the same bytes, in bits per byte."""
    if not data:
        raise ValueError("no bytes to compress")
    compressed = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    return 8.0 * len(compressed) / len(data)


@dataclass
class HeldoutSettings:
    seq_len: int
    batch_size: int = 8
    stride: int | None = None
    max_tokens: int | None = None


def heldout_texts(run: RunDir) -> dict[str, list[str]]:
    """The run's held-out documents per source (sorted by source; ``(none)`` for
    documents without one), each source's in shard order."""
    texts: dict[str, list[str]] = {}
    for record in iter_split_records(run.data, "val", columns=("text", "source")):
        texts.setdefault(record["source"] or "(none)", []).append(record["text"])
    return dict(sorted(texts.items()))


def source_streams(run: RunDir, tok: Tokenizer, eos_id: int, dtype=np.int64) -> dict[str, np.ndarray]:
    """Per source, its held-out documents encoded as the tokenize stage encodes
    them: ``[eos] doc1 [eos] doc2 [eos] ...``, in shard order."""
    return {source: join_documents((e.ids for e in tok.encode_batch_fast(docs, add_special_tokens=False)),
                                   eos_id, dtype=dtype)
            for source, docs in heldout_texts(run).items()}


def score_stream(model: torch.nn.Module, tokens: np.ndarray, settings: HeldoutSettings,
                 device: torch.device, table: list[bytes], token_bytes: np.ndarray) -> dict:
    """Loss, perplexity and bits per byte of one stream, with the gzip and xz
    baselines on the bytes of exactly the scored tokens."""
    res = score_tokens(model, tokens, settings.seq_len, settings.batch_size, device,
                       max_tokens=settings.max_tokens, token_bytes=token_bytes,
                       stride=settings.stride)  # float32: exact figures
    # Every target is scored once: targets are tokens[1 : tokens + 1].
    heldout = decode_bytes(table, tokens[1: res.tokens + 1])
    return {
        "nats": res.nats,
        "loss": res.loss,
        "perplexity": res.perplexity,
        "bits_per_byte": res.bits_per_byte,
        "gzip_bits_per_byte": gzip_bits_per_byte(heldout) if heldout else None,
        "xz_bits_per_byte": xz_bits_per_byte(heldout) if heldout else None,
        "tokens": res.tokens,
        "bytes": res.bytes,
    }


def evaluate_heldout(model: torch.nn.Module, tok: Tokenizer, eos_id: int, run: RunDir,
                     settings: HeldoutSettings, device: torch.device) -> dict:
    """``{"overall": {...}, "per_source": {source: {...}}, "overall_is", "dtype",
    "convention"}`` for one model: overall the sum over the per-source streams."""
    vocab = model.cfg.vocab_size
    if settings.stride is not None and settings.stride > settings.seq_len:
        raise ConfigError(f"eval.stride={settings.stride} is longer than the window "
                          f"(model.seq_len={settings.seq_len}): set eval.stride to at most "
                          f"{settings.seq_len}, or leave it unset for non-overlapping windows")
    meta = run.tokens_meta()
    if meta.get("val_tokens", 0) < 1:
        raise EmptyHeldOutError(
            f"the held-out split of {run.root} is empty ({meta.get('val_documents', 0)} documents "
            f"in the val split of {run.tokens}): raise data.val_fraction (or add documents) and rerun "
            f"{EVAL_STAGE_HINT}")
    if meta.get("vocab_size") is not None and meta["vocab_size"] > vocab:
        raise StaleCheckpointError(
            f"the run's tokens use a vocabulary of {meta['vocab_size']} ids but the checkpoint's "
            f"model has {vocab}: the checkpoint belongs to another tokenizer; retrain it with "
            "`fmforge train CONFIG` (or `fmforge run CONFIG`)")
    table = token_byte_table(tok, vocab)
    token_bytes = token_byte_lengths(tok, vocab)
    per_source = {name: score_stream(model, stream, settings, device, table, token_bytes)
                  for name, stream in source_streams(run, tok, eos_id).items()}
    convention = Convention(eos_id=eos_id, eos_token=tok.id_to_token(eos_id))
    return {"overall": overall_of(per_source), "per_source": per_source, "overall_is": OVERALL_IS,
            "dtype": "float32", "convention": convention.describe()}


def overall_of(per_source: dict[str, dict]) -> dict:
    """The overall figures: the sum over the per-source streams (module docstring)."""
    nats = sum(r["nats"] for r in per_source.values())
    tokens = sum(r["tokens"] for r in per_source.values())
    n_bytes = sum(r["bytes"] for r in per_source.values())

    def compressed(key: str) -> float | None:
        if not n_bytes or any(r.get(key) is None for r in per_source.values() if r["bytes"]):
            return None
        return sum(r[key] * r["bytes"] for r in per_source.values() if r["bytes"]) / n_bytes

    loss = nats / tokens
    return {"nats": nats, "loss": loss, "perplexity": math.exp(min(loss, 700)),
            "bits_per_byte": nats / math.log(2) / n_bytes if n_bytes else None,
            "gzip_bits_per_byte": compressed("gzip_bits_per_byte"),
            "xz_bits_per_byte": compressed("xz_bits_per_byte"), "tokens": tokens, "bytes": n_bytes}
