"""Encode the curated text shards into token files a trainer can memory-map.

Per split, ``tokens/`` holds:

- ``{split}/NNNNN.bin``: the split's tokens, one file per unit of work, in
  order: every document's tokens followed by the end-of-text token, uint16 when
  the vocabulary fits (≤ 65,536 ids), else uint32. Read together, in order, they
  are the split (``tokens.open_tokens``); they are never concatenated into one copy;
- ``{split}.docs.npy``: the token offset where each document starts in the whole
  split (int64; one more entry at the end: the total), for per-source evaluation
  and document-aware training;
- ``{split}.sources.npy``: each document's source, as an index into
  ``meta.json``'s ``sources`` (uint16);

and ``meta.json``: dtype, vocabulary, end-of-text id, the tokenizer's hash, each
split's ``files`` (path and token count) and token, document and byte counts per
split and per source.

The work is cut into units of a few row groups of one shard and run on the data
stage's executor (``data.executor``: a local process pool sized to the cores, or
Ray tasks; one thread per worker), each unit written to ``tokens.work/`` with a completion marker and then
linked into ``tokens/`` as one of its split's files. A unit is read one row
group at a time and encoded ``BATCH_CHARS`` of text at a time, so memory stays
flat as the corpus (or a document) grows; a killed encode resumes from the
markers. A small corpus is encoded in this process (a pool takes seconds to
start) unless ``data.workers`` or ``data.executor: ray`` says otherwise. On a
cluster, the workers read ``data/`` and ``tokenizer/`` and write
``tokens.work/`` in the run directory: it must be on a file system every node sees.

The encoder is ``tiktoken`` on the tokenizer's own merges whenever that is exact
(``fast_encode.py``: a byte-level BPE with fmforge's or GPT-2's split), several
times faster per core than ``tokenizers`` with identical ids; any other
tokenizer is encoded by ``tokenizers``. ``meta.json``'s ``encoder`` says which,
and why not ``tiktoken``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmforge.config import ConfigError, RunConfig
from fmforge.data import arrow
from fmforge.data.executor import ExecutorSpec, TaskRunner, in_driver_slot
from fmforge.data.shards import list_shards, reading_shard
from fmforge.progress import log
from fmforge.rundir import ArtifactError, RunDir, atomic_directory, atomic_write_json, fingerprint
from fmforge.tokenizer.fast_encode import TIKTOKEN, TOKENIZERS, TextEncoder, available_cores
from fmforge.tokenizer.load import load_tokenizer, special_token_names
from fmforge.tokenizer.tokens import SPLITS, token_dtype

# A longer document is encoded in pieces of about this size cut after a newline:
# an encoder holds a whole piece's ids (``tokenizers`` also its offsets and token
# strings), so memory grows with the batch, not with the document. Both encoders
# see the same pieces, so their files are identical.
PIECE_CHARS = 1_000_000
ROW_GROUPS_PER_UNIT = 8  # the data stage writes row groups of 1,024 documents
INLINE_BELOW_BYTES = 32 * 2**20
# Text encoded in one batch (pieces of documents): what a unit holds in memory at once.
BATCH_CHARS = 4_000_000


def _pieces(text: str) -> list[str]:
    """Cut a long document after newlines into pieces of about PIECE_CHARS; short
    documents stay whole. The split regexes never join a newline to the text after
    it, so the tokens barely change at a cut and the bytes not at all."""
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


def tokenizer_hash(run: RunDir) -> str:
    return hashlib.sha256((run.tokenizer / "tokenizer.json").read_bytes()).hexdigest()[:16]


def _units(data_dir: Path) -> list[dict[str, Any]]:
    units = []
    for split in SPLITS:
        for shard in list_shards(data_dir, split):
            with reading_shard(shard):
                groups = pq.ParquetFile(shard).metadata.num_row_groups
            for start in range(0, groups, ROW_GROUPS_PER_UNIT):
                units.append({"split": split, "shard": str(shard),
                              "row_groups": list(range(start, min(groups, start + ROW_GROUPS_PER_UNIT)))})
    for i, u in enumerate(units):
        u["index"] = i
    return units


def _encode_texts(encoder: TextEncoder, texts: list[str], eos: int, dtype: np.dtype, out) -> np.ndarray:
    """Encode ``texts`` into ``out`` (each document's tokens, then ``eos``), a batch of
    pieces at a time, so memory holds about BATCH_CHARS of text and its ids whatever
    the unit's size. Returns each document's token count (its eos included)."""
    lengths = np.ones(len(texts), dtype=np.int64)  # the eos
    pieces: list[str] = []
    owners: list[int] = []  # the document of each piece; -1-d marks the last piece of document d
    size = 0

    eos_a = np.array([eos], dtype=np.uint32)

    def flush() -> None:
        nonlocal size
        chunks: list[np.ndarray] = []
        for owner, ids in zip(owners, encoder.encode_arrays(pieces)):
            d = owner if owner >= 0 else -1 - owner
            lengths[d] += len(ids)
            chunks.append(ids)
            if owner < 0:
                chunks.append(eos_a)
        np.concatenate(chunks).astype(dtype, copy=False).tofile(out)
        pieces.clear()
        owners.clear()
        size = 0

    for d, text in enumerate(texts):
        parts = _pieces(text)
        for k, piece in enumerate(parts):
            pieces.append(piece)
            owners.append(-1 - d if k == len(parts) - 1 else d)
            size += len(piece)
            if size >= BATCH_CHARS:
                flush()
    if pieces:
        flush()
    return lengths


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_ENCODERS: dict[tuple, TextEncoder] = {}


def _unit_encoder(run: RunDir, prefer: str, threads: int) -> TextEncoder:
    """The run's encoder, built once per process and tokenizer file: a worker encodes
    many units, and building a large vocabulary's encoder takes a good part of a second."""
    from fmforge.tokenizer.load import load_tokenizer

    path = run.tokenizer / "tokenizer.json"
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, prefer)
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = TextEncoder(load_tokenizer(run, raw_text=True), prefer)
    encoder = _ENCODERS[key]
    encoder.threads = max(1, threads)  # one unit at a time per process: the caller's setting holds
    return encoder


