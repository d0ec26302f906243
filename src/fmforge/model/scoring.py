"""How well a model predicts a stream of tokens: total nats over windows of the
model's context, and the UTF-8 bytes those tokens stand for.

Windows are non-overlapping by default (every token sees the context since the
start of its window: on average half a window). With a ``stride`` shorter than
the window, windows start every ``stride`` tokens and each scores only the
targets no earlier window scored, so every target but those of the first window
sees at least ``seq_len - stride`` tokens of context (the sliding-window
perplexity of the Hugging Face docs); it costs ``seq_len / stride`` times more.

A model trained with a beginning-of-sequence token (Llama, Mistral, Gemma: see
``tokenizer.stream``) is scored with ``bos_id``: every window's first input is
that token, in place of the stream's token there (context only: an earlier window
scored it), so the window holds ``seq_len - 1`` tokens of the stream and the model
always sees what it was trained on at position 0; and targets equal to ``bos_id``
(the stream's own document openers) are context, not scored. The windows, and
which targets each scores, are otherwise the same.

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

from fmforge.config import EmptyHeldOutError


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


def spread_starts(n_tokens: int, seq_len: int, count: int, seed: int) -> np.ndarray | None:
    """Start positions of ``count`` non-overlapping windows of ``seq_len + 1`` tokens
    spread over a whole split of ``n_tokens``: the split's windows are cut into
    ``count`` equal runs and one window is drawn from each with ``seed``. Every
    part of the split (every source, in whatever order the split holds them) gets
    windows in proportion to its length, and the same seed gives the same windows
    at every call, so validations during a run are comparable. None when the
    split has no more windows than ``count``: score it whole."""
    n_windows = (n_tokens - 1) // seq_len
    if n_windows <= count:
        return None
    edges = (np.arange(count + 1) * n_windows) // count
    rng = np.random.default_rng([seed, 0x5EED])
    picks = edges[:-1] + (rng.random(count) * (edges[1:] - edges[:-1])).astype(np.int64)
    return picks * seq_len


def sliding_windows(tokens: np.ndarray, seq_len: int, stride: int | None = None,
                    max_tokens: int | None = None):
    """Windows of ``seq_len`` inputs starting every ``stride`` tokens (None or
    ``seq_len``: the sequential windows). Yields (inputs, targets, scored): only
    the last ``scored`` targets of a window are new; every target but the first
    token is scored exactly once."""
    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in 1..{seq_len} (the window), got {stride}")
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    pos, done = 0, 0  # done: tokens[1 : done + 1] have been scored
    while done < n - 1:
        end = min(pos + seq_len + 1, n)
        chunk = np.asarray(tokens[pos:end], dtype=np.int64)
        yield chunk[:-1], chunk[1:], end - 1 - done
        done = end - 1
        pos += stride


@torch.no_grad()
def score_tokens(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, batch_size: int,
                 device: torch.device, max_tokens: int | None = None,
                 token_bytes: np.ndarray | None = None, autocast=None,
                 stride: int | None = None, starts: np.ndarray | None = None,
                 bos_id: int | None = None) -> TokenScore:
    """Score ``tokens`` (at most ``max_tokens`` predictions) in windows of
    ``seq_len``, ``batch_size`` windows at a time. ``token_bytes[id]`` gives the
    bytes of each id for bits per byte; ``autocast`` is a context factory (None:
    full float32, the exact figure); ``stride`` < ``seq_len`` slides the window
    (see the module docstring); ``starts`` scores only the windows beginning
    there (``spread_starts``: a sample of the split), each in full; ``bos_id``
    opens every window with that token and never scores it (module docstring)."""
    was_training = model.training
    model.eval()
    nats, count, n_bytes = 0.0, 0, 0
    pending: list[tuple[np.ndarray, np.ndarray, int]] = []

    def flush():
        nonlocal nats, count, n_bytes
        if not pending:
            return
        inputs = np.stack([p[0] for p in pending])
        targets = np.stack([p[1] for p in pending])
        for row, (_, t, scored) in enumerate(pending):
            targets[row, : len(t) - scored] = -100  # scored by an earlier window
        if bos_id is not None:
            inputs[:, 0] = bos_id
            targets[targets == bos_id] = -100
        x = torch.from_numpy(inputs).to(device)
        y = torch.from_numpy(targets).to(device)
        with (autocast() if autocast else contextlib.nullcontext()):
            logits = model(x)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                              reduction="sum", ignore_index=-100)
        nats += float(nll)
        kept = targets[targets != -100]
        count += kept.size
        if token_bytes is not None:
            n_bytes += int(token_bytes[kept].sum())
        pending.clear()

    if starts is not None:
        windows = ((w[:-1], w[1:], len(w) - 1) for w in
                   (np.asarray(tokens[s: s + seq_len + 1], dtype=np.int64) for s in starts))
    else:
        windows = sliding_windows(tokens, seq_len, stride, max_tokens)
    try:
        for inputs, targets, scored in windows:
            if pending and len(inputs) != len(pending[0][0]):
                flush()
            pending.append((inputs, targets, scored))
            if len(pending) == batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    if count == 0:
        raise EmptyHeldOutError("the held-out split has no tokens to evaluate: raise data.val_fraction")
    return TokenScore(nats=nats, tokens=count, bytes=n_bytes)
