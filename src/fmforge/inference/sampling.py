"""Choosing the next token from logits: greedy at temperature 0, else temperature,
top-k and top-p (nucleus) filtering, then a draw from the request's own generator."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens, then the smallest set of them whose
    probability reaches ``top_p``; the others get -inf. logits: (vocab,)."""
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most
        # likely token is always kept.
        drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None) -> int:
    """The next token id from one sequence's logits (vocab,)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    # The generator lives on the CPU, so a request's draws do not depend on the device.
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
