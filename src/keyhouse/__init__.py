"""Keyhouse: a self-hosted, OpenAI-compatible API platform."""

__version__ = "0.1.0"
