"""Turning chat messages into a prompt.

A tokenizer that carries a Jinja ``chat_template`` (in ``tokenizer_config.json``,
as Hugging Face tokenizers do) is rendered the way ``transformers``'
``apply_chat_template`` renders it, with ``add_generation_prompt=True``. A model
without one gets fmforge's simple template, plain text the model can learn from
chat-formatted data:

    <|system|>
    You are terse.
    <|user|>
    Hello
    <|assistant|>

(one block per message, then the assistant marker for the reply). Generation
stops at the next ``<|user|>`` or ``<|system|>`` marker, so a model that keeps
writing the conversation does not answer for the user.
"""

from __future__ import annotations

from typing import Any

SIMPLE_STOPS = ["<|user|>", "<|system|>"]


def simple_prompt(messages: list[dict[str, str]]) -> str:
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


class ChatFormatter:
    def __init__(self, template: str | None, special: dict[str, Any] | None = None):
        self.template_source = template
        self.special = special or {}
        self._template = None
        if template:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

            def raise_exception(message):
                raise ValueError(message)

            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(template)

    @property
    def stops(self) -> list[str]:
        """Text that ends the assistant's turn beyond the tokenizer's EOS."""
        return [] if self._template else list(SIMPLE_STOPS)

    def prompt(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            return simple_prompt(messages)
        return self._template.render(messages=messages, add_generation_prompt=True,
                                     **{k: v for k, v in self.special.items() if isinstance(v, str)})
