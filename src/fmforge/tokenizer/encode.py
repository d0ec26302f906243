"""Encode the curated text shards into flat token files a trainer can memory-map.

``tokens/train.bin`` and ``tokens/val.bin`` hold every document's tokens followed
by the end-of-document token, as uint16 when the vocabulary fits (≤ 65,536) and
uint32 otherwise. ``meta.json`` records dtype, vocabulary, EOS id and counts.
Encoding uses ``Tokenizer.encode_batch``, which the Rust library spreads over
all CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from fmforge.config import RunConfig
from fmforge.data.shards import iter_split_texts
from fmforge.progress import progress_bar
from fmforge.rundir import RunDir, atomic_directory, atomic_write_json
from fmforge.tokenizer.load import load_tokenizer
from fmforge.tokenizer.tokens import SPLITS, token_dtype

# A batch holds at most this many characters, and a longer document is encoded in
# pieces of about this size cut after a newline: the Rust encoder keeps offsets and
# token strings for a whole batch, so memory grows with the batch, not the corpus.
BATCH_CHARS = 4_000_000
PIECE_CHARS = 1_000_000


def _pieces(text: str) -> list[str]:
    """Cut a long document after newlines into pieces of about PIECE_CHARS; short
    documents stay whole. Byte-level BPE never merges across a newline followed by
    text, so the tokens barely change at a cut and the bytes not at all."""
    if len(text) <= PIECE_CHARS:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):
            cut = text.rfind("\n", start + 1, end)
            end = cut + 1 if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def _batches(texts, max_docs: int):
    """Batches of (piece, ends_document) bounded by documents and characters."""
    batch: list[tuple[str, bool]] = []
    chars = 0
    for t in texts:
        pieces = _pieces(t)
        for i, piece in enumerate(pieces):
            batch.append((piece, i == len(pieces) - 1))
            chars += len(piece)
            if len(batch) >= max_docs or chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def encode_split(tok: Tokenizer, texts, out: Path, dtype: np.dtype, eos_id: int,
                 batch_docs: int, bar) -> dict:
    n_tokens = n_docs = n_bytes = 0
    with open(out, "wb") as f:
        for batch in _batches(texts, batch_docs):
            # encode_batch_fast skips offsets, which we do not need.
            encodings = tok.encode_batch_fast([p for p, _ in batch], add_special_tokens=False)
            ids: list[int] = []
            for enc, (_, ends_doc) in zip(encodings, batch):
                ids.extend(enc.ids)
                if ends_doc:
                    ids.append(eos_id)
                    n_docs += 1
            arr = np.asarray(ids, dtype=dtype)
            f.write(arr.tobytes())
            batch_bytes = sum(len(p.encode("utf-8")) for p, _ in batch)
            n_tokens += arr.size
            n_bytes += batch_bytes
            bar.advance(batch_bytes)
    return {"tokens": n_tokens, "documents": n_docs, "bytes": n_bytes}


def run_tokenize_stage(cfg: RunConfig, run: RunDir) -> dict:
    tok = load_tokenizer(run, raw_text=True)
    eos_id = tok.token_to_id(cfg.tokenizer.eos_token)
    if eos_id is None:
        raise ValueError(f"tokenizer in {run.tokenizer} has no {cfg.tokenizer.eos_token!r} token")
    vocab = cfg.vocab_size
    dtype = token_dtype(vocab)
    card = run.read_data_card()
    total_bytes = sum(int(card["splits"][s]["bytes"]) for s in SPLITS)
    meta: dict = {"dtype": dtype.name, "vocab_size": vocab,
                  "tokenizer_vocab_size": tok.get_vocab_size(), "eos_id": eos_id,
                  "eos_token": cfg.tokenizer.eos_token}
    with atomic_directory(run.tokens) as tmp, progress_bar("encoding", total=total_bytes, unit="bytes") as bar:
        for split in SPLITS:
            counts = encode_split(tok, iter_split_texts(run.data, split), Path(tmp) / f"{split}.bin",
                                  dtype, eos_id, cfg.tokenizer.encode_batch_docs, bar)
            for k, v in counts.items():
                meta[f"{split}_{k}"] = v
        meta["bytes_per_token"] = meta["train_bytes"] / max(1, meta["train_tokens"])
        atomic_write_json(Path(tmp) / "meta.json", meta)
    return {"train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"],
            "bytes_per_token": round(meta["bytes_per_token"], 3), "dtype": dtype.name}


