"""Compressor baselines for held-out bits per byte: what a general-purpose
compressor achieves on exactly the bytes the model was scored on."""

from __future__ import annotations

import gzip


def gzip_bits_per_byte(data: bytes) -> float:
    """What ``gzip -9`` achieves on the same bytes, in bits per byte."""
    if not data:
        raise ValueError("no bytes to compress")
    return 8.0 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data)
