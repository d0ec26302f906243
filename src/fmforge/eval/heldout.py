"""Held-out evaluation: loss, perplexity and bits per byte of one checkpoint,
overall and per source, beside what ``gzip -9`` and ``xz -9`` achieve on exactly
the bytes the model was scored on.

The overall figure scores the val split of ``tokens/`` (every held-out document
followed by the end-of-text token, as the trainer saw them). Per source, the source's
held-out documents (the ``source`` column of the val shards) are encoded again
with the run's tokenizer into a stream of the same shape and scored alone. Every
stream starts with the end-of-text token, so the first document's first token is
predicted from a document boundary like every other document's.
"""

from __future__ import annotations

import gzip
import lzma
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
from fmforge.tokenizer.tokens import open_tokens

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


def source_streams(run: RunDir, tok: Tokenizer, eos_id: int, dtype=np.int64) -> dict[str, np.ndarray]:
    """Per source, its held-out documents encoded as the tokenize stage encodes
    them: ``[eos] doc1 [eos] doc2 [eos] ...``, in shard order."""
    ids: dict[str, list[int]] = {}
    texts: dict[str, list[str]] = {}
    for record in iter_split_records(run.data, "val", columns=("text", "source")):
        texts.setdefault(record["source"] or "(none)", []).append(record["text"])
    for source, docs in texts.items():
        stream = [eos_id]
        for enc in tok.encode_batch_fast(docs, add_special_tokens=False):
            stream.extend(enc.ids)
            stream.append(eos_id)
        ids[source] = stream
    return {s: np.asarray(v, dtype=dtype) for s, v in sorted(ids.items())}


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
    """``{"overall": {...}, "per_source": {source: {...}}}`` for one model."""
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
    val = np.concatenate([[eos_id], np.asarray(open_tokens(run, "val"), dtype=np.int64)])
    overall = score_stream(model, val, settings, device, table, token_bytes)
    per_source = {name: score_stream(model, stream, settings, device, table, token_bytes)
                  for name, stream in source_streams(run, tok, eos_id).items()}
    return {"overall": overall, "per_source": per_source}
