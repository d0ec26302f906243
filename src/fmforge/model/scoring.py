"""How well a model predicts a stream of tokens: total nats over non-overlapping
windows, and the UTF-8 bytes those tokens stand for.

The one scorer behind the trainer's periodic validation and the eval stage. It
lives beside the model (not in ``eval/``) because the trainer, which sits below
the eval stage, needs it too.

Bits per byte = total nats / ln 2 / total UTF-8 bytes of the scored tokens.
Unlike perplexity it does not depend on the tokenizer, so it compares models with
different vocabularies, and compressors such as gzip.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class TokenScore:
    nats: float  # total negative log-likelihood of the predicted tokens
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes the predicted tokens stand for (0 if unknown)

    @property
    def loss(self) -> float:
        """Mean nats per predicted token."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700))

    @property
    def bits_per_byte(self) -> float | None:
        return self.nats / math.log(2) / self.bytes if self.bytes else None

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte}


def sequential_windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None):
    """Non-overlapping windows covering the split in order: every token but the
    first is predicted exactly once. Yields (inputs, targets) as 1-D int64 arrays;
    the last window may be shorter."""
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    pos = 0
    while pos < n - 1:
        end = min(pos + seq_len + 1, n)
        chunk = np.asarray(tokens[pos:end], dtype=np.int64)
        yield chunk[:-1], chunk[1:]
        pos = end - 1


@torch.no_grad()
def score_tokens(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
                 device: torch.device, max_tokens: int | None = None,
                 token_bytes: np.ndarray | None = None, autocast=None) -> TokenScore:
    """Score ``tokens`` (at most ``max_tokens`` predictions) in windows of
    ``seq_len``, ``batch_size`` windows at a time. ``token_bytes[id]`` gives the
    bytes of each id for bits per byte; ``autocast`` is a context factory (None:
    full float32, the exact figure)."""
    was_training = model.training
    model.eval()
    nats, count, n_bytes = 0.0, 0, 0
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush():
        nonlocal nats, count, n_bytes
        if not pending:
            return
        x = torch.from_numpy(np.stack([p[0] for p in pending])).to(device)
        y = torch.from_numpy(np.stack([p[1] for p in pending])).to(device)
        with (autocast() if autocast else contextlib.nullcontext()):
            logits = model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                              reduction="sum")
        nats += float(nll)
        count += y.numel()
        if token_bytes is not None:
            n_bytes += int(token_bytes[y.cpu().numpy()].sum())
        pending.clear()

    try:
        for inputs, targets in sequential_windows(tokens, seq_len, max_tokens):
            if pending and len(inputs) != len(pending[0][0]):
                flush()
            pending.append((inputs, targets))
            if len(pending) == batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the held-out split has no tokens to evaluate: raise data.val_fraction")
    return TokenScore(nats=nats, tokens=count, bytes=n_bytes)
