"""Encode corpus text with ``tiktoken`` on the run's own merges, ids identical to ``tokenizers``.

A byte-level BPE trained by ``tokenizers`` (``tokenizer.split: gpt4`` or ``gpt2``,
or a brought GPT-2-style tokenizer) is, exactly, a ``tiktoken`` encoding: each
ordinary token's bytes (the byte-level vocabulary mapped back to bytes) with its
id as its rank, and the same split pattern. ``tiktoken`` applies the lowest-ranked
merge first, ``tokenizers`` the earliest merge; the two agree when every merge's
result has a higher id than the merges before it, which ``tokenizers``' trainer
does (it numbers tokens in the order it learns them). ``tiktoken`` encodes the
same text several times faster per core (issue 30).

``build_encoding`` converts only when the conversion is exact: a BPE with no
normalizer, unknown token, dropout, subword prefix or byte fallback; one of the two
split patterns below (the regexes were checked character class by character
class against ``tokenizers``' engine); every ordinary token made of byte-level
characters; the 256 single bytes present; each merge producing a token with a
higher id than its parts and than the previous merge's; no added token that is
not special. Otherwise it says why, and the caller keeps ``tokenizers``.

Special tokens stay text inside documents, as ``load_tokenizer(raw_text=True)``
makes ``tokenizers`` do: the encoding knows the special tokens but allows none,
so a document's ``<|endoftext|>`` is encoded as its bytes. Building the encoding
reads nothing from the network: ``tiktoken``'s downloadable encodings are never used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tokenizers import Tokenizer

from fmforge.tokenizer.load import _bytes_to_unicode
from fmforge.tokenizer.train import GPT4_SPLIT

# tokenizers' ByteLevel pre-tokenizer with use_regex (GPT-2's split), as its source writes it
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
KNOWN_SPLITS = {GPT4_SPLIT: "gpt4", GPT2_SPLIT: "gpt2"}

TIKTOKEN, TOKENIZERS = "tiktoken", "tokenizers"


def available_cores() -> int:
    """The cores this process may run on (the affinity mask where there is one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class NotConvertible(ValueError):
    """The tokenizer is not exactly a tiktoken encoding (the message says why)."""


@dataclass(frozen=True)
class Conversion:
    """What ``tiktoken.Encoding`` needs, taken from a ``tokenizers`` tokenizer."""

    pattern: str
    split: str  # "gpt4" or "gpt2"
    ranks: dict[bytes, int]
    specials: dict[str, int]


def _pattern(pre: dict[str, Any] | None) -> str:
    if pre is None:
        raise NotConvertible("no pre-tokenizer")
    kind = pre.get("type")
    if kind == "ByteLevel":
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise NotConvertible("a ByteLevel pre-tokenizer with add_prefix_space or without its regex")
        return GPT2_SPLIT
    if kind == "Sequence" and len(pre.get("pretokenizers", [])) == 2:
        split, byte_level = pre["pretokenizers"]
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
                and "Regex" in split.get("pattern", {}) and byte_level.get("type") == "ByteLevel"
                and not byte_level.get("add_prefix_space") and not byte_level.get("use_regex", True)):
            return split["pattern"]["Regex"]
    raise NotConvertible(f"the pre-tokenizer is not a byte-level regex split ({kind})")


def _merge_pair(merge: Any) -> tuple[str, str]:
    if isinstance(merge, str):  # tokenizers before 0.20 saved "a b"
        a, _, b = merge.partition(" ")
        return a, b
    return merge[0], merge[1]


