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


# RFC 6598's shared address space (carrier-grade NAT), 100.64.0.0/10, is not
# globally reachable (IANA's special-purpose registry): it identifies no one, as
# private ranges do; the addresses just outside the /10 are public.
@pytest.mark.parametrize("address, left", [
    ("100.64.0.1", True), ("100.127.255.254", True), ("100.63.255.254", False), ("100.128.0.1", False),
])
def test_the_shared_address_space_is_left_and_its_neighbours_redacted(address, left):
    text = f"NAT gateway at {address} today"
    assert PII(PIIConfig(enabled=True)).redact(text) == (text if left else "NAT gateway at <IP_ADDRESS> today")


# An SNMP object identifier (MIB-2 is 1.3.6.1.2.1, RFC 1213) is not a dotted quad:
# no four of its numbers are an address.
@pytest.mark.parametrize("text", ["snmpget host 1.3.6.1.2.1", "OID 1.3.6.1.4.1.311.21", "build 10.0.19045.2.4"])
def test_a_dotted_number_of_more_than_four_parts_is_not_an_address(text):
    assert PII(PIIConfig(enabled=True)).redact(text) == text