def encode_unit(payload: dict[str, Any]) -> dict[str, Any]:
    """Encode some row groups of one shard into ``work/NNNNN.*`` (top-level: it
    travels to pool and Ray workers). Reads one row group at a time and encodes a
    bounded batch of text at a time, appending to the unit's file."""
    inline = payload["driver"] == _this_process()
    if not inline:
        # a worker encodes its own unit: one Rust thread each keeps the cores busy
        # without oversubscribing them. Set here, before the tokenizer's thread pool
        # starts, because a Ray worker does not inherit the driver's environment.
        os.environ["RAYON_NUM_THREADS"] = "1"
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    work = Path(payload["work"])
    run = RunDir(payload["run"])
    # in the driver (a small corpus) tiktoken uses every core, as tokenizers' own pool does;
    # in the driver's slot beside the pool's processes, one thread like them
    threads = available_cores() if inline and not in_driver_slot() else 1
    encoder = _unit_encoder(run, payload.get("encoder", TIKTOKEN), threads)
    eos, dtype = payload["eos_id"], np.dtype(payload["dtype"])
    source_index = {s: i for i, s in enumerate(payload["sources"])}
    with reading_shard(payload["shard"]):
        pf = pq.ParquetFile(payload["shard"])
    i = payload["index"]
    lengths, srcs, nbytes = [], [], []
    with open(work / f"{i:05d}.bin.tmp", "wb") as out:
        for g in payload["row_groups"]:
            with reading_shard(payload["shard"]):
                table = pf.read_row_group(g, columns=["text", "source"])
            texts = table.column("text").to_pylist()
            nbytes.append(arrow.to_numpy(pc.binary_length(table.column("text"))).astype(np.int64))
            srcs.append(np.array([source_index[s] for s in table.column("source").to_pylist()], dtype=np.uint16))
            del table
            lengths.append(_encode_texts(encoder, texts, eos, dtype, out))
    lengths_a = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    src_a = np.concatenate(srcs) if srcs else np.zeros(0, np.uint16)
    bytes_a = np.concatenate(nbytes) if nbytes else np.zeros(0, np.int64)
    os.replace(work / f"{i:05d}.bin.tmp", work / f"{i:05d}.bin")
    with open(work / f"{i:05d}.npz.tmp", "wb") as f:
        np.savez(f, lengths=lengths_a, sources=src_a, nbytes=bytes_a)
    os.replace(work / f"{i:05d}.npz.tmp", work / f"{i:05d}.npz")
    (work / f"{i:05d}.done").touch()
    return {"index": i, "tokens": int(lengths_a.sum()), "bytes": int(bytes_a.sum())}


