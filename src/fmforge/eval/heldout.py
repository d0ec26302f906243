"""Held-out metrics: loss, perplexity and bits per byte, against gzip.

Bits per byte = total nats over the evaluated tokens / ln 2 / total UTF-8 bytes
those tokens stand for. Unlike perplexity it does not depend on the tokenizer,
so it compares models with different vocabularies, and compressors such as gzip.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fmforge.train.loader import sequential_windows


@dataclass
class HeldOutResult:
    loss: float  # mean nats per predicted token
    perplexity: float
    tokens: int  # predicted tokens
    nats: float
    bytes: int  # UTF-8 bytes the predicted tokens stand for (0 if unknown)
    bits_per_byte: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
                    device: torch.device, max_tokens: int | None = None,
                    token_bytes: np.ndarray | None = None, autocast=None) -> HeldOutResult:
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
        ctx = autocast() if autocast else torch.autocast(device.type, enabled=False)
        with ctx:
            logits = model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                              reduction="sum")
        nats += float(nll)
        count += y.numel()
        if token_bytes is not None:
            n_bytes += int(token_bytes[y.cpu().numpy()].sum())
        pending.clear()

    for inputs, targets in sequential_windows(tokens, seq_len, max_tokens):
        if pending and len(inputs) != len(pending[0][0]):
            flush()
        pending.append((inputs, targets))
        if len(pending) == batch_size:
            flush()
    flush()
    model.train(was_training)
    if count == 0:
        raise ValueError("the held-out split has no tokens to evaluate: raise data.val_fraction")
    loss = nats / count
    bpb = nats / math.log(2) / n_bytes if n_bytes else None
    return HeldOutResult(loss=loss, perplexity=math.exp(min(loss, 700)), tokens=count,
                         nats=nats, bytes=n_bytes, bits_per_byte=bpb)


def gzip_bits_per_byte(data: bytes) -> float:
    """What ``gzip -9`` achieves on the same bytes, in bits per byte."""
    if not data:
        raise ValueError("no bytes to compress")
    return 8.0 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data)
