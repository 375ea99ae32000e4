"""A fake Azure OpenAI resource over real HTTP: ``/openai/deployments/{deployment}/…`` with a
required ``api-version`` query and an ``api-key`` header, as Azure documents them; the answers
are the fake OpenAI upstream's (Azure speaks OpenAI's format). Serve it with ``Serving``."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.upstream.fake import FakeUpstream

API_VERSIONS = {"2024-10-21", "2025-01-01-preview"}


@dataclass
class FakeAzure:
    deployments: set[str] = field(default_factory=lambda: {"gpt-4o-prod", "embed-prod"})
    key: str = "azure-key-5678"
    inner: FakeUpstream = field(default_factory=lambda: FakeUpstream(name="azure"))
    port: int = 0
    #: (deployment, endpoint, api-version) of each request answered.
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/", 3)
        if len(parts) < 4 or parts[:2] != ["openai", "deployments"]:
            return self._error(404, "404", "Resource not found")
        version = request.query.get("api-version")
        if version not in API_VERSIONS:
            return self._error(
                404 if version is None else 400,
                "404" if version is None else "BadRequest",
                "Resource not found" if version is None else "API version not supported",
            )
        if request.headers.get("api-key") != self.key or "Authorization" in request.headers:
            return self._error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        deployment, endpoint = parts[2], parts[3]
        if deployment not in self.deployments:
            return self._error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist.",
            )
        if endpoint not in ("chat/completions", "completions", "embeddings"):
            return self._error(404, "404", "Resource not found")
        self.seen.append((deployment, endpoint, version))
        return await self.inner.handle(request)
