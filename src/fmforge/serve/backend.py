"""What the HTTP layer needs from a model: its name, prompt checks, chat
formatting, and engine requests built from OpenAI parameters.

``prepare_prompt`` and ``chat_prompt`` tokenize and render templates: the app
calls them in a worker thread, never on the event loop."""

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

    def prepare_prompt(self, prompt: str, max_tokens: int | None,
                       param: str = "prompt") -> tuple[list[int], int]:
        """(the prompt's token ids, max new tokens), or a 400 naming ``param`` (the
        request's prompt or messages) or max_tokens when they do not fit the context.
        The engine's own rule: prompt tokens + max_tokens <= the context."""
        ids = self.trained.tokenizer.encode(prompt, add_special_tokens=False).ids
        n = len(ids)
        if max_tokens is None:
            max_tokens = max(1, min(DEFAULT_MAX_TOKENS, self.context - n))
        if max_tokens >= self.context:
            raise APIError(400, f"max_tokens={max_tokens} leaves no room for a prompt in the model's "
                           f"context of {self.context} tokens: ask for at most {self.context - 1}",
                           param="max_tokens", code="context_length_exceeded")
        if n + max_tokens > self.context:
            what = ("the prompt takes" if param == "prompt" else
                    "the messages (as the chat template lays them out) take")
            if n >= self.context:
                fix = f"shorten {param}: the model's context is {self.context} tokens, new ones included"
            else:
                fix = (f"with max_tokens={max_tokens} that is {n + max_tokens}, more than the model's "
                       f"context of {self.context}: lower max_tokens to at most {self.context - n} "
                       f"or shorten {param}")
            raise APIError(400, f"{param}: {what} {n} tokens; {fix}", param=param,
                           code="context_length_exceeded")
        return ids, max_tokens

    def make_request(self, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float,
                     stop: list[str], seed: int | None) -> GenerationRequest:
        return GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=max_tokens,
                                 temperature=temperature, top_p=None if top_p >= 1 else top_p,
                                 stop=list(stop), seed=seed)

    def chat_prompt(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        try:
            return self.chat.prompt(messages), self.chat.stops
        except ValueError as exc:  # the template's raise_exception (e.g. roles out of order)
            raise APIError(400, f"messages: {exc}", param="messages") from None
