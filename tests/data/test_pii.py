"""PII redaction: each type replaced and counted; look-alikes left alone."""

from __future__ import annotations

import pytest

from fmforge.config import PIIConfig
from fmforge.data.document import Document
from fmforge.data.pii import PII, luhn_valid


def redact(text: str, **cfg) -> tuple[str, dict[str, int]]:
    step = PII(PIIConfig(enabled=True, **cfg))
    doc = Document("d", text, "s")
    assert step(doc) is None
    return doc.text, step.counters()


def test_luhn_against_published_test_numbers():
    # the widely published test numbers (Visa, Mastercard, Amex, Discover)
    for number in ("4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"):
        assert luhn_valid(number)
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("9783161484100")  # an ISBN-13


def test_emails():
    text, c = redact("Write to jane.doe@example.com or info@mail.example.co.uk today.")
    assert text == "Write to <EMAIL> or <EMAIL> today."
    assert c["email"] == 2


def test_public_ip_addresses_v4_and_v6():
    text, c = redact("Server 8.8.8.8 and 2001:4860:4860::8888 answered.")
    assert text == "Server <IP_ADDRESS> and <IP_ADDRESS> answered."
    assert c["ip_address"] == 2


def test_private_and_loopback_addresses_are_left():
    text = "Use 192.168.1.10, 10.0.0.1, 127.0.0.1 or ::1 on the local network."
    assert redact(text) == (text, {"email": 0, "credit_card": 0, "ip_address": 0, "phone": 0})


@pytest.mark.parametrize("number", [
    "+1 (415) 555-0132", "+44 20 7946 0958", "+49 30 1234567", "(415) 555-0132",
    "415-555-0132", "415.555.0132", "020 7946 0958", "01 23 45 67 89", "030/1234567",
])
def test_phone_numbers(number):
    text, c = redact(f"Call {number} today.")
    assert text == "Call <PHONE> today."
    assert c["phone"] == 1


@pytest.mark.parametrize("number", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005",
])
def test_card_numbers(number):
    text, c = redact(f"Paid with {number}.")
    assert text == "Paid with <CREDIT_CARD>."
    assert c == {"email": 0, "credit_card": 1, "ip_address": 0, "phone": 0}


@pytest.mark.parametrize("text", [
    "Released version 1.2.3.4 today.",  # a version, after the word version
    "Due on 2024-01-15.",  # an ISO date
    "Due on 15.01.2024.",  # a dotted date
    "Due 01/02/2024 10:30.",  # a date and a time
    "Order 4111111111111112 shipped.",  # 16 digits failing Luhn
    "ISBN 978-3-16-148410-0.",  # an ISBN
    "We sold 12345678901 units.",  # a plain number
    "Pi is 3.14159265358979.",
    "From 1999-2004 on port 8080 at 12:30:45.",
    "MAC 00:1A:2B:3C:4D:5E.",
    "Python 3.11.7 and numpy 1.26.4.",
])
def test_look_alikes_are_left(text):
    assert redact(text)[0] == text


def test_a_bare_public_dotted_quad_is_an_address():
    # Nothing tells "1.2.3.4" from a version here: it is a valid global address.
    assert redact("The host 1.2.3.4 is up.")[0] == "The host <IP_ADDRESS> is up."


def test_types_can_be_switched_off():
    text, c = redact("Mail a@example.com or call +44 20 7946 0958.", phone=False)
    assert text == "Mail <EMAIL> or call +44 20 7946 0958."
    assert c == {"email": 1, "credit_card": 0, "ip_address": 0}
