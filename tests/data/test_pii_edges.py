"""Edges of the ``pii`` step's e-mail pattern, against the IANA root zone: a
top-level label is letters of any length (RFC 1035's 63 at most), and the root
zone delegates many longer than six (.photography, .international,
.travelersinsurance), beside the two-letter country codes."""

from __future__ import annotations

import pytest

from fmforge.config import PIIConfig
from fmforge.data.pii import PII


@pytest.mark.parametrize("address", [
    "jane@studio.photography",           # 11 letters
    "ops@relief.international",          # 13
    "claims@x.travelersinsurance",       # 18, the longest in the root zone
    "a.b@mail.example.museum",           # 6
    "kim@example.io",                    # 2
])
def test_an_address_under_any_delegated_top_level_domain_is_redacted(address):
    step = PII(PIIConfig(enabled=True))
    assert step.redact(f"Write to {address} today.") == "Write to <EMAIL> today."
    assert step.counters()["email"] == 1


# The North American Numbering Plan: an area code and an exchange are NXX, N = 2-9;
# the parenthesised area code is written with or without a space after it.
@pytest.mark.parametrize("text, redacted", [
    ("Call (415)555-2671 now.", "Call <PHONE> now."),
    ("Call (415) 555-2671 now.", "Call <PHONE> now."),
    ("Call +1 415 555 2671 now.", "Call <PHONE> now."),
    ("Code +1 123 555 0100 here.", "Code +1 123 555 0100 here."),  # area code 123: not NANP
    ("Code +1 055 555 0100 here.", "Code +1 055 555 0100 here."),  # area code 055: not NANP
])
def test_north_american_numbers_follow_the_numbering_plan(text, redacted):
    assert PII(PIIConfig(enabled=True)).redact(text) == redacted
