"""The target of a data-mixture experiment: the bytes every proxy is scored on,
and the documents no variant may train on.

Three kinds (``--target``):

- ``heldout`` (the default): the base run's held-out split, every source's
  held-out part, summed as the eval stage sums them;
- ``source:NAME``: that source's held-out part alone;
- ``FILE ...``: the user's own files (UTF-8 text, one document per file),
  encoded with the base run's tokenizer.

The data stage splits by a seeded hash of a document's *cleaned text*, so a
variant that rewrites documents (other filters, cleaning or PII settings) or
changes the seed or ``val_fraction`` would put some of the base's held-out
documents into its own training split, and hold out others the base trained
on. The base split is therefore taken as given: every variant's training
shards lose the base's held-out documents (by id, and by text wherever they
came from: a source under another name) and the target files' documents (by
text), and its own held-out documents that are not among them join its
training split, before it is encoded. A variant that changes only the seed
then trains on the base's documents exactly.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmforge.config import DataConfig
from fmforge.data.dedup import content_digest
from fmforge.data.groups import output_weights
from fmforge.data.scatter import document_copies, shuffle_key
from fmforge.data.shards import (DATA_CARD, ROW_GROUP_ROWS, SCHEMA, SPLITS, iter_split_records, list_shards,
                                 shard_name)
from fmforge.eval.heldout import heldout_texts, overall_of
from fmforge.ladder.variants import DatamixError
from fmforge.model.scoring import score_tokens
from fmforge.rundir import RunDir, atomic_write_json, fingerprint
from fmforge.tokenizer.load import load_tokenizer, special_token_ids, token_byte_lengths
from fmforge.tokenizer.stream import join_documents

FILES = "files"


@dataclass(frozen=True)
class Target:
    kind: str  # heldout | source | files
    name: str
    files: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.kind == "source":
            return f"source:{self.name}"
        if self.kind == "files":
            return f"{len(self.files)} file(s): " + ", ".join(os.path.basename(f) for f in self.files[:3]) \
                + (" ..." if len(self.files) > 3 else "")
        return "heldout"


def parse_target(values: Sequence[str] | str | None, base_dir: str | Path | None = None) -> Target:
    """``heldout``, ``source:NAME``, or files and glob patterns (relative ones from
    ``base_dir``, a config's directory, when they are not found from here)."""
    items = [values] if isinstance(values, str) else list(values or ["heldout"])
    if len(items) == 1 and items[0] == "heldout":
        return Target("heldout", "heldout")
    if len(items) == 1 and items[0].startswith("source:"):
        name = items[0].split(":", 1)[1]
        if not name:
            raise DatamixError("--target source:NAME: name the source, e.g. --target source:prose")
        return Target("source", name)
    files: list[str] = []
    for item in items:
        if item == "heldout" or item.startswith("source:"):
            raise DatamixError(f"--target {item!r} cannot be mixed with files: give one target")
        found = _expand(item) or (_expand(os.path.join(str(base_dir), item)) if base_dir else [])
        if not found:
            raise DatamixError(f"--target {item!r}: no such file (give heldout, source:NAME, or your own "
                               "evaluation files)")
        files += found
    return Target("files", FILES, tuple(dict.fromkeys(files)))


def _expand(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        return sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))


