"""Inference: load a trained model (a run's checkpoint with its tokenizer) and
generate from it. Eval, ``fmforge generate`` and the coming HTTP server all load
through here; the KV-cache generation engine is ``engine.Engine``."""
