"""Upstream kinds and the backend class that speaks to each (``backend = "…"`` in a deployment)."""

from __future__ import annotations

from keyhouse.backends.upstream.anthropic import AnthropicBackend
from keyhouse.backends.upstream.azure import AzureBackend
from keyhouse.backends.upstream.client import UpstreamBackend

UPSTREAMS: dict[str, type[UpstreamBackend]] = {
    "openai": UpstreamBackend,
    "azure": AzureBackend,
    "anthropic": AnthropicBackend,
}
