from __future__ import annotations

from fmforge.data.normalize import decode_utf8, normalize_text


def test_valid_utf8_has_no_replacements():
    assert decode_utf8("héllo ✓".encode()) == ("héllo ✓", 0)


def test_undecodable_bytes_are_replaced_and_counted():
    text, bad = decode_utf8(b"ab\xffcd\xfe\xfdef")
    assert text == "ab\ufffdcd\ufffd\ufffdef"
    assert bad == 3
    # same text as errors="replace" would give
    assert text == b"ab\xffcd\xfe\xfdef".decode("utf-8", errors="replace")


def test_truncated_multibyte_sequence_counted():
    text, bad = decode_utf8("é".encode()[:1] + b"x")
    assert text == "\ufffdx" and bad == 1


def test_crlf_cr_bom_and_nfc():
    assert normalize_text("\ufeffa\r\nb\rc\n") == "a\nb\nc\n"
    decomposed = "e\u0301"
    assert normalize_text(decomposed) == "\u00e9"
    assert normalize_text("plain ascii\n") == "plain ascii\n"


def test_multi_byte_invalid_sequence_counts_every_byte():
    data = "€".encode()[:2] + b"x"  # a 3-byte character cut after 2 bytes
    text, bad = decode_utf8(data)
    assert text == data.decode("utf-8", errors="replace") == "\ufffdx"
    assert bad == 2
