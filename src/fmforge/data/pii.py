"""The ``pii`` step: personal data replaced by typed placeholders.

- ``email`` -> ``<EMAIL>``: local@domain.tld (the domain needs a dot and a
  letter-only top-level label);
- ``credit_card`` -> ``<CREDIT_CARD>``: 13-19 digits, unbroken or in groups
  of four (Amex 4-6-5) split by spaces or dashes, passing the Luhn check;
- ``ip_address`` -> ``<IP_ADDRESS>``: IPv4 dotted quads and IPv6 addresses
  that the ``ipaddress`` module accepts and calls global;
- ``phone`` -> ``<PHONE>``: +country-code numbers (8-15 digits, E.164's
  limit); North-American numbers: a three-digit area code in parentheses, a
  three-digit exchange, a dash and four digits, area code and exchange each
  starting with 2-9 ("(415) 555-2671"); national numbers with a trunk 0 in
  groups ("020 7946 0958", "01 23 45 67 89", "030/1234567").

Counters: one per type, the number of replacements.

False positives we guard against, and the choices made:

- private, loopback and reserved addresses (192.168.x.x, 10.x, 127.0.0.1,
  ::1, documentation ranges) are left: they identify no one and are common
  in manuals and code; datatrove makes the same choice (``is_global``);
- a dotted quad after "version", "ver", "v", "release" or "rev" is a version
  number, not an address ("version 1.2.3.4"); a bare public "1.2.3.4" is
  replaced, since nothing in it says otherwise;
- phone patterns need separators in the places real numbers have them, so
  a plain run of digits (an order or invoice number), a year range, an ISO
  date (2024-01-15) or a dotted date (01.02.2024: 8 digits, too few) is left;
- a card-like number that fails Luhn (most order numbers, an ISBN) is left.

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
from fmforge.data.document import Document

PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>",
                "ip_address": "<IP_ADDRESS>", "phone": "<PHONE>"}

_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}(?![\w-])")

_CARD_RE = re.compile(
    r"(?<![\w-])(?:\d{13,19}"
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}"  # 4-4-4-1..7 (16 digits: 4-4-4-4)
    r"|\d{4}([ -])\d{6}\2\d{5})"  # American Express 4-6-5
    r"(?![\w-])")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
# A loose shape; ipaddress decides what is an address (and rejects "12:30:45").
_IPV6_RE = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_VERSION_BEFORE_RE = re.compile(r"(?:\bversion|\bver\.?|\bv|\brelease|\brev\.?)\s*$", re.I)

_PHONE_RE = re.compile(
    r"(?<![\w+-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}"  # international: +CC then groups
    r"|(?:\([2-9]\d{2}\)[ ]?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}"  # North American
    r"|\(?0\d{1,4}\)?(?:[ /.-]\d{2,8}){1,4}"  # national with a trunk 0
    r")(?![\w-]|\.\d)")


_DATE_RE = re.compile(r"\(?[0-3]\d[./-][01]\d[./-](?:1[89]|20)\d\d")


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
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _is_public_ip(match: re.Match[str]) -> bool:
    try:
        address = ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    if not address.is_global:
        return False
    before = match.string[max(0, match.start() - 12):match.start()]
    return not _VERSION_BEFORE_RE.search(before)


def _is_phone(match: re.Match[str]) -> bool:
    text = match.group(0)
    if _DATE_RE.match(text):
        return False  # "01/02/2024 10", a date and an hour
    n = sum(ch.isdigit() for ch in text)
    if text.startswith("+"):
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
