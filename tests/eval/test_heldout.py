"""The compressor baseline beside the model's bits per byte."""

import numpy as np

from fmforge.eval.heldout import gzip_bits_per_byte


def test_gzip_compresses_repetition_below_one_bit_per_byte():
    assert gzip_bits_per_byte(b"abc" * 10_000) < 0.1
    assert gzip_bits_per_byte(np.random.default_rng(0).bytes(10_000)) > 7.9
