"""The PII step at the edges its published references draw.

Each case is decided by something outside ``fmforge.data.pii``: Python's
``ipaddress`` module for what an IPv4 address is and whether it is global;
ISO/IEC 7812 for a card number's length (13 to 19 digits) and the Luhn check
digit, computed here the way the standard states it; E.164 for an international
number's length (at most 15 digits); RFC 1035 for a domain label (letters,
digits and inner hyphens) and the letters-only top-level label of two or more.
"""

from __future__ import annotations

import ipaddress

import pytest

from fmforge.config import PIIConfig
from fmforge.data.pii import PII


def _redact(text: str) -> str:
    return PII(PIIConfig()).redact(text)


def _is_global_ipv4(text: str) -> bool:
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return address.is_global


OCTETS = [0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 254, 255, 256, 260, 299, 300]
BASE = [93, 184, 216, 34]  # a global address


@pytest.mark.parametrize("position", range(4))
def test_an_ipv4_address_is_redacted_exactly_when_ipaddress_calls_it_global(position):
    wrong = []
    for octet in OCTETS:
        quad = list(BASE)
        quad[position] = octet
        address = ".".join(map(str, quad))
        expected = "host <IP_ADDRESS> up" if _is_global_ipv4(address) else f"host {address} up"
        if _redact(f"host {address} up") != expected:
            wrong.append(address)
    assert not wrong, f"redacted where ipaddress disagrees: {wrong}"


def _with_check_digit(body: str) -> str:
    """ISO/IEC 7812-1 annex B: double every second digit from the right of the
    body (the check digit's neighbour first), add the digits of the products and
    the other digits; the check digit brings the sum to a multiple of 10."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d // 10 + d % 10
        total += d
    return body + str((10 - total % 10) % 10)


@pytest.mark.parametrize("length", range(11, 22))
def test_a_luhn_valid_number_is_a_card_exactly_at_iso_7812_lengths(length):
    number = _with_check_digit("4" + "7" * (length - 2))
    assert len(number) == length
    out = _redact(f"paid {number} ok")
    assert (out == "paid <CREDIT_CARD> ok") == (13 <= length <= 19), out


@pytest.mark.parametrize("first", "0123456789")
def test_only_the_card_networks_first_digits_make_a_card(first):
    number = _with_check_digit(first + "111111111111111")  # 16 digits
    out = _redact(f"paid {number} ok")
    assert (out == "paid <CREDIT_CARD> ok") == (first in "23456"), (number, out)


@pytest.mark.parametrize("delta", range(1, 10))
def test_a_card_number_whose_check_digit_is_off_is_left(delta):
    good = _with_check_digit("411111111111111")
    bad = good[:-1] + str((int(good[-1]) + delta) % 10)
    assert _redact(f"paid {good} ok") == "paid <CREDIT_CARD> ok"
    assert _redact(f"paid {bad} ok") == f"paid {bad} ok"


@pytest.mark.parametrize("digits", range(6, 18))
def test_an_international_number_is_a_phone_up_to_e164s_fifteen_digits(digits):
    # +44 then the subscriber digits in groups of three (the country code counts;
    # groups of four could also read as a card number).
    rest = "2" + "0123456789" * 2
    national = rest[: digits - 2]
    groups = " ".join(national[i:i + 3] for i in range(0, len(national), 3))
    number = f"+44 {groups}"
    assert sum(c.isdigit() for c in number) == digits
    out = _redact(f"call {number} now")
    assert (out == "call <PHONE> now") == (8 <= digits <= 15), (number, out)


@pytest.mark.parametrize("area, exchange", [(a, e) for a in "129" for e in "0129"])
def test_a_north_american_number_needs_area_and_exchange_starting_2_to_9(area, exchange):
    # The North American Numbering Plan: NXX-NXX-XXXX, N being 2-9. (An area
    # code starting 0 reads as a national number with its trunk 0, tested apart.)
    number = f"{area}15-{exchange}55-0132"
    out = _redact(f"call {number} now")
    assert (out == "call <PHONE> now") == (area in "29" and exchange in "29"), (number, out)


@pytest.mark.parametrize("address, is_email", [
    ("jo@example.io", True),  # a two-letter top-level label
    ("jo@example.c", False),  # one letter: no top-level domain has one
    ("jo@example.c0m", False),  # a top-level label is letters only
    ("jo@mail-1.example.org", True),  # an inner hyphen and a digit in a label
    ("jo@-mail.example.org", False),  # a label does not start with a hyphen (RFC 1035)
    ("jo@localhost", False),  # no dot: not an address on the Internet
    ("first.last+tag%x@example.org", True),
])
def test_e_mail_addresses_follow_the_domain_name_rules(address, is_email):
    out = _redact(f"write to {address} today")
    assert (out == "write to <EMAIL> today") == is_email, out
