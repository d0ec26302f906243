"""What the HTTP layer needs from a model: its name, prompt checks, chat
formatting, and engine requests built from OpenAI parameters."""

from __future__ import annotations

import json
import time

from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import TrainedModel
from fmforge.serve.chat_template import ChatFormatter
from fmforge.serve.protocol import APIError

# max_tokens when the client sends none: this many, or what the context leaves.
DEFAULT_MAX_TOKENS = 256


class EngineBackend:
    def __init__(self, trained: TrainedModel, model_name: str, max_batch: int = 16,
                 tokenizer_dir=None):
        self.trained = trained
        self.engine = Engine(trained, max_batch=max_batch)
        self.model_name = model_name
        self.created = int(time.time())
        self.context = trained.model.cfg.seq_len
        template, special = None, {}
        config = tokenizer_dir / "tokenizer_config.json" if tokenizer_dir else None
        if config is not None and config.is_file():
            raw = json.loads(config.read_text(encoding="utf-8"))
            template = raw.get("chat_template")
            special = {k: raw.get(k) for k in ("bos_token", "eos_token", "pad_token")}
        self.chat = ChatFormatter(template, special)

    def check_prompt(self, prompt: str, max_tokens: int | None) -> tuple[int, int]:
        """(prompt tokens, max new tokens) or a 400 when the prompt does not fit."""
        n = len(self.trained.tokenizer.encode(prompt, add_special_tokens=False).ids)
        if max_tokens is None:
            max_tokens = max(1, min(DEFAULT_MAX_TOKENS, self.context - n))
        try:
            self.engine.prepare_prompt(GenerationRequest(prompt=prompt, max_new_tokens=max_tokens))
        except ValueError as exc:
            raise APIError(400, str(exc), param="max_tokens" if max_tokens >= self.context else "messages",
                           code="context_length_exceeded") from None
        return n, max_tokens

    def make_request(self, prompt: str, max_tokens: int, temperature: float, top_p: float,
                     stop: list[str], seed: int | None) -> GenerationRequest:
        return GenerationRequest(prompt=prompt, max_new_tokens=max_tokens, temperature=temperature,
                                 top_p=None if top_p >= 1 else top_p, stop=list(stop), seed=seed)

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        try:
            return self.chat.prompt(messages), self.chat.stops
        except ValueError as exc:  # the template's raise_exception (e.g. roles out of order)
            raise APIError(400, f"messages: {exc}", param="messages") from None
