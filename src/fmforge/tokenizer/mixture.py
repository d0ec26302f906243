"""A training mixture given as a token budget: ``data.total_tokens`` and a
``share`` per source.

Shares are in tokens, which exist only after encoding, so the data stage keeps
each training document once and this step, at the end of the tokenize stage,
repeats or subsamples each source's documents to reach ``share × total_tokens``:
a source with ``T`` tokens gets the weight ``w = share × total / T`` in The
Pile's "epochs" convention (``data.mixture.copies``: ``floor(w)`` copies of
every document plus one more for a seeded hash draw below ``frac(w)``). The
first copy of each kept document stays where it was; the extra copies follow in
a seeded shuffle, so a repeated document never sits next to itself. The
realised tokens per source are recorded in ``meta.json`` (``mixture``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmforge.data.hashing import hash_u64, hash_uniform
from fmforge.data.mixture import copies
from fmforge.progress import log

WRITE_BUFFER_TOKENS = 4 * 2**20


def apply_token_budget(tokens_dir: Path, split: str, sources: list[str], budget: dict[str, float],
                       total_tokens: int, seed: int, dtype: np.dtype) -> dict[str, Any]:
    """Rewrite ``{split}.bin``/``.docs.npy``/``.sources.npy`` in ``tokens_dir`` to
    the budget; return the realised mixture per source."""
    bin_path = tokens_dir / f"{split}.bin"
    offsets = np.load(tokens_dir / f"{split}.docs.npy")
    src = np.load(tokens_dir / f"{split}.sources.npy")
    lengths = np.diff(offsets)
    have = np.bincount(src, weights=lengths, minlength=len(sources))
    weights = {}
    for i, name in enumerate(sources):
        if budget.get(name, 0) > 0 and have[i] == 0:
            raise ValueError(f"source {name!r} has share {budget[name]} but no training tokens")
        weights[name] = budget.get(name, 0.0) * total_tokens / have[i] if have[i] else 0.0
    n_copies = np.array([copies(weights[sources[s]], hash_uniform(seed, "fmforge.mix.tokens", str(d)))
                         for d, s in enumerate(src.tolist())], dtype=np.int64)
    extra = [(hash_u64(seed, "fmforge.mix.tokens.order", str(d), str(c)), d)
             for d in np.flatnonzero(n_copies > 1).tolist() for c in range(1, int(n_copies[d]))]
    order = np.concatenate([np.flatnonzero(n_copies >= 1), np.array([d for _, d in sorted(extra)], dtype=np.int64)])

    tokens = np.memmap(bin_path, dtype=dtype, mode="r")
    tmp = tokens_dir / f".{split}.bin.mix"
    with open(tmp, "wb") as out:
        buf: list[np.ndarray] = []
        held = 0
        for d in order.tolist():
            piece = tokens[offsets[d]:offsets[d + 1]]
            buf.append(piece)
            held += len(piece)
            if held >= WRITE_BUFFER_TOKENS:
                np.concatenate(buf).tofile(out)
                buf, held = [], 0
        if buf:
            np.concatenate(buf).tofile(out)
    del tokens
    tmp.replace(bin_path)
    new_lengths = lengths[order]
    new_offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_offsets[1:])
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
    return {"total_tokens_target": total_tokens, "tokens": int(total), "documents": len(order),
            "per_source": mixture}
