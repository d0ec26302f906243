"""The reserved tokens of an fmforge tokenizer and its chat template.

Special tokens take the first ids, in a fixed order, so they are stable across
vocabulary sizes and corpora and can be recorded once: end of text (0), padding
(1), beginning of text (2), then one marker per chat role (``<|system|>``,
``<|user|>``, ``<|assistant|>``), then ``tokenizer.extra_special_tokens``.

The chat template renders a conversation as the server's plain fallback does
(``serve/chat_template.py``), with the role markers as single special tokens and
the end-of-text token closing each assistant turn, so generation stops there:

    <|system|>\\nYou are terse.\\n<|user|>\\nHello\\n<|assistant|>\\nHi.<|endoftext|>\\n
"""

from __future__ import annotations

from fmforge.config import TokenizerConfig


def role_token(role: str) -> str:
    return f"<|{role}|>"


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    """All reserved tokens in id order (the BPE trainer assigns ids in list order)."""
    tokens = [cfg.eos_token, cfg.pad_token, cfg.bos_token, *(role_token(r) for r in cfg.chat_roles),
              *cfg.extra_special_tokens]
    seen: list[str] = []
    for t in tokens:
        if t not in seen:
            seen.append(t)
    return seen


def chat_template(cfg: TokenizerConfig) -> str:
    """A Jinja chat template for ``transformers``' ``apply_chat_template``."""
    roles = ", ".join(repr(r) for r in cfg.chat_roles)
    return (
        "{% for message in messages %}"
        f"{{% if message['role'] not in [{roles}] %}}"
        "{{ raise_exception('unknown role ' + message['role'] + '; this template knows "
        + "/".join(cfg.chat_roles) + "') }}{% endif %}"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
        "{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    )