def run_tokenize_stage(cfg: RunConfig, run: RunDir, encoder: str = TIKTOKEN) -> dict:
    """``encoder``: ``"tiktoken"`` (used when the tokenizer converts exactly, else
    ``tokenizers``) or ``"tokenizers"`` (always; the benchmark's baseline)."""
    # the encoder the units in this process use (a small corpus: all of them), built once
    chosen = _unit_encoder(run, encoder, 1)
    tok = chosen.tok
    eos_token = special_token_names(run.tokenizer)["eos"] or cfg.tokenizer.eos_token
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise ArtifactError(f"the tokenizer in {run.tokenizer} has no end-of-text token {eos_token!r}: "
                            "rerun `fmforge tokenizer CONFIG`")
    vocab = cfg.vocab_size
    if tok.get_vocab_size() > vocab:
        raise ConfigError(f"the tokenizer in {run.tokenizer} has {tok.get_vocab_size()} tokens but the model's "
                          f"vocabulary is {vocab}: set tokenizer.vocab_size: {tok.get_vocab_size()}")
    dtype = token_dtype(vocab)
    card = run.read_data_card()
    sources = list(card["sources"])
    units = _units(run.data)
    tok_hash = tokenizer_hash(run)
    work = run.root / "tokens.work" / fingerprint("encode-v2", tok_hash, vocab, card.get("inputs_fingerprint"),
                                                  [u["shard"] for u in units])
    work.mkdir(parents=True, exist_ok=True)
    todo = [u for u in units if not (work / f"{u['index']:05d}.done").is_file()]
    if len(todo) < len(units):
        log(f"tokenize: resuming, {len(units) - len(todo)} of {len(units)} units already encoded")
    base = {"work": str(work), "run": str(run.root), "eos_id": eos_id, "dtype": dtype.name, "sources": sources,
            "driver": _this_process(), "encoder": chosen.name}
    total_bytes = sum(int(card["splits"][s]["bytes"]) for s in SPLITS)
    # the data stage's executor and rule: unset workers and a small corpus, this process
    data = cfg.data
    executor = ExecutorSpec(data.executor, data.workers or (1 if total_bytes < INLINE_BELOW_BYTES else None),
                            data.ray_address)
    with TaskRunner(executor) as runner:
        runner.run(encode_unit, [{**base, **u} for u in todo], "tokenize: encoding", unit="units",
                   done=len(units) - len(todo))

    meta: dict[str, Any] = {"dtype": dtype.name, "vocab_size": vocab, "tokenizer_vocab_size": tok.get_vocab_size(),
                            "eos_id": eos_id, "eos_token": eos_token, "tokenizer_sha256": tok_hash,
                            "encoder": chosen.name, "sources": sources, "files": {}, "per_source": {}}
    if chosen.name == TOKENIZERS:
        meta["encoder_why_not_tiktoken"] = chosen.why
    with atomic_directory(run.tokens) as tmp:
        for split in SPLITS:
            counts = _gather_split(work, [u for u in units if u["split"] == split], Path(tmp), split, len(sources))
            meta["files"][split] = counts["files"]
            meta[f"{split}_tokens"], meta[f"{split}_documents"], meta[f"{split}_bytes"] = (
                counts["tokens"], counts["documents"], counts["bytes"])
            meta["per_source"][split] = {
                sources[i]: {"tokens": int(counts["source_tokens"][i]), "documents": int(counts["source_docs"][i]),
                             "bytes": int(counts["source_bytes"][i]),
                             "bytes_per_token": round(float(counts["source_bytes"][i]) / max(1, int(counts["source_tokens"][i]) - int(counts["source_docs"][i])), 4)}
                for i in range(len(sources)) if counts["source_docs"][i]}
        # text tokens only, as per source: the end-of-text token after each document is not text
        meta["bytes_per_token"] = meta["train_bytes"] / max(1, meta["train_tokens"] - meta["train_documents"])
        if cfg.data.token_budget is not None:
            _mix_to_budget(cfg, Path(tmp), meta, dtype)
        atomic_write_json(Path(tmp) / "meta.json", meta)
    shutil.rmtree(run.root / "tokens.work", ignore_errors=True)
    return {"train_tokens": meta["train_tokens"], "val_tokens": meta["val_tokens"],
            "bytes_per_token": round(meta["bytes_per_token"], 3), "dtype": dtype.name}


