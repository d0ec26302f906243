"""Measure a tokenizer on a run's held-out documents: ``fmforge tokenizer eval RUN``.

For the run's tokenizer (and, with ``--compare``, another one: a
``tokenizer.json``, a Hugging Face tokenizer directory, or another fmforge run),
over every document of the ``val`` split:

- **bytes per token**, overall and per source: UTF-8 bytes of the documents over
  the tokens they encode to (no end-of-text tokens counted), the compression a
  user compares vocabularies by;
- **vocabulary usage**: the share of the tokenizer's ordinary (non-special) ids
  that any held-out document produced;
- **round trip**: whether ``decode(encode(x)) == x`` for each document, non-ASCII
  and the text of special tokens included (text is encoded as raw text, the way
  the tokenize stage encodes it).

Each tokenizer encodes with the tokenize stage's encoder (``fast_encode.py``:
``tiktoken`` on its merges where that is exact, else ``tokenizers``; the ids are
the same); ``encoder`` in the result says which.

Documents are read and encoded in batches, so memory holds one batch. The
result is written to ``RUN/tokenizer/eval.json``; ``render_table`` shows it side
by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tokenizers import Tokenizer

from fmforge.config import EmptyHeldOutError
from fmforge.data.shards import iter_split_records
from fmforge.rundir import RunDir, atomic_write_json
from fmforge.tokenizer.byo import TokenizerPathError, load_tokenizer_file, resolve_tokenizer_file
from fmforge.tokenizer.fast_encode import TIKTOKEN, TextEncoder, available_cores
from fmforge.tokenizer.load import load_tokenizer

EVAL_JSON = "eval.json"
SPLIT = "val"
BATCH_DOCS = 256
MAX_FAILURES_LISTED = 5


def resolve_tokenizer(target: str | Path) -> tuple[str, Tokenizer]:
    """(label, tokenizer) for a run directory, a Hugging Face tokenizer directory or
    a ``tokenizer.json``; ``TokenizerPathError`` (a ``ValueError``) when it is none."""
    p = Path(target).expanduser()
    if not p.exists():
        raise TokenizerPathError(f"--compare: {p} does not exist; give another run directory (made "
                                 "with `fmforge run` or `fmforge tokenizer`), a tokenizer.json or a "
                                 "Hugging Face tokenizer directory")
    if (p / "config.yaml").is_file() and (p / "tokenizer" / "tokenizer.json").is_file():
        tok = load_tokenizer(RunDir(p), raw_text=True)
        return str(p), tok
    tok = load_tokenizer_file(resolve_tokenizer_file(p))
    tok.encode_special_tokens = True
    return str(p), tok


class _Tally:
    """One tokenizer's running counts over the held-out documents."""

    def __init__(self, label: str, tok: Tokenizer, encoder: str = TIKTOKEN):
        self.label, self.tok = label, tok
        self.encoder = TextEncoder(tok, encoder, threads=available_cores())
        self.added = {i for i in tok.get_added_tokens_decoder()}
        self.vocab_size = tok.get_vocab_size()
        self.used = np.zeros(self.vocab_size, dtype=bool)
        self.per_source: dict[str, dict[str, int]] = {}
        self.failures: list[dict[str, Any]] = []
        self.failed = 0

    def add(self, texts: list[str], sources: list[str], doc_ids: list[str]) -> None:
        ids = self.encoder.encode_batch(texts)
        decoded = self.encoder.decode_batch(ids)
        for text, source, doc_id, tokens, back in zip(texts, sources, doc_ids, ids, decoded):
            s = self.per_source.setdefault(source, {"documents": 0, "bytes": 0, "tokens": 0, "round_trip_failures": 0})
            s["documents"] += 1
            s["bytes"] += len(text.encode("utf-8"))
            s["tokens"] += len(tokens)
            if tokens:
                arr = np.asarray(tokens, dtype=np.int64)
                self.used[arr[arr < self.vocab_size]] = True
            if back != text:
                self.failed += 1
                s["round_trip_failures"] += 1
                if len(self.failures) < MAX_FAILURES_LISTED:
                    self.failures.append({"id": doc_id, "source": source, "first_difference": _first_diff(text, back)})

    def result(self) -> dict[str, Any]:
        docs = sum(s["documents"] for s in self.per_source.values())
        nbytes = sum(s["bytes"] for s in self.per_source.values())
        tokens = sum(s["tokens"] for s in self.per_source.values())
        ordinary = self.vocab_size - len([i for i in self.added if i < self.vocab_size])
        used = int(self.used.sum()) - len([i for i in self.added if i < self.vocab_size and self.used[i]])
        per_source = {name: {**s, "bytes_per_token": _ratio(s["bytes"], s["tokens"])}
                      for name, s in sorted(self.per_source.items())}
        return {
            "tokenizer": self.label, "encoder": self.encoder.name, "vocab_size": self.vocab_size, "special_tokens": len(self.added),
            "documents": docs, "bytes": nbytes, "tokens": tokens, "bytes_per_token": _ratio(nbytes, tokens),
            "ids_used": used, "vocab_usage": round(used / ordinary, 6) if ordinary else 0.0,
            "round_trip_exact": self.failed == 0, "round_trip_failures": self.failed,
            "round_trip_failure_examples": self.failures, "per_source": per_source,
        }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def _first_diff(a: str, b: str) -> dict[str, Any]:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return {"at_char": i, "expected": a[i:i + 20], "got": b[i:i + 20]}


