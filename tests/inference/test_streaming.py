"""Streaming: pieces join to the full text, and a multi-byte character is never
split into U+FFFD replacement characters."""

from __future__ import annotations

from tokenizers.pre_tokenizers import ByteLevel

from fmforge.inference.detokenize import IncrementalDecoder
from fmforge.inference.engine import GenerationRequest

TEXT = "é€😀 naïve 😀😀 ok"


def byte_symbols() -> dict[int, str]:
    """GPT-2's byte-to-character map, the alphabet of a byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def byte_ids(tokenizer, text: str) -> list[int]:
    """The ids of the single-byte tokens that spell ``text`` byte by byte."""
    symbols = byte_symbols()
    assert set(symbols.values()) == set(ByteLevel.alphabet())
    ids = [tokenizer.token_to_id(symbols[byte]) for byte in text.encode("utf-8")]
    assert None not in ids
    return ids


def test_byte_ids_really_split_characters(byte_tokenizer):
    """The premise: decoding these ids one at a time shows U+FFFD."""
    ids = byte_ids(byte_tokenizer, TEXT)
    assert len(ids) == len(TEXT.encode("utf-8"))
    assert byte_tokenizer.decode(ids) == TEXT
    assert "\ufffd" in "".join(byte_tokenizer.decode([i]) for i in ids)


def test_incremental_decoder_never_splits_a_character(byte_tokenizer):
    ids = byte_ids(byte_tokenizer, TEXT)
    decoder = IncrementalDecoder(byte_tokenizer, context_ids=byte_tokenizer.encode("hi").ids)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in p for p in pieces)
    # "€" is three bytes: nothing is emitted until its last byte arrives.
    assert pieces[:2] == ["", "é"] and pieces[2:5] == ["", "", "€"]


def test_incremental_decoder_with_merged_tokens(byte_tokenizer):
    """Ordinary BPE tokens (several bytes each) mixed with lone bytes."""
    text = "café crème brûlée, 5 € 😀"
    ids = byte_tokenizer.encode(text).ids + byte_ids(byte_tokenizer, "😀é")
    decoder = IncrementalDecoder(byte_tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text + "😀é"
    assert not any("\ufffd" in p for p in pieces)


def test_invalid_bytes_are_flushed_not_lost(byte_tokenizer):
    """A truncated character at the end comes out as U+FFFD by flush(), as a full decode would."""
    ids = byte_ids(byte_tokenizer, "a€")[:-1]
    decoder = IncrementalDecoder(byte_tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == "a"
    assert decoder.flush() == byte_tokenizer.decode(ids)[1:]


def test_engine_stream_of_multibyte_output(trained, scripted):
    script = byte_ids(trained.tokenizer, TEXT)
    request = GenerationRequest(prompt="hi", max_new_tokens=len(script), temperature=0)
    pieces = list(scripted(trained, script).stream(request))
    assert "".join(pieces) == TEXT
    assert all(pieces) and not any("\ufffd" in p for p in pieces)
    [result] = scripted(trained, script).generate([request])
    assert result.text == TEXT and result.token_ids == script
    # A stop string made of multi-byte characters, reached byte by byte.
    stop = GenerationRequest(prompt="hi", max_new_tokens=len(script), temperature=0, stop=["😀😀"])
    pieces = list(scripted(trained, script).stream(stop))
    assert "".join(pieces) == "é€😀 naïve " and not any("\ufffd" in p for p in pieces)


def test_stream_joins_to_generate(engine):
    for request in (GenerationRequest(prompt="café", max_new_tokens=40, temperature=0),
                    GenerationRequest(prompt="def", max_new_tokens=40, temperature=0.9, seed=3,
                                      top_p=0.95)):
        pieces = list(engine.stream(request))
        [result] = engine.generate([request])
        assert "".join(pieces) == result.text
        assert all(pieces)


def test_closing_a_stream_early_frees_the_engine(engine):
    # A prompt whose greedy text is whole characters from the start (the tiny random
    # model's text after "def" is partial UTF-8 bytes, held back until the end).
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=40, temperature=0,
                                             stop_token_ids=[]))
    next(stream)
    assert engine.has_work()
    stream.close()
    assert not engine.has_work()
