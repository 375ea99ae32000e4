"""Azure OpenAI as a backend: OpenAI's own wire format at Azure's addresses.

A deployment is ``{endpoint}/openai/deployments/{deployment}``; each call adds
``?api-version=…`` and sends its key in an ``api-key`` header. Everything else — pass-through,
usage, the output cap, fallback, key pools — is the ``openai`` backend's.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from keyhouse.backends.upstream.client import UpstreamBackend, UpstreamSettings, upstream_settings
from keyhouse.config import DeploymentSpec, ModelSpec
from keyhouse.errors import ConfigError

#: The latest generally available data-plane version when this was written.
DEFAULT_API_VERSION = "2024-10-21"
_EXTRA_KEYS = frozenset({"endpoint", "deployment", "api_version"})


class AzureBackend(UpstreamBackend):
    """One Azure OpenAI deployment."""

    def read_settings(self, spec: ModelSpec, deployment: DeploymentSpec) -> UpstreamSettings:
        where = f"deployment {deployment.name}"
        raw = deployment.settings
        if "base_url" in raw:
            raise ConfigError(
                f"{where}: azure takes 'endpoint' (https://NAME.openai.azure.com) and "
                "'deployment', not base_url"
            )
        endpoint = raw.get("endpoint")
        if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(
                f"{where}: endpoint must be the resource's URL, e.g. https://NAME.openai.azure.com"
            )
        name = raw.get("deployment") or raw.get("model") or spec.name
        version = raw.get("api_version", DEFAULT_API_VERSION)
        if not isinstance(version, str) or not version:
            raise ConfigError(f"{where}: api_version must be a version, e.g. {DEFAULT_API_VERSION}")
        self.api_version = version
        base = f"{endpoint.rstrip('/')}/openai/deployments/{quote(str(name), safe='')}"
        return upstream_settings(spec, deployment, _EXTRA_KEYS, base_url=base)

    def url(self, path: str) -> str:
        return f"{self.settings.base_url}{path}?api-version={quote(self.api_version, safe='')}"

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"api-key": secret}
