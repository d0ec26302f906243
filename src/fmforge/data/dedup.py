"""Exact deduplication by a hash of the normalised text.

Repeated documents make a model memorise instead of generalise and leak between
train and val, so identical texts are kept once: the first occurrence in the
stage's deterministic reading order (sources in config order, files sorted by
path) wins, and later copies are counted as duplicates of their own source.
"""

from __future__ import annotations

import hashlib


def content_digest(data: bytes) -> bytes:
    """128-bit BLAKE2b of the UTF-8 bytes of a normalised text."""
    return hashlib.blake2b(data, digest_size=16).digest()


class ExactDedup:
    """Remembers digests of accepted documents. ``enabled=False`` never reports a duplicate."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._seen: set[bytes] = set()

    def is_duplicate(self, digest: bytes) -> bool:
        return self.enabled and digest in self._seen

    def add(self, digest: bytes) -> None:
        if self.enabled:
            self._seen.add(digest)
