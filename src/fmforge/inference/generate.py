"""Sampling: temperature, top-k, greedy at temperature 0, stop at end-of-document."""

from __future__ import annotations

import torch

from fmforge.inference.loading import TrainedModel


@torch.no_grad()
def generate_ids(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, device=None) -> list[int]:
    """Continue ``prompt_ids``; returns only the new ids. The context is cropped to
    the model's window (model.cfg.seq_len)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    device = device or next(model.parameters()).device
    ids = list(prompt_ids) or ([eos_id] if eos_id is not None else [0])
    new: list[int] = []
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-model.cfg.seq_len:]], dtype=torch.long, device=device)
        logits = model(context)[0, -1].float()
        if temperature == 0:
            nxt = int(torch.argmax(logits))
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        if eos_id is not None and nxt == eos_id:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def generate_text(trained: TrainedModel, prompt: str, max_new_tokens: int = 64,
                  temperature: float = 0.8, top_k: int | None = 50, seed: int | None = None) -> str:
    tok = trained.tokenizer
    prompt_ids = tok.encode(prompt, add_special_tokens=False).ids
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    new = generate_ids(trained.model, prompt_ids, max_new_tokens, temperature, top_k,
                       trained.eos_id, gen, trained.device)
    # Decode prompt+completion together and strip the prompt, so a token that
    # merges across the boundary still decodes to valid text.
    full = tok.decode(prompt_ids + new, skip_special_tokens=True)
    head = tok.decode(prompt_ids, skip_special_tokens=True)
    return full[len(head):] if full.startswith(head) else tok.decode(new, skip_special_tokens=True)
