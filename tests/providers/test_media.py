"""Images, transcriptions and speech passed through to deployments that declare them, with the
``openai`` SDK against the app in process and a fake OpenAI media server over real HTTP:
keyed, limited and held like chat, billed per image, per second and per character."""

from __future__ import annotations

import io
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from keyhouse.accounts.members import create_member
from keyhouse.billing import ledger
from keyhouse.clock import FrozenClock
from keyhouse.keys.store import KeyRules, create_key
from tests.billing.credit_support import RING
from tests.billing.meter_support import Keyhouse
from tests.conftest import OpenAISpec
from tests.providers.fake_media import MP3, FakeMedia
from tests.providers.support import Serving, keyhouse_with, sdk


def toml(main: FakeMedia, spare: FakeMedia) -> str:
    return f"""
[[models]]
name = "dall-e-3"
media_prices = {{ image = "0.04" }}

[[models.deployments]]
name = "images-main"
backend = "openai"
base_url = "{main.url}"
model = "image-model-upstream"
endpoints = ["images.generations"]
breaker = {{ threshold = 100 }}

[[models.deployments]]
name = "images-spare"
backend = "openai"
base_url = "{spare.url}"
model = "image-model-spare"
endpoints = ["images.generations"]
priority = 1

[[models]]
name = "tts-1"
media_prices = {{ character = "0.000015" }}
backend = "openai"
settings = {{ base_url = "{main.url}", model = "tts-upstream", endpoints = ["audio.speech"] }}

[[models]]
name = "whisper-1"
media_prices = {{ second = "0.0001" }}
backend = "openai"
[models.settings]
base_url = "{main.url}"
model = "whisper-upstream"
endpoints = ["audio.transcriptions"]

[[models]]
name = "chat-only"
backend = "openai"
settings = {{ base_url = "{main.url}" }}
"""


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A real mono 8-bit WAV file of silence."""
    data = b"\x80" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate, 1, 8)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


@pytest.fixture
def media() -> Iterator[tuple[FakeMedia, FakeMedia]]:
    main, spare = FakeMedia(), FakeMedia()
    running = [Serving(main), Serving(spare)]
    yield main, spare
    for server in running:
        server.stop()


@pytest.fixture
async def kh(tmp_path: Path, media: tuple[FakeMedia, FakeMedia]) -> AsyncIterator[Keyhouse]:
    async with keyhouse_with(tmp_path, toml(*media)) as harness:
        yield harness


async def test_images_are_billed_per_image(
    kh: Keyhouse, media: tuple[FakeMedia, FakeMedia], openapi: OpenAISpec
) -> None:
    main, _ = media
    member, secret = await kh.member(credit=10**9)
    async with sdk(kh, secret) as ai:
        raw = await ai.images.with_raw_response.generate(model="dall-e-3", prompt="a cat", n=2)
    openapi.validate("ImagesResponse", raw.http_response.json())
    assert len(raw.parse().data or []) == 2
    assert main.seen[-1] == (
        "/v1/images/generations",
        {"model": "image-model-upstream", "prompt": "a cat", "n": 2},
    )
    (row,) = (await kh.rows(member)).values()
    assert (row.prompt_tokens, row.completion_tokens, row.cost) == (2, 0, 80_000)
    assert row.status == 200 and not row.estimated


async def test_speech_is_billed_per_character(
    kh: Keyhouse, media: tuple[FakeMedia, FakeMedia]
) -> None:
    main, _ = media
    member, secret = await kh.member(credit=10**9)
    async with sdk(kh, secret) as ai:
        audio = await ai.audio.speech.create(model="tts-1", voice="alloy", input="Hello world")
    assert audio.content == MP3 * 4
    assert audio.response.headers["content-type"] == "audio/mpeg"
    assert main.seen[-1][1]["model"] == "tts-upstream"
    (row,) = (await kh.rows(member)).values()
    assert (row.prompt_tokens, row.cost) == (11, 11 * 15)


async def test_transcriptions_are_billed_per_second(
    kh: Keyhouse, media: tuple[FakeMedia, FakeMedia], openapi: OpenAISpec
) -> None:
    main, _ = media
    member, secret = await kh.member(credit=10**9)
    async with sdk(kh, secret) as ai:
        # The seconds the server reports (3.2 → 4 whole seconds).
        raw = await ai.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=("talk.mp3", MP3 * 100, "audio/mpeg"), language="en"
        )
        openapi.validate("CreateTranscriptionResponseJson", raw.http_response.json())
        _, fields = main.seen[-1]
        assert fields["model"] == "whisper-upstream" and fields["language"] == "en"
        assert fields["file"] == ("talk.mp3", "audio/mpeg", MP3 * 100)
        verbose = await ai.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=("talk.mp3", MP3, "audio/mpeg"), response_format="verbose_json"
        )
        openapi.validate("CreateTranscriptionResponseVerboseJson", verbose.http_response.json())
        # No length reported (plain text): a WAV file's own header says 7.5 s.
        text = await ai.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", io.BytesIO(wav(7.5))), response_format="text"
        )
        assert text.strip() == "hello world"
        # Nothing to go by: the size at 128 kbit/s, marked as an estimate.
        main.report = False
        await ai.audio.transcriptions.create(
            model="whisper-1", file=("a.mp3", b"\xff\xfb" * 40_000, "audio/mpeg")
        )
    rows = sorted((await kh.rows(member)).values(), key=lambda r: r.request_id)
    got = sorted((r.prompt_tokens, r.cost, r.estimated) for r in rows)
    assert got == sorted([(4, 400, False), (4, 400, False), (8, 800, False), (5, 500, True)])


async def test_keyed_limited_and_routed_like_chat(
    kh: Keyhouse, media: tuple[FakeMedia, FakeMedia], openapi: OpenAISpec
) -> None:
    main, spare = media
    # A model that does not declare the endpoint.
    _, secret = await kh.member(credit=10**9)
    response = await kh.http.post(
        "/v1/images/generations",
        json={"model": "chat-only", "prompt": "a cat"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert openapi.validate_error(response, 404)["code"] == "model_not_supported"
    # No key; a key restricted to chat.
    response = await kh.http.post("/v1/audio/speech", json={"model": "tts-1"})
    openapi.validate_error(response, 401)
    restricted = await restricted_key(kh, ["chat.completions"])
    response = await kh.http.post(
        "/v1/audio/speech",
        json={"model": "tts-1", "voice": "alloy", "input": "hi"},
        headers={"Authorization": f"Bearer {restricted}"},
    )
    openapi.validate_error(response, 403)
    # No credit: refused before the upstream is called.
    calls = len(main.seen)
    broke, poor = await kh.member(credit=0)
    async with sdk(kh, poor) as ai:
        with pytest.raises(openai.RateLimitError):
            await ai.images.generate(model="dall-e-3", prompt="a cat")
    assert len(main.seen) == calls and await kh.rows(broke) == {}
    # A deployment that fails before answering: the next one answers.
    main.statuses.append(503)
    async with sdk(kh, secret) as ai:
        made = await ai.images.generate(model="dall-e-3", prompt="a dog")
    assert len(made.data or []) == 1 and spare.seen[-1][1]["model"] == "image-model-spare"


async def restricted_key(kh: Keyhouse, endpoints: list[str]) -> str:
    clock = FrozenClock(datetime.now(UTC))
    async with kh.db.session() as session:
        member = await create_member(session, clock, email=f"r-{uuid.uuid4().hex[:8]}@example.org")
        await ledger.grant(session, member.id, 10**9, clock.now())
        await ledger.ensure_balance(session, member.id, clock.now())
        rules = KeyRules(permissions="restricted", endpoints=tuple(endpoints))
        _, secret = await create_key(session, clock, RING, member, name="r", rules=rules)
        await session.commit()
    return secret
