"""Exports of a trained run and imports into one.

- ``mapping``: fmforge's weight names and fused matrices <-> Hugging Face Llama's
  (the one home of that mapping), and ``ModelConfig`` <-> Llama ``config.json``.
- ``hf``: ``fmforge export hf`` (a directory ``transformers`` and vLLM load) and
  ``fmforge import hf`` (a Llama-family checkpoint becomes a run directory).
- ``gguf``: ``fmforge export gguf`` (llama.cpp's Llama layout, f32/f16/q8_0).

The heavy modules are imported by the commands that need them, so importing
this package costs nothing.
"""
