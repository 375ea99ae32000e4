"""The OpenAI wire format, below everything that speaks it.

``keyhouse.wire.openai`` holds the pydantic models of requests, responses and stream chunks.
It imports nothing of Keyhouse, so ``api/`` (which parses and renders them) and ``backends/``
(which receive them) both import it downward.
"""
