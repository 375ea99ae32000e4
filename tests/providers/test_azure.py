"""The ``azure`` backend: deployment URLs with ``api-version``, the ``api-key`` header, chat
(streamed and not) and embeddings through ``/v1`` with the ``openai`` SDK, against a fake Azure
resource over real HTTP; bodies validated against OpenAI's schemas."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from keyhouse.backends.upstream.azure import AzureBackend
from keyhouse.backends.upstream.check import check_all
from keyhouse.config import DeploymentSpec, ModelSpec, load_settings
from keyhouse.errors import ConfigError
from tests.billing.meter_support import Keyhouse
from tests.conftest import OpenAISpec, sse_events
from tests.providers.fake_azure import FakeAzure
from tests.providers.support import Serving, keyhouse_with, sdk

KEY = "azure-key-5678"


def toml(azure: FakeAzure) -> str:
    return f"""
[[models]]
name = "gpt-4o"
input_price = "1"
output_price = "2"

[[models.deployments]]
name = "azure-east"
backend = "azure"
endpoint = "{azure.endpoint}"
deployment = "gpt-4o-prod"
api_version = "2025-01-01-preview"
api_keys = ["env:AZURE_TEST_KEY"]

[[models]]
name = "text-embedding-3-small"
input_price = "0.02"
backend = "azure"
[models.settings]
endpoint = "{azure.endpoint}/"
deployment = "embed-prod"
api_key = "env:AZURE_TEST_KEY"
endpoints = ["embeddings"]

[[models]]
name = "gpt-4o-gone"
backend = "azure"
[models.settings]
endpoint = "{azure.endpoint}"
deployment = "nowhere"
api_key = "env:AZURE_TEST_KEY"
"""


@pytest.fixture
def azure() -> Iterator[FakeAzure]:
    fake = FakeAzure()
    serving = Serving(fake)
    yield fake
    serving.stop()


@pytest.fixture
async def ai(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azure: FakeAzure
) -> AsyncIterator[tuple[Keyhouse, openai.AsyncOpenAI]]:
    monkeypatch.setenv("AZURE_TEST_KEY", KEY)
    async with keyhouse_with(tmp_path, toml(azure)) as kh:
        _, secret = await kh.member(credit=10**9)
        async with sdk(kh, secret) as client:
            yield kh, client


async def test_chat_goes_to_the_deployment_url(
    ai: tuple[Keyhouse, openai.AsyncOpenAI], azure: FakeAzure, openapi: OpenAISpec
) -> None:
    _, client = ai
    reply = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    openapi.validate("CreateChatCompletionResponse", reply.http_response.json())
    assert reply.parse().choices[0].message.content == "Hello from the fake upstream."
    assert azure.seen == [("gpt-4o-prod", "chat/completions", "2025-01-01-preview")]
    headers = azure.inner.seen[-1].headers
    assert headers["api-key"] == KEY and "Authorization" not in headers


async def test_a_stream_with_usage(
    ai: tuple[Keyhouse, openai.AsyncOpenAI], azure: FakeAzure, openapi: OpenAISpec
) -> None:
    kh, client = ai
    response = await kh.http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    chunks = sse_events(response.text)[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    # Asked of Azure for the meter, as of any OpenAI server.
    assert azure.inner.seen[-1].body["stream_options"] == {"include_usage": True}


async def test_embeddings(
    ai: tuple[Keyhouse, openai.AsyncOpenAI], azure: FakeAzure, openapi: OpenAISpec
) -> None:
    _, client = ai
    result = await client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    openapi.validate("CreateEmbeddingResponse", result.http_response.json())
    assert len(result.parse().data) == 2
    assert azure.seen[-1] == ("embed-prod", "embeddings", "2024-10-21")  # the default version


async def test_azure_errors_reach_the_client(
    ai: tuple[Keyhouse, openai.AsyncOpenAI], openapi: OpenAISpec
) -> None:
    kh, client = ai
    response = await kh.http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-gone", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    error = openapi.validate_error(response, 404)
    assert error["code"] == "DeploymentNotFound"


def test_settings() -> None:
    spec = ModelSpec(name="m", deployments=())
    with pytest.raises(ConfigError, match="endpoint"):
        AzureBackend(spec, DeploymentSpec("d", "azure", {"base_url": "https://x.test/v1"}))
    with pytest.raises(ConfigError, match="endpoint must be"):
        AzureBackend(spec, DeploymentSpec("d", "azure", {"deployment": "x"}))
    backend = AzureBackend(spec, DeploymentSpec("d", "azure", {"endpoint": "https://r.test/"}))
    assert backend.url("/chat/completions") == (
        "https://r.test/openai/deployments/m/chat/completions?api-version=2024-10-21"
    )


async def test_upstreams_check_calls_the_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, azure: FakeAzure
) -> None:
    monkeypatch.setenv("AZURE_TEST_KEY", KEY)
    config = tmp_path / "keyhouse.toml"
    config.write_text(toml(azure))
    settings = load_settings({"KEYHOUSE_HOME": str(tmp_path), "KEYHOUSE_CONFIG": str(config)})
    lines: list[str] = []
    await check_all(settings, only="gpt-4o", timeout=10, echo=lines.append)
    assert "PASS" in lines[1], lines
    assert azure.seen[-1] == ("gpt-4o-prod", "chat/completions", "2025-01-01-preview")
