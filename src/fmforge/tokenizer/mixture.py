"""A training mixture given as a token budget: ``data.total_tokens`` and a
``share`` per source.

Shares are in tokens, which exist only after encoding, so the data stage keeps
each training document once and this step, at the end of the tokenize stage,
repeats or subsamples each source's documents to reach ``share × total_tokens``:
a source with ``T`` tokens gets the weight ``w = share × total / T`` in The
Pile's "epochs" convention (``data.scatter.copies``: ``floor(w)`` copies of
every document plus one more for a seeded hash draw below ``frac(w)``). The
first copy of each kept document stays where it was; the extra copies follow in
a seeded shuffle, so a repeated document never sits next to itself. The
realised tokens per source are recorded in ``meta.json`` (``mixture``).

The split is read across its files (``tokens.SplitTokens``) and written again as
files of about the size of the largest one before, each ending at a document's
end, in place of the old ones.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fmforge.data.problems import EmptyCorpusError
from fmforge.data.scatter import copies
from fmforge.data.split import hash_u64, hash_uniform
from fmforge.progress import log
from fmforge.tokenizer.tokens import SplitTokens

WRITE_BUFFER_TOKENS = 4 * 2**20


def apply_token_budget(tokens_dir: Path, split: str, files: list[dict[str, Any]], sources: list[str],
                       budget: dict[str, float], total_tokens: int, seed: int, dtype: np.dtype
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Rewrite ``{split}/``'s ``files`` (``meta.json``'s list: path and tokens) and
    ``{split}.docs.npy``/``.sources.npy`` in ``tokens_dir`` to the budget; return the
    realised mixture per source and the new list of files."""
    offsets = np.load(tokens_dir / f"{split}.docs.npy")
    src = np.load(tokens_dir / f"{split}.sources.npy")
    lengths = np.diff(offsets)
    have = np.bincount(src, weights=lengths, minlength=len(sources))
    weights = {}
    for i, name in enumerate(sources):
        if budget.get(name, 0) > 0 and have[i] == 0:
            raise EmptyCorpusError(f"source {name!r} has share {budget[name]} but no training tokens")
        weights[name] = budget.get(name, 0.0) * total_tokens / have[i] if have[i] else 0.0
    n_copies = np.array([copies(weights[sources[s]], hash_uniform(seed, "fmforge.mix.tokens", str(d)))
                         for d, s in enumerate(src.tolist())], dtype=np.int64)
    extra = [(hash_u64(seed, "fmforge.mix.tokens.order", str(d), str(c)), d)
             for d in np.flatnonzero(n_copies > 1).tolist() for c in range(1, int(n_copies[d]))]
    order = np.concatenate([np.flatnonzero(n_copies >= 1), np.array([d for _, d in sorted(extra)], dtype=np.int64)])

    new_lengths = lengths[order]
    new_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_offsets[1:])
    # opened as read, a bounded number at a time (SplitTokens): a split can be thousands of files
    tokens = SplitTokens([functools.partial(np.memmap, tokens_dir / f["path"], dtype=dtype, mode="r")
                          if f["tokens"] else np.zeros(0, dtype) for f in files], dtype,
                         lengths=[f["tokens"] for f in files])
    mixed = tokens_dir / f".{split}.mix"
    mixed.mkdir()
    new_files = []
    for k, (first, end) in enumerate(_file_cuts(new_offsets, max([f["tokens"] for f in files], default=1))):
        with open(mixed / f"{k:05d}.bin", "wb") as out:
            buf: list[np.ndarray] = []
            held = 0
            for d in order[first:end].tolist():
                piece = tokens[offsets[d]:offsets[d + 1]]
                buf.append(piece)
                held += len(piece)
                if held >= WRITE_BUFFER_TOKENS:
                    np.concatenate(buf).tofile(out)
                    buf, held = [], 0
            if buf:
                np.concatenate(buf).tofile(out)
        new_files.append({"path": f"{split}/{k:05d}.bin", "tokens": int(new_offsets[end] - new_offsets[first])})
    del tokens
    shutil.rmtree(tokens_dir / split)
    mixed.rename(tokens_dir / split)
    np.save(tokens_dir / f"{split}.docs.npy", new_offsets)
    np.save(tokens_dir / f"{split}.sources.npy", src[order])

    realised = np.bincount(src[order], weights=new_lengths, minlength=len(sources))
    total = float(realised.sum())
    mixture = {
        name: {"share": budget.get(name, 0.0), "weight": round(weights[name], 6),
               "tokens_before": int(have[i]), "tokens": int(realised[i]),
               "realised_share": round(realised[i] / total, 6) if total else 0.0}
        for i, name in enumerate(sources)
    }
    log("tokenize: token-budget mixture (target share -> realised): " + ", ".join(
        f"{n} {m['share']:.1%} -> {m['realised_share']:.1%} ({m['tokens']:,} tokens, weight {m['weight']:.2f})"
        for n, m in mixture.items()))
    return ({"total_tokens_target": total_tokens, "tokens": int(total), "documents": len(order),
             "per_source": mixture}, new_files)


def _file_cuts(offsets: np.ndarray, file_tokens: int) -> list[tuple[int, int]]:
    """(first, end) documents of each output file: a file ends with the document
    that brings it to ``file_tokens`` (or with the last document)."""
    cuts, first = [], 0
    while first < len(offsets) - 1:
        # the first document whose end reaches file_tokens past the file's start
        end = int(np.searchsorted(offsets, offsets[first] + max(1, file_tokens), side="left"))
        end = min(max(end, first + 1), len(offsets) - 1)
        cuts.append((first, end))
        first = end
    return cuts
