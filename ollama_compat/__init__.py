"""Ollama-compatible HTTP layer (aiohttp). Never imports torch."""
