"""Loading a run's tokenizer, and what each token id stands for in bytes.

The byte tables make bits per byte exact: the bytes of any evaluated token span
are the sum of its tokens' bytes, whatever the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from fmforge.rundir import ArtifactMissingError, RunDir


def load_tokenizer(run: RunDir, raw_text: bool = False) -> Tokenizer:
    """The run's tokenizer. ``raw_text``: encode the text of special tokens (e.g. a
    document that mentions "<|endoftext|>") as ordinary bytes, so corpus text can
    never forge a document boundary; the trainer adds the real EOS itself."""
    path = run.tokenizer / "tokenizer.json"
    if not path.is_file():
        raise ArtifactMissingError(f"{path} is missing: run `fmforge tokenizer CONFIG` first")
    tok = Tokenizer.from_file(str(path))
    tok.encode_special_tokens = raw_text
    return tok


def _token_text(value: Any) -> str | None:
    """A special token in tokenizer_config.json: a string, or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def special_token_names(tokenizer_dir: Path) -> dict[str, str | None]:
    """bos/eos/pad token text as the tokenizer's own files name them (None where
    not set): the one place later stages learn which token ends a document, for
    a trained tokenizer and a brought one alike."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    conf = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {role: _token_text(conf.get(f"{role}_token")) for role in ("bos", "eos", "pad")}


def special_token_ids(tokenizer_dir: Path, tokenizer: Tokenizer) -> dict[str, int | None]:
    """bos/eos/pad ids as the tokenizer files name them (None where not set)."""
    return {role: (tokenizer.token_to_id(text) if text else None)
            for role, text in special_token_names(tokenizer_dir).items()}


def token_byte_lengths(tok: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special and unused ids), so the
    bytes of any evaluated token span are exact for bits-per-byte."""
    return np.array([len(b) for b in token_byte_table(tok, vocab_size)], dtype=np.int64)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def token_byte_table(tok: Tokenizer, vocab_size: int) -> list[bytes]:
    """The exact bytes each token id stands for (b"" for special and unused ids)."""
    unicode_to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    table = [b""] * vocab_size
    for token, idx in tok.get_vocab().items():
        if idx < vocab_size and token not in specials:
            table[idx] = bytes(unicode_to_byte[ch] for ch in token)
    return table


def decode_bytes(table: list[bytes], ids) -> bytes:
    """Exact bytes of a token span (special tokens dropped)."""
    return b"".join(table[i] for i in np.asarray(ids).tolist())
