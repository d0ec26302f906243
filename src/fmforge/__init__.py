"""fmforge: from raw text to your own foundation model."""

__version__ = "0.1.0"