def convert(tok: Tokenizer) -> Conversion:
    """The ranks, specials and split pattern of ``tok``, or ``NotConvertible``."""
    spec = json.loads(tok.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise NotConvertible(f"the model is {model.get('type')}, not BPE")
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise NotConvertible(f"the BPE has {key}={model[key]!r}")
    if model.get("byte_fallback"):
        raise NotConvertible("the BPE has byte_fallback")
    if spec.get("normalizer") is not None:
        raise NotConvertible(f"the tokenizer has a normalizer ({spec['normalizer'].get('type')})")
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        raise NotConvertible("the tokenizer truncates or pads")
    pattern = _pattern(spec.get("pre_tokenizer"))
    if pattern not in KNOWN_SPLITS:
        raise NotConvertible("the split pattern is neither fmforge's (GPT-4's) nor GPT-2's")
    added = spec.get("added_tokens") or []
    plain = [a["content"] for a in added if not a.get("special")]
    if plain:
        raise NotConvertible(f"added tokens that are not special ({plain[:3]})")
    specials = {a["content"]: a["id"] for a in added}

    to_byte = {ch: b for b, ch in _bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, idx in model["vocab"].items():
        if token in specials:
            continue
        try:
            ranks[bytes(to_byte[ch] for ch in token)] = idx
        except KeyError:
            raise NotConvertible(f"token {token!r} is not byte-level") from None
    if any(bytes([b]) not in ranks for b in range(256)):
        raise NotConvertible("some of the 256 single bytes are not tokens")
    vocab = model["vocab"]
    last = -1
    for i, merge in enumerate(model.get("merges", [])):
        a, b = _merge_pair(merge)
        ia, ib, ic = vocab.get(a), vocab.get(b), vocab.get(a + b)
        if ia is None or ib is None or ic is None:
            raise NotConvertible(f"merge {i} ({a!r}, {b!r}) names a token not in the vocabulary")
        if not (ic > last and ic > ia and ic > ib):
            raise NotConvertible(f"merge {i} ({a!r}, {b!r}) is out of id order")
        last = ic
    if len(ranks) != 256 + len(model.get("merges", [])):
        raise NotConvertible("the vocabulary holds tokens that no merge makes")
    return Conversion(pattern, KNOWN_SPLITS[pattern], ranks, specials)


def build_encoding(tok: Tokenizer):
    """A ``tiktoken.Encoding`` equal to ``tok`` on raw text, or ``NotConvertible``."""
    import tiktoken

    c = convert(tok)
    return tiktoken.Encoding(f"fmforge-{c.split}", pat_str=c.pattern, mergeable_ranks=c.ranks,
                             special_tokens=c.specials)


class TextEncoder:
    """Raw text to ids (special tokens as text) with whichever engine the tokenizer
    allows: ``name`` is ``"tiktoken"`` or ``"tokenizers"``, ``why`` says why not
    tiktoken (empty when it is used). ``threads``: tiktoken encodes that many texts
    at once (it releases the GIL); ``tokenizers`` uses its own thread pool."""

    def __init__(self, tok: Tokenizer, prefer: str = TIKTOKEN, threads: int = 1):
        if prefer not in (TIKTOKEN, TOKENIZERS):
            raise ValueError(f"unknown encoder {prefer!r}")
        self.tok, self.why, self.threads = tok, "", max(1, threads)
        self._core = None
        if prefer == TIKTOKEN:
            try:
                self._core = build_encoding(tok)._core_bpe
            except NotConvertible as e:
                self.why = str(e)
        else:
            self.why = "tokenizers asked for"
        self.name = TIKTOKEN if self._core is not None else TOKENIZERS
        self._allowed: set[str] = set()  # no special token allowed: their text is encoded as bytes

    def _map(self, fn, texts: Sequence[str]) -> list:
        if self.threads == 1 or len(texts) < 2:
            return [fn(t) for t in texts]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(fn, texts, chunksize=max(1, len(texts) // (4 * self.threads))))

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's ids as a uint32 array (tiktoken writes them to a buffer, no
        Python ints); its ids are ``encode_ordinary``'s."""
        if self._core is None:
            return [np.asarray(e.ids, dtype=np.uint32)
                    for e in self.tok.encode_batch_fast(list(texts), add_special_tokens=False)]
        core, allowed = self._core, self._allowed
        return self._map(lambda t: np.frombuffer(core.encode_to_tiktoken_buffer(t, allowed), dtype=np.uint32),
                         texts)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._core is None:
            return [e.ids for e in self.tok.encode_batch_fast(list(texts), add_special_tokens=False)]
        return self._map(self._core.encode_ordinary, texts)

    def decode_batch(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id list, special tokens written out, invalid UTF-8 as U+FFFD."""
        if self._core is None:
            return self.tok.decode_batch([list(x) for x in ids], skip_special_tokens=False)
        core = self._core
        return [bytes(core.decode_bytes(list(x))).decode("utf-8", errors="replace") for x in ids]
