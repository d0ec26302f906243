"""Turning generated token ids into text a piece at a time, for streaming.

A byte-level BPE token may hold part of a UTF-8 character ("é" is two bytes, "😀"
four, and the model may emit them one byte-token at a time). Decoding each token
alone would print U+FFFD replacement characters; so the decoder decodes a short
window of recent ids, emits only the text that window added past what was already
emitted, and holds back while the text ends in an incomplete character. The
window (the previous piece's ids plus the new ones) keeps this O(1) per token and
gives tokenizers whose decoding depends on the neighbours (a leading space) the
context they need.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Feed ids with ``push``; each call returns the new stable text ("" while a
    character is incomplete). ``flush`` returns what is held back at the end
    (with replacement characters only if the ids really spell invalid UTF-8).

    ``context_ids``: the last few prompt ids, decoded as context but never emitted."""

    def __init__(self, tokenizer: Tokenizer, context_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context_ids)
        self.prefix = 0  # ids[prefix:read] decode to text already emitted (or context)
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _emit(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and (final or not after.endswith(REPLACEMENT)):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)