def _batches(run: RunDir) -> Iterator[tuple[list[str], list[str], list[str]]]:
    texts: list[str] = []
    sources: list[str] = []
    ids: list[str] = []
    for rec in iter_split_records(run.data, SPLIT, columns=("id", "text", "source")):
        texts.append(rec["text"])
        sources.append(rec["source"])
        ids.append(rec["id"])
        if len(texts) >= BATCH_DOCS:
            yield texts, sources, ids
            texts, sources, ids = [], [], []
    if texts:
        yield texts, sources, ids


def evaluate_tokenizers(run: RunDir, compare: str | Path | None = None, write: bool = True,
                        encoder: str = TIKTOKEN) -> dict[str, Any]:
    """Held-out figures for the run's tokenizer and, optionally, another one; written
    to ``RUN/tokenizer/eval.json`` (unless ``write`` is false). ``encoder``:
    ``"tokenizers"`` never uses tiktoken (the figures are the same)."""
    tallies = [_Tally(str(run.tokenizer), load_tokenizer(run, raw_text=True), encoder)]
    if compare is not None:
        tallies.append(_Tally(*resolve_tokenizer(compare), encoder))
    n = 0
    for texts, sources, ids in _batches(run):
        n += len(texts)
        for t in tallies:
            t.add(texts, sources, ids)
    if n == 0:
        raise EmptyHeldOutError(f"{run.data} has no held-out ({SPLIT}) documents to measure the tokenizer on: "
                                "set data.val_fraction above 0 and rerun `fmforge data CONFIG`")
    out: dict[str, Any] = {"split": SPLIT, "documents": n, "tokenizers": [t.result() for t in tallies]}
    if write:
        atomic_write_json(run.tokenizer / EVAL_JSON, out)
    return out


def render_table(result: dict[str, Any]):
    """A rich table: one column per tokenizer, one row per figure."""
    from rich.table import Table

    toks = result["tokenizers"]
    table = Table(title=f"tokenizer on {result['documents']:,} held-out documents ({result['split']} split)")
    table.add_column("")
    for i, t in enumerate(toks):
        table.add_column(("this run\n" if i == 0 else "compared\n") + t["tokenizer"], justify="right",
                         overflow="fold")
    sources = sorted({s for t in toks for s in t["per_source"]})

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    table.add_row("bytes per token", *(fmt(t["bytes_per_token"]) for t in toks))
    for s in sources:
        table.add_row(f"  {s}", *(fmt(t["per_source"].get(s, {}).get("bytes_per_token")) for t in toks))
    table.add_row("tokens", *(f"{t['tokens']:,}" for t in toks))
    table.add_row("vocabulary", *(f"{t['vocab_size']:,}" for t in toks))
    table.add_row("ids used", *(f"{t['ids_used']:,} ({t['vocab_usage']:.1%})" for t in toks))
    table.add_row("round trip exact", *(
        "yes" if t["round_trip_exact"] else f"[red]no: {t['round_trip_failures']} of {t['documents']}[/red]"
        for t in toks))
    return table
