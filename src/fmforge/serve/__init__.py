"""The OpenAI-compatible HTTP server over the generation engine, and its chat page."""