def _mix_to_budget(cfg: RunConfig, tmp: Path, meta: dict[str, Any], dtype: np.dtype) -> None:
    """``data.total_tokens`` with a share per source (per group of a grouped source,
    ``fmforge.data.groups``): see ``mixture.py``."""
    from fmforge.data.groups import resolve_token_budget
    from fmforge.tokenizer.mixture import apply_token_budget

    before = meta["per_source"]["train"]
    budget = resolve_token_budget(cfg.data, {name: b["tokens"] for name, b in before.items()})
    mix, files = apply_token_budget(tmp, "train", meta["files"]["train"], meta["sources"], budget,
                                    cfg.data.total_tokens, cfg.seed, dtype)
    meta["mixture"], meta["files"]["train"] = mix, files
    meta["train_tokens"], meta["train_documents"] = mix["tokens"], mix["documents"]
    # each source's bytes scale with its copies (its documents repeat whole)
    meta["train_bytes"] = int(sum(b["bytes"] * mix["per_source"][s]["tokens"] / max(1, b["tokens"])
                                  for s, b in before.items()))


def _link(src: Path, dst: Path) -> None:
    """``dst`` with ``src``'s content: a hard link (no copy, and ``src`` stays for a
    resumed encode if this stage is killed before it ends), else a copy."""
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, dst)


def _gather_split(work: Path, units: list[dict], out: Path, split: str, n_src: int) -> dict[str, Any]:
    """A split's units, in order, as its files ``{split}/NNNNN.bin`` (numbered
    within the split) and its document index over the whole split."""
    lengths, srcs, nbytes, files = [], [], [], []
    (out / split).mkdir()
    for k, u in enumerate(units):
        rel = f"{split}/{k:05d}.bin"
        _link(work / f"{u['index']:05d}.bin", out / rel)
        with np.load(work / f"{u['index']:05d}.npz") as z:
            lengths.append(z["lengths"])
            srcs.append(z["sources"])
            nbytes.append(z["nbytes"])
        files.append({"path": rel, "tokens": int(lengths[-1].sum())})
    lengths_a = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    src_a = np.concatenate(srcs) if srcs else np.zeros(0, np.uint16)
    bytes_a = np.concatenate(nbytes) if nbytes else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths_a) + 1, dtype=np.int64)
    np.cumsum(lengths_a, out=offsets[1:])
    np.save(out / f"{split}.docs.npy", offsets)
    np.save(out / f"{split}.sources.npy", src_a)
    return {"tokens": int(offsets[-1]), "documents": len(lengths_a), "bytes": int(bytes_a.sum()), "files": files,
            "source_tokens": np.bincount(src_a, weights=lengths_a, minlength=n_src).astype(np.int64),
            "source_docs": np.bincount(src_a, minlength=n_src),
            "source_bytes": np.bincount(src_a, weights=bytes_a, minlength=n_src).astype(np.int64)}
