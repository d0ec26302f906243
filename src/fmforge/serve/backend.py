"""What the HTTP layer needs from a model: its name, prompt checks, chat
formatting, and engine requests built from OpenAI parameters.

``prepare_prompt`` and ``prepare_chat`` tokenize and render templates: the app
calls them in a worker thread, never on the event loop.

A request past the context is a 400 naming the limit (OpenAI's semantics) unless
it asks for ``truncation: "auto"``: then a chat drops its oldest turns (a user
message and the replies after it; system messages stay, and so does the last
turn) until the prompt leaves room for ``max_tokens``, and a completion keeps the
end of its prompt. What was dropped is counted for the response's headers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from fmforge.inference.engine import Engine, GenerationRequest
from fmforge.inference.loading import TrainedModel
from fmforge.serve.chat_template import ChatFormatter
from fmforge.serve.protocol import APIError

# max_tokens when the client sends none: this many, or what the context leaves.
DEFAULT_MAX_TOKENS = 256


@dataclass
class Prepared:
    """A prompt ready for the engine, and what truncation dropped to fit it."""
    ids: list[int]
    max_tokens: int
    stops: list[str]
    dropped_messages: int = 0
    dropped_prompt_tokens: int = 0


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

    def encode(self, text: str) -> list[int]:
        return self.trained.tokenizer.encode(text, add_special_tokens=False).ids

    def reply_room(self, max_tokens: int | None) -> int:
        """The tokens a truncated prompt leaves for the reply: max_tokens (at most the
        context less one), or without one the default or half the context if less."""
        if max_tokens is None:
            return min(DEFAULT_MAX_TOKENS, max(1, self.context // 2))
        return min(max_tokens, self.context - 1)

    def prepare_prompt(self, prompt: str, max_tokens: int | None, truncate: bool = False) -> Prepared:
        """A completion's prompt; with ``truncate``, only its last tokens that leave
        room for the reply (``reply_room``)."""
        ids = self.encode(prompt)
        dropped = 0
        if truncate:
            dropped = max(0, len(ids) - (self.context - self.reply_room(max_tokens)))
            ids = ids[dropped:]
            max_tokens = self._lowered(ids, max_tokens)
        ids, max_tokens = self.check_fit(ids, max_tokens, "prompt")
        return Prepared(ids, max_tokens, [], dropped_prompt_tokens=dropped)

    def prepare_chat(self, messages: list[dict[str, str]], max_tokens: int | None,
                     truncate: bool = False) -> Prepared:
        """A chat's prompt; with ``truncate``, the fewest oldest turns dropped for the
        rest to leave room for the reply (``reply_room``). When even the last turn and
        the system messages leave less, max_tokens is lowered to what they leave."""
        if not truncate:
            ids, max_tokens = self.check_fit(self.encode(self.chat_prompt(messages)[0]), max_tokens,
                                             "messages")
            return Prepared(ids, max_tokens, self.chat.stops)
        # Turn t starts at the t-th user message (anything before the first is turn 0);
        # dropping the first t turns drops the first starts[t] non-system messages.
        chat = [i for i, m in enumerate(messages) if m["role"] != "system"]
        starts = [0] + [j for j, i in enumerate(chat) if j > 0 and messages[i]["role"] == "user"]
        room = self.reply_room(max_tokens)

        def tokens(t: int) -> list[int]:
            gone = set(chat[:starts[t]])
            return self.encode(self.chat_prompt([m for i, m in enumerate(messages) if i not in gone])[0])

        # The fewest turns to drop, by bisection (dropping more never lengthens the
        # prompt); the last turn always stays.
        lo, hi = 0, len(starts) - 1
        fit = None
        while lo < hi:
            mid = (lo + hi) // 2
            ids = tokens(mid)
            if len(ids) + room <= self.context:
                fit, hi = (mid, ids), mid
            else:
                lo = mid + 1
        t, ids = fit if fit is not None and fit[0] == lo else (lo, tokens(lo))
        ids, max_tokens = self.check_fit(ids, self._lowered(ids, max_tokens), "messages")
        return Prepared(ids, max_tokens, self.chat.stops, dropped_messages=starts[t])

    def _lowered(self, ids: list[int], max_tokens: int | None) -> int | None:
        """max_tokens lowered to what a truncated prompt leaves (None, for the default,
        when it leaves nothing: the 400 then names the prompt, not max_tokens)."""
        if max_tokens is None or len(ids) >= self.context:
            return None
        return min(max_tokens, self.context - len(ids))

    def check_fit(self, ids: list[int], max_tokens: int | None, param: str) -> tuple[list[int], int]:
        """(the prompt's token ids, max new tokens), or a 400 naming ``param`` (the
        request's prompt or messages) or max_tokens when they do not fit the context.
        The engine's own rule: prompt tokens + max_tokens <= the context."""
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
                fix = (f"shorten {param}: the model's context is {self.context} tokens, new ones "
                       f"included")
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
