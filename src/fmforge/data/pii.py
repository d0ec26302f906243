"""The ``pii`` step: personal data replaced by typed placeholders.

- ``email`` -> ``<EMAIL>``: local@domain.tld (the domain needs a dot and a
  letter-only top-level label);
- ``credit_card`` -> ``<CREDIT_CARD>``: 13-19 digits starting with 2-6 (the
  card networks' first digits), unbroken or in groups of four (Amex 4-6-5)
  split by spaces or dashes, passing the Luhn check;
- ``ip_address`` -> ``<IP_ADDRESS>``: IPv4 dotted quads, and IPv6 addresses of
  at least three hex groups that start and end with a group (eight groups, or
  one "::" with groups on both sides: "2606:4700:4700::1111") that the
  ``ipaddress`` module accepts and calls global;
- ``phone`` -> ``<PHONE>``: +country-code numbers (8-15 digits, E.164's
  limit; not +0, and after +1 an area code starting with 2-9); North-American
  numbers: a three-digit area code and a three-digit exchange, each starting
  with 2-9, then four digits, written "(415) 555-2671", "(415) 555 2671",
  "415-555-2671" or "415.555.2671"; national numbers with a trunk 0 in groups
  ("020 7946 0958", "01 23 45 67 89", "030/1234567").

Counters: one per type, the number of replacements.

False positives we guard against, and the choices made:

- private, loopback and reserved addresses (192.168.x.x, 10.x, 127.0.0.1,
  ::1, documentation ranges) are left: they identify no one and are common
  in manuals and code; datatrove makes the same choice (``is_global``);
- code is not an address: slices ("x[::2]", "a[1::3]"), two-part scopes
  ("c::d", "ab::cd()"), C++/Rust paths with several "::", times (12:30:45),
  ratios and MAC addresses do not have an IPv6 address's shape. The price:
  a global address written with fewer than three groups ("2a00::1") is left;
- a dotted quad after "version", "ver", "v", "release", "rev", "section" or
  "§" is a version or section number, not an address ("version 1.2.3.4",
  ``__version__ = "1.2.3.4"``, "section-7.1.1.1"); a bare public "1.2.3.4" is
  replaced, since nothing in it says otherwise;
- phone patterns need separators in the places real numbers have them, so
  a plain run of digits (an order or invoice number), a year range, an ISO
  date (2024-01-15) or a dotted date (01.02.2024: 8 digits, too few) is left;
  so are numbers with one dot (a decimal: "+35236450.6", "01234.000000"),
  digits inside a time ("00:32:00.999999-07:00"), runs of dates with two
  slashes or more ("01/05/04 01/06"), and three bare numbers split by spaces
  ("384 768 1536": without parentheses a North-American number needs dashes
  or dots). An unseparated "+4294967296" in code is still taken for a phone;
- a card-like number that fails Luhn (most order numbers, an ISBN), starts
  with 0, 1 or 7-9, or is the digits of a decimal fraction is left.

Types are matched in the order e-mail, card, IP, phone, each on the text the
earlier ones left, so a card number is never half-taken as a phone number.
datatrove's PII formatter covers e-mail and IP addresses only, and replaces
them with fake addresses rather than typed placeholders.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from fmforge.config import PIIConfig
from fmforge.data.readers.base import Document

PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>",
                "ip_address": "<IP_ADDRESS>", "phone": "<PHONE>"}

_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])")

_CARD_RE = re.compile(
    r"(?<![\w-])(?<!\d\.)(?:\d{13,19}"  # not the digits of a decimal fraction
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}"  # 4-4-4-1..7 (16 digits: 4-4-4-4)
    r"|\d{4}([ -])\d{6}\2\d{5})"  # American Express 4-6-5
    r"(?![\w-]|\.\d)")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
# Hex groups joined by ":" or one "::", starting and ending with a group, at
# least three groups: the shape of an address, never a slice ("::2", "1::3"),
# a two-part scope ("c::d") or a bare "::". ipaddress then decides (it rejects
# "12:30:45", MAC addresses and a second "::").
_HEX = r"[0-9A-Fa-f]{1,4}"
_IPV6_RE = re.compile(rf"(?<![\w:.])(?:{_HEX}::?){{2,7}}{_HEX}(?![\w:]|\.\d)")
_VERSION_BEFORE_RE = re.compile(
    r"(?:(?<![a-z])(?:version|ver\.?|release|rev\.?|section|sect?\.)_*\s*(?:[=:-]\s*)?[\"']?"
    r"|\bv\s*|§\s*)$", re.I)

_PHONE_RE = re.compile(
    r"(?<![\w+-])(?<!\d[.:])(?:"  # not inside a decimal or a time
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}"  # international: +CC then groups
    r"|\([2-9]\d{2}\) ?[2-9]\d{2}[ .-]\d{4}"  # North American: (415) 555-2671
    r"|[2-9]\d{2}([.-])[2-9]\d{2}\1\d{4}"  # 415-555-2671, 415.555.2671
    r"|\(?0\d{1,4}\)?(?:[ /.-]\d{2,8}){1,4}"  # national with a trunk 0
    r")(?![\w-]|[.:]\d)")


_DATE_RE = re.compile(r"\(?[0-3]\d[./-][01]\d[./-](?:1[89]|20)\d\d")
_DECIMAL_RE = re.compile(r"\+?\d+\.\d+")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(match: re.Match[str]) -> bool:
    digits = re.sub(r"[ -]", "", match.group(0))
    # Card networks' numbers start with 2-6 (Mastercard 2/5, Amex/Diners/JCB 3,
    # Visa 4, Discover/UnionPay 6): a long constant starting 0, 1, 7-9 is left.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _is_public_ip(match: re.Match[str]) -> bool:
    try:
        address = ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    if not address.is_global:
        return False
    before = match.string[max(0, match.start() - 24):match.start()]
    return not _VERSION_BEFORE_RE.search(before)


def _is_phone(match: re.Match[str]) -> bool:
    text = match.group(0)
    if _DATE_RE.match(text):
        return False  # "01/02/2024 10", a date and an hour
    if _DECIMAL_RE.fullmatch(text):
        return False  # "+35236450.6", "01234.000000": one dot is a decimal point
    if text.count("/") > 1:
        return False  # "01/05/04 01/06": dates with a two-digit year
    n = sum(ch.isdigit() for ch in text)
    if text.startswith("+"):
        digits = re.sub(r"\D", "", text)
        if digits[0] == "0" or (digits[0] == "1" and digits[1] in "01"):
            return False  # no country code starts with 0; +1's area codes start with 2-9
        return 8 <= n <= 15
    if text[0] in "(0" and text.lstrip("(").startswith("0"):
        return 9 <= n <= 12
    return n == 10  # North American


class PII:
    name = "pii"
    reasons: tuple[str, ...] = ()  # it never drops

    def __init__(self, cfg: PIIConfig) -> None:
        rules: list[tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None, str]] = []
        if cfg.email:
            rules.append(("email", _EMAIL_RE, None, "@"))
        if cfg.credit_card:
            rules.append(("credit_card", _CARD_RE, _is_card, ""))
        if cfg.ip_address:
            rules.append(("ip_address", _IPV4_RE, _is_public_ip, "."))
            rules.append(("ip_address", _IPV6_RE, _is_public_ip, ":"))
        if cfg.phone:
            rules.append(("phone", _PHONE_RE, _is_phone, ""))
        self.rules = rules
        self._counts = {kind: 0 for kind in PLACEHOLDERS if getattr(cfg, kind)}

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    def __call__(self, doc: Document) -> str | None:
        doc.text = self.redact(doc.text)
        return None

    def redact(self, text: str) -> str:
        for kind, pattern, valid, needs in self.rules:
            if needs and needs not in text:
                continue  # a cheap look saves the regex scan
            placeholder = PLACEHOLDERS[kind]
            replaced = 0

            def replace(m: re.Match[str]) -> str:
                nonlocal replaced
                if valid is not None and not valid(m):
                    return m.group(0)
                replaced += 1
                return placeholder
            text = pattern.sub(replace, text)
            self._counts[kind] += replaced
        return text
