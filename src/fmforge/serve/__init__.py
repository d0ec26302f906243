"""Generation from a trained run (and, later, the OpenAI-compatible server)."""
