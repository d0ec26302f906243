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
