"""PII redaction: each type replaced and counted; look-alikes left alone."""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import pytest

from fmforge.config import PIIConfig
from fmforge.data.pii import PII, PLACEHOLDERS, luhn_valid
from fmforge.data.readers.base import Document


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
    # words ending in v, ver, rev or section's letters are not version markers
    assert redact("Routed via 1.2.3.4, prev 5.6.7.8.")[0] == "Routed via <IP_ADDRESS>, prev <IP_ADDRESS>."


def test_types_can_be_switched_off():
    text, c = redact("Mail a@example.com or call +44 20 7946 0958.", phone=False)
    assert text == "Mail <EMAIL> or call +44 20 7946 0958."
    assert c == {"email": 1, "credit_card": 0, "ip_address": 0}


# --- Precision on code: slices, scopes, times are not IPv6 addresses ---------

# Short code and prose snippets with nothing personal in them. Before the IPv6
# fix, 11 of these 33 (33%) came out altered: slices, two-part scopes and
# hex-looking names as "<IP_ADDRESS>", and dotted version and section numbers.
NOTHING_PERSONAL = [
    "y = x[::2]",
    "evens, odds = a[::2], a[1::2]",
    "rows = grid[1::3]",
    "rev = s[::-1]",
    "tail = buf[10::20]",
    "img = arr[::2, 1::3]",
    "z = c::d",
    "std::vector<int> v; std::map<a, b> m;",
    "using a::b::c;",
    "auto x = abc::def::fed();",
    "Foo::Bar::baz(); dead::beef();",
    "let m = std::collections::HashMap::new();",
    "ab::cd();",
    "::operator new(size);",
    "f :: Int -> Int",
    "The meeting starts at 12:30:45 and ends at 14:00.",
    "A 16:9 screen; mix the paint 1:2:3 by volume.",
    "The ratio was 3:2 after the game.",
    "MAC 00:1A:2B:3C:4D:5E is printed on the label.",
    "ea:d0:bb:4f:21:9c",
    "Install Python 3.11.7 and numpy 1.26.4.",
    "__version__ = \"1.2.3.4\"",
    "Released version 1.2.3.4 today.",
    "See RFC 7231, section-7.1.1.1, and § 7.1.1.2.",
    "Listen on ::1 or fe80::1 for local tests.",
    "The documentation prefix 2001:db8::1 names no one.",
    "for i in range(10): print(i)",
    "def f(a: int, b: int) -> int: return a + b",
    "dict(a=1, b=2)[\"a\"]",
    "Bible John 3:16 and Genesis 1:1.",
    "The train leaves at 9:45; Acts 2:1:4 is not a verse.",
    "a = b[c::d]; e = f[1::]",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.mark.parametrize("text", NOTHING_PERSONAL)
def test_code_and_prose_without_personal_data_is_left(text):
    assert redact(text)[0] == text


def test_no_planted_snippet_is_altered():
    altered = [t for t in NOTHING_PERSONAL if redact(t)[0] != t]
    assert altered == []


@pytest.mark.parametrize("address", [
    "2606:4700:4700::1111",  # compressed, groups on both sides
    "2a00:1450:4001:82b::200e",
    "2001:4860:4860:0:0:0:0:8888",  # full form, eight groups
    "2A00:1450:4001:082B:0000:0000:0000:200E",  # upper case
])
def test_public_ipv6_addresses_are_redacted(address):
    text, c = redact(f"Connected from {address} at noon.")
    assert text == "Connected from <IP_ADDRESS> at noon."
    assert c["ip_address"] == 1


@pytest.mark.parametrize("text", [
    "fd00:1234::1",  # unique local
    "fe80::1ff:fe23:4567:890a",  # link-local
    "2001:db8:85a3::8a2e:370:7334",  # documentation
    "2001:2::1",  # benchmarking range
])
def test_non_global_ipv6_addresses_are_left(text):
    assert redact(f"Address {text} here.")[0] == f"Address {text} here."


# --- Precision on real code: a sample of the standard library ----------------

_PLACEHOLDER_RE = re.compile(r"<(?:EMAIL|CREDIT_CARD|IP_ADDRESS|PHONE)>")
# What a reader of the file calls personal data or an address, judged without
# the module: an e-mail has an "@", an IPv4 literal is four dot-separated numbers.
_LOOKS_LIKE_EMAIL = re.compile(r"\S+@\S+\.[A-Za-z]{2,}")
_LOOKS_LIKE_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Modules that hold IPv6 addresses on purpose (parsers, an ifconfig reader).
_ADDRESS_FILES = ("ipaddress.py", "uuid.py")
_TEST_DIRS = {"test", "tests", "idle_test", "site-packages"}


def _stdlib_sample(every: int = 2) -> list[Path]:
    """Library modules, not their tests (whose data are look-alikes on purpose)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _TEST_DIRS & set(p.relative_to(root).parts))
    return files[::every]


def _replaced_spans(original: str, redacted: str) -> list[str]:
    """The original text behind each placeholder (redaction never crosses a line)."""
    a, b = original.splitlines(), redacted.splitlines()
    assert len(a) == len(b)
    spans = []
    for old, new in zip(a, b):
        if old != new:
            parts = _PLACEHOLDER_RE.split(new)
            m = re.fullmatch("(.+?)".join(map(re.escape, parts)), old)
            assert m is not None, (old, new)
            spans.extend(m.groups())
    return spans


def test_stdlib_code_is_left_unless_it_holds_an_address():
    files = _stdlib_sample()
    assert len(files) > 200
    step = PII(PIIConfig(enabled=True))
    sliced, wrong = 0, []
    for path in files:
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue
        sliced += "[::" in text or "::-1]" in text
        redacted = step.redact(text)
        if redacted == text:
            continue
        for span in _replaced_spans(text, redacted):
            if _LOOKS_LIKE_EMAIL.fullmatch(span) or _LOOKS_LIKE_IPV4.fullmatch(span):
                continue  # a real e-mail (authors, bug reports) or an IPv4 literal
            if path.name in _ADDRESS_FILES:
                continue
            wrong.append((path.name, span))
    assert wrong == []
    # The sample has what used to be taken for addresses; else this proves nothing.
    assert sliced >= 3


# --- Recall: personal data planted in prose and code is all redacted ----------

PLANTED = {
    "email": ["jane.doe@example.com", "first.last+tag@mail.example.org", "x_y@corp.co.uk"],
    "ip_address": ["93.184.216.34", "151.101.1.69", "2606:4700:4700::1111",
                   "2a03:2880:f12f:83:face:b00c:0:25de"],
    "phone": ["+44 20 7946 0958", "+1-202-555-0143", "+33 1 23 45 67 89", "+81-3-1234-5678",
              "+61 2 9876 5432", "+91 98765 43210", "+49 (0)30 1234567", "+31641044153"],
    "credit_card": ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005",
                    "6011 1111 1111 1117", "4111111111119", "6111111111111111118"],
}


def test_planted_personal_data_is_all_redacted():
    lines, expected = [], []
    for kind, values in PLANTED.items():
        for i, value in enumerate(values):
            line = (f"contact = {value!r}  # see ticket" if i % 2
                    else f"Please reach the customer at {value} before Friday.")
            lines.append(line)
            expected.append(line.replace(value, PLACEHOLDERS[kind]))
    text, counts = redact("\n".join(lines))
    assert text.splitlines() == expected
    assert counts == {kind: len(values) for kind, values in PLANTED.items()}


@pytest.mark.parametrize("text", [
    "+1234567",  # 7 digits: too short for E.164
    "+49 30 1234 5678 9012",  # 16 digits: too long
    "+10011010010",  # "+1" and an area code starting 0: a signed binary number
    "+0 123 456 789",  # no country code starts with 0
    "030 12345",  # a trunk-0 number of 8 digits: too short
    "030 1234 567890",  # 13 digits: too long
    "(415) 155-0132",  # a North-American exchange starts with 2-9
    "(115) 555-0132",  # so does an area code
    "384 768 1536",  # three numbers in a row, not a phone without its parentheses
    "+35236450.6",  # a signed decimal
    "01234.000000",
    "offsettime=1979-05-27T00:32:00.999999-07:00",  # a time with fractions and a zone
    "03 01/01/04 01/02/04 01",  # dates with two-digit years
])
def test_phone_look_alikes_are_left(text):
    assert redact(f"x {text} y")[0] == f"x {text} y"


@pytest.mark.parametrize("number, digits", [
    ("+49 301234", 8), ("+49 3012345678901", 15), ("030 123456", 9), ("030 1234 56789", 12),
    ("+1 (415) 555-0132", 11), ("(415) 555 0132", 10),
])
def test_phone_lengths_at_the_limits_are_redacted(number, digits):
    assert sum(ch.isdigit() for ch in number) == digits
    assert redact(f"Call {number} now.")[0] == "Call <PHONE> now."


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # Luhn fails by one digit
    "4111-1111-1111-1121",  # two digits swapped
    "411111111117",  # Luhn-valid but 12 digits
    "9111111111111110",  # Luhn-valid, but no card network's number starts with 9
    "711111111111113",  # nor with 7
    "0.4111111111111111",  # the digits of a decimal fraction
    "4111111111111111.5",
])
def test_card_look_alikes_are_left(text):
    assert redact(f"Value {text} here")[0] == f"Value {text} here"


def test_a_national_number_with_its_trunk_code_in_parentheses():
    # 11 digits: a national number (9-12 digits), not a North-American one (10).
    assert redact("Call (020) 7946 0958 now.")[0] == "Call <PHONE> now."


def test_a_version_marker_counts_at_the_start_of_the_text_and_up_to_24_characters_back():
    assert redact("v 1.2.3.4 is out")[0] == "v 1.2.3.4 is out"
    # The marker's first letter 24 characters before the address still counts ...
    near = "version" + " " * 17 + "1.2.3.4"
    assert redact(near)[0] == near
    # ... 25 characters before, it is out of sight: a bare public address.
    assert redact("version" + " " * 18 + "1.2.3.4")[0] == "version" + " " * 18 + "<IP_ADDRESS>"
