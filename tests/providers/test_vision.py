"""Images go only to deployments that declare vision: the router skips the others, and a model
with none answers OpenAI's 400 before anything is held. Through ``/v1`` with the SDK, the app in
process, fake OpenAI upstreams over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
import pytest

from tests.billing.meter_support import Keyhouse
from tests.conftest import OpenAISpec
from tests.providers.support import chat_with_image, keyhouse_with, png_data_url, sdk
from tests.upstream.fake import FakeUpstream, Running


@pytest.fixture
def fakes() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    plain, eyes = FakeUpstream(name="plain"), FakeUpstream(name="eyes")
    running = [Running(plain), Running(eyes)]
    yield plain, eyes
    for server in running:
        server.stop()


def toml(plain: FakeUpstream, eyes: FakeUpstream) -> str:
    return f"""
[[models]]
name = "mixed"
input_price = "1"
output_price = "1"

[[models.deployments]]
name = "plain"
backend = "openai"
base_url = "{plain.url}"
model = "fake-model"

[[models.deployments]]
name = "eyes"
backend = "openai"
base_url = "{eyes.url}"
model = "fake-model"
vision = true
priority = 1

[[models]]
name = "blind"
input_price = "1"
output_price = "1"
backend = "openai"
settings = {{ base_url = "{plain.url}", model = "fake-model" }}
"""


@pytest.fixture
async def kh(tmp_path: Path, fakes: tuple[FakeUpstream, FakeUpstream]) -> AsyncIterator[Keyhouse]:
    async with keyhouse_with(tmp_path, toml(*fakes)) as harness:
        yield harness


async def test_images_go_only_to_vision_deployments(
    kh: Keyhouse, fakes: tuple[FakeUpstream, FakeUpstream], openapi: OpenAISpec
) -> None:
    plain, eyes = fakes
    _, secret = await kh.member(credit=10**9)
    async with sdk(kh, secret) as ai:
        text = await ai.chat.completions.create(
            model="mixed", messages=[{"role": "user", "content": "hi"}]
        )
        assert text.choices[0].message.content and plain.calls() == 1 and eyes.calls() == 0
        for _ in range(3):
            body = chat_with_image("mixed", png_data_url())
            reply = await ai.chat.completions.with_raw_response.create(**body)
            openapi.validate("CreateChatCompletionResponse", reply.http_response.json())
    # The plain deployment comes first by priority, yet no image went to it.
    assert plain.calls() == 1 and eyes.calls() == 3
    sent = eyes.seen[-1].body["messages"][0]["content"][1]
    assert sent == {"type": "image_url", "image_url": {"url": png_data_url()}}


async def test_a_model_without_vision_answers_400(
    kh: Keyhouse, fakes: tuple[FakeUpstream, FakeUpstream], openapi: OpenAISpec
) -> None:
    plain, _ = fakes
    member, secret = await kh.member(credit=10**9)
    response = await kh.chat(secret, chat_with_image("blind", "https://example.org/cat.png"))
    error = openapi.validate_error(response, 400)
    assert error["param"] == "messages[0].content[1].type"
    assert "image_url is only supported by certain models" in error["message"]
    assert "blind reads text only" in error["message"]
    assert plain.calls() == 0
    assert kh.held(member) == 0 and await kh.rows(member) == {}  # refused before the hold
    async with sdk(kh, secret) as ai:
        with pytest.raises(openai.BadRequestError):
            await ai.chat.completions.create(**chat_with_image("blind", png_data_url()))