def read_target_files(files: Sequence[str]) -> list[str]:
    texts = []
    for f in files:
        try:
            texts.append(Path(f).read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DatamixError(f"--target file {f} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not any(t.strip() for t in texts):
        raise DatamixError(f"--target files {', '.join(files)} hold no text")
    return texts


@dataclass
class Exclusion:
    """The documents no variant may train on."""

    ids: set[str] = field(default_factory=set)
    digests: set[bytes] = field(default_factory=set)
    key: str = ""

    def found_in(self, ids: Sequence[str], texts: Sequence[str]) -> list[bool]:
        return [i in self.ids or content_digest(t.encode("utf-8")) in self.digests for i, t in zip(ids, texts)]

    def take_base_split(self, data_dir: Path, data: DataConfig, seed: int) -> dict[str, Any]:
        """Rewrite the split of a variant's data directory to the base run's: its
        training shards lose these documents, and its own held-out documents that
        are not among them join the training split (each with its mixture copies,
        drawn as the data stage draws them), so a variant trains on everything it
        keeps but the base's held-out documents. Its val split becomes the base
        held-out documents it has (left as it was when it has none). Shards are
        rewritten atomically; the data card's split counts follow, and its
        ``datamix`` entry says what moved."""
        held: dict[str, tuple[str, str, str]] = {}
        back: list[tuple[str, str, str]] = []
        for shard in list_shards(data_dir, "val"):
            table = pq.read_table(shard, columns=["id", "text", "source"])
            rows = list(zip(*(table.column(c).to_pylist() for c in ("id", "text", "source"))))
            for row, hit in zip(rows, self.found_in([r[0] for r in rows], [r[1] for r in rows])):
                if hit:
                    held.setdefault(row[0], row)
                else:
                    back.append(row)
        removed: dict[str, int] = {}
        train_shards = list_shards(data_dir, "train")
        for shard in train_shards:
            table = pq.read_table(shard)
            ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
            hits = self.found_in(ids, texts)
            if not any(hits):
                continue
            for row, hit in zip(zip(ids, texts, table.column("source").to_pylist()), hits):
                if hit:
                    removed[row[2]] = removed.get(row[2], 0) + 1
                    held.setdefault(row[0], row)
            _write(table.filter(pa.array([not h for h in hits])), shard)
        weights = output_weights(data, sorted({r[2] for r in back}))
        mixed = []
        for doc_id, text, source in back:
            digest = content_digest(text.encode("utf-8"))
            for copy in range(document_copies(weights[source], seed, doc_id, digest)):
                mixed.append((shuffle_key(seed, "train", doc_id, digest, copy), doc_id, text, source))
        mixed.sort()
        if mixed:
            _write(_table([m[1:] for m in mixed]), data_dir / shard_name("train", len(train_shards)))
        if held:
            for shard in list_shards(data_dir, "val"):
                shard.unlink()
            _write(_table([held[k] for k in sorted(held)]), data_dir / shard_name("val", 0))
        card_path = Path(data_dir) / DATA_CARD
        card = json.loads(card_path.read_text(encoding="utf-8"))
        for split in SPLITS:
            texts = [r["text"] for r in iter_split_records(data_dir, split, columns=("text",))]
            card["splits"][split].update(documents=len(texts), bytes=sum(len(t.encode("utf-8")) for t in texts),
                                         shards=[p.name for p in list_shards(data_dir, split)])
        moved = {"held_out_removed_from_train": removed, "own_held_out_moved_to_train": len(back),
                 "why": "every variant keeps the base run's split: the base's held-out documents (and the "
                        "target's) are never trained on, and nothing else is held out"}
        card["datamix"] = moved
        atomic_write_json(card_path, card)
        return moved


def _table(rows: Sequence[tuple[str, str, str]]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [(), (), ()]
    return pa.table([pa.array(list(c), pa.string()) for c in cols], schema=SCHEMA)


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    os.replace(tmp, path)


def exclusion_for(run: RunDir, target: Target, target_texts: Sequence[str]) -> Exclusion:
    """The base run's held-out documents and the target files' documents."""
    out = Exclusion()
    for r in iter_split_records(run.data, "val", columns=("id", "text")):
        out.ids.add(r["id"])
        out.digests.add(content_digest(r["text"].encode("utf-8")))
    for t in target_texts:
        out.digests.add(content_digest(t.encode("utf-8")))
    data = run.stage_record("data") or {}
    out.key = fingerprint("datamix-exclusion-v1", data.get("output", data.get("fingerprint")),
                          sorted(d.hex() for d in out.digests))
    return out


def trained_on_target(run: RunDir, target_texts: Sequence[str]) -> int:
    """How many of the base run's training documents are target documents (by text)."""
    digests = {content_digest(t.encode("utf-8")) for t in target_texts}
    return sum(content_digest(r["text"].encode("utf-8")) in digests
               for r in iter_split_records(run.data, "train", columns=("text",)))


class Scorer:
    """Every proxy's figures on the same bytes: each source's held-out part of the
    base run and the target, encoded once with the base run's tokenizer."""

    def __init__(self, run: RunDir, target: Target, vocab_size: int, batch_size: int,
                 max_tokens: int | None = None, stride: int | None = None):
        tok = load_tokenizer(run, raw_text=True)
        eos_id = special_token_ids(run.tokenizer, tok)["eos"]
        if eos_id is None:
            eos_id = run.tokens_meta()["eos_id"]
        self.target, self.batch_size, self.max_tokens, self.stride = target, batch_size, max_tokens, stride
        self.token_bytes = token_byte_lengths(tok, vocab_size)
        texts = heldout_texts(run)
        if target.kind == "source" and target.name not in texts:
            raise DatamixError(f"--target source:{target.name}: the base run's held-out split has no source "
                               f"{target.name!r}; it has {', '.join(texts) or 'none'}")
        self.documents = {name: len(docs) for name, docs in texts.items()}
        self.streams = {name: self._encode(tok, docs, eos_id) for name, docs in texts.items()}
        self.target_texts: list[str] = []
        self.target_stream: np.ndarray | None = None
        if target.kind == "files":
            self.target_texts = read_target_files(target.files)
            self.target_stream = self._encode(tok, self.target_texts, eos_id)

    @staticmethod
    def _encode(tok, docs: Sequence[str], eos_id: int) -> np.ndarray:
        return join_documents((e.ids for e in tok.encode_batch_fast(list(docs), add_special_tokens=False)),
                              eos_id)

    @property
    def key(self) -> str:
        """What the figures depend on besides the model."""
        def digest(a: np.ndarray | None) -> str | None:
            return None if a is None else hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64)).hexdigest()

        return fingerprint("datamix-scorer-v1", self.target.kind, self.target.name,
                           {n: digest(s) for n, s in self.streams.items()}, digest(self.target_stream),
                           self.batch_size, self.max_tokens, self.stride)

    def _score(self, model, stream: np.ndarray, device) -> dict:
        res = score_tokens(model, stream, model.cfg.seq_len, self.batch_size, device,
                           max_tokens=self.max_tokens, token_bytes=self.token_bytes, stride=self.stride)
        return {"nats": res.nats, "tokens": res.tokens, "bytes": res.bytes}

    def score(self, model, device) -> dict:
        """``{"bits_per_byte": target, "per_source": {source: bits/byte}, "target_bytes", "target_tokens"}``."""
        per = {name: self._score(model, s, device) for name, s in self.streams.items()}
        if self.target.kind == "files":
            target = self._score(model, self.target_stream, device)
            target["bits_per_byte"] = _bpb(target)
        elif self.target.kind == "source":
            target = {**per[self.target.name], "bits_per_byte": _bpb(per[self.target.name])}
        else:
            target = overall_of(per)
        return {"bits_per_byte": target["bits_per_byte"], "target_bytes": target["bytes"],
                "target_tokens": target["tokens"], "per_source": {n: _bpb(r) for n, r in per.items()}}

    def describe(self, scored: dict) -> dict:
        """The target's size, for ``datamix.json``: its documents, and the bytes and
        tokens a proxy's score (``scored``, from ``score``) covered."""
        if self.target.kind == "files":
            docs = len(self.target_texts)
        elif self.target.kind == "source":
            docs = self.documents[self.target.name]
        else:
            docs = sum(self.documents.values())
        return {"kind": self.target.kind, "name": self.target.label if self.target.kind == "files"
                else self.target.name, "bytes": scored["target_bytes"], "tokens": scored["target_tokens"],
                "documents": docs}


def _bpb(r: dict) -> float:
    return r["nats"] / math.log(2) / r["bytes"] if r["bytes"] else float("nan")
