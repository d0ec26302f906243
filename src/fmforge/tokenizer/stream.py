"""The held-out stream: documents' token ids joined into the one sequence a model is
scored on. Its single home: the eval stage's own figure and every ``--against``
candidate's are built here, so every row of a comparison sees the same shape.

Two conventions, by how the model was trained:

- no beginning-of-sequence token (fmforge's own models, GPT-2-style tokenizers):
  ``[eos] doc1 [eos] doc2 [eos] ...``. The leading ``[eos]`` makes the first
  document's first token predicted from a document boundary, like every other's;
- with one (Llama, Mistral, Gemma-family tokenizers, which put ``bos`` before
  every sequence): ``[bos] doc1 [eos] [bos] doc2 [eos] ...``. ``bos`` is context,
  never a scored target (it carries no byte and follows every ``eos`` by rule);
  the scorer also opens every window with it (``model.scoring``).

Every document's tokens and its closing ``eos`` are predicted in both: the same
events for every model, whatever its convention.

Document ids must come from an encoder that treats special-token *text* (a
document that mentions ``<|endoftext|>`` or ``<s>``) as plain text, so a
document can never forge a boundary: the only special ids in a stream are the
ones put there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Convention:
    """How documents are joined for one tokenizer: the ids and, for the record,
    their text."""

    eos_id: int
    bos_id: int | None = None
    eos_token: str | None = None
    bos_token: str | None = None

    @property
    def bos(self) -> bool:
        return self.bos_id is not None

    def describe(self) -> dict:
        """What ``eval.json`` records with every scored model."""
        eos = self.eos_token or f"<id {self.eos_id}>"
        bos = (self.bos_token or f"<id {self.bos_id}>") if self.bos else None
        shape = f"{bos} doc {eos} {bos} doc {eos} ..." if bos else f"{eos} doc {eos} doc {eos} ..."
        return {"bos": self.bos, "bos_token": bos, "separator": eos, "stream": shape,
                "window_start": bos, "scored": "every document token and its closing " + eos
                + (f"; {bos} is context only" if bos else "")}

    def short(self) -> str:
        """One cell of a table: ``<s> doc </s>`` or ``doc <|endoftext|>``."""
        eos = self.eos_token or f"<id {self.eos_id}>"
        return f"{self.bos_token or f'<id {self.bos_id}>'} doc {eos}" if self.bos else f"doc {eos}"


def join_documents(encoded: Iterable[Sequence[int]], eos_id: int, bos_id: int | None = None,
                   dtype=np.int64) -> np.ndarray:
    """``[eos] doc1 [eos] doc2 [eos] ...`` or, with ``bos_id``, ``[bos] doc1 [eos]
    [bos] doc2 [eos] ...``: the stream every model is scored on (module docstring).
    A ``bos_id`` equal to ``eos_id`` is the first form: the separator already opens
    every document."""
    bos = None if bos_id is None or bos_id == eos_id else int(bos_id)
    parts: list[np.ndarray] = [] if bos is not None else [np.asarray([eos_id], dtype=dtype)]
    for ids in encoded:
        if bos is not None:
            parts.append(np.asarray([bos], dtype=dtype))
        parts.append(np.asarray(ids, dtype=dtype))
        parts.append(np.asarray([eos_id], dtype=dtype))
    return np.concatenate(parts) if parts else np.asarray([eos_id], dtype=dtype)
