"""One completion of a text prompt through the engine: the sample the ``run``
command prints after evaluation."""

from __future__ import annotations

from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import TrainedModel


def generate_text(trained: TrainedModel, prompt: str, max_new_tokens: int = 64,
                  temperature: float = 0.8, top_k: int | None = 50, seed: int | None = None,
                  top_p: float | None = None, stop: list[str] | None = None) -> str:
    """The completion of ``prompt`` (without the prompt). Lenient, for a sample
    printed after a run: at most ``seq_len - 1`` new tokens, and a prompt too long
    for the rest of the context keeps its last tokens (``fmforge generate`` and the
    engine refuse instead, with a message)."""
    max_new_tokens = min(max_new_tokens, trained.model.cfg.seq_len - 1)
    request = GenerationRequest(prompt=prompt, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                stop=list(stop or []), truncate="left")
    return Engine(trained, max_batch=1).generate([request])[0].text
