"""The image fetch guard, over real HTTP: public addresses only (every resolved address, after
every redirect) unless an admin allows a network; bounded in size and time; images only."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator

import pytest

from keyhouse.backends.upstream.fetch import (
    FetchPolicy,
    Refused,
    data_url,
    fetch_image,
    fetch_policy,
    is_public,
)
from keyhouse.errors import ConfigError
from tests.providers.support import ImageServer, Serving, png, png_data_url

LOOPBACK = fetch_policy({"allow_networks": ["127.0.0.0/8", "::1/128"]}, "test")
PARAM = "messages[0].content[1].image_url.url"


@pytest.fixture
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    serving = Serving(server)
    yield server
    server.release.set()
    serving.stop()


@pytest.fixture
def elsewhere() -> Iterator[ImageServer]:
    """A second image server, on another loopback address (another "machine")."""
    server = ImageServer()
    serving = Serving(server, host="127.0.0.2")
    yield server
    serving.stop()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared (carrier-grade NAT)
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "::",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


async def test_loopback_is_refused_by_default(images: ImageServer) -> None:
    for url in (images.url("/cat.png"), images.url("/cat.png", host="localhost")):
        with pytest.raises(Refused) as caught:
            await fetch_image(url, FetchPolicy(), PARAM)
        assert "not public" in caught.value.message
        assert caught.value.param == PARAM and caught.value.status == 400
    assert images.hits == []  # refused before connecting


async def test_an_allowed_network_is_fetched(images: ImageServer) -> None:
    image = await fetch_image(images.url("/cat.png"), LOOPBACK, PARAM)
    assert image.media_type == "image/png"
    assert base64.b64decode(image.data) == png()
    # By name too: every address "localhost" resolves to is in an allowed network.
    image = await fetch_image(images.url("/cat.png", host="localhost"), LOOPBACK, PARAM)
    assert image.media_type == "image/png"


async def test_a_redirect_to_a_refused_address_is_refused(
    images: ImageServer, elsewhere: ImageServer
) -> None:
    only_first = fetch_policy({"allow_networks": ["127.0.0.1/32"]}, "test")
    target = elsewhere.url("/cat.png", host="127.0.0.2")
    hop = images.url(f"/to?url={target}")
    with pytest.raises(Refused, match="not public"):
        await fetch_image(hop, only_first, PARAM)
    assert elsewhere.hits == []
    # The same hop, with both allowed, is followed (so the refusal above was the guard's).
    image = await fetch_image(hop, LOOPBACK, PARAM)
    assert image.media_type == "image/png" and elsewhere.hits == ["/cat.png"]


async def test_redirects_are_bounded(images: ImageServer) -> None:
    url = images.url("/cat.png")
    for _ in range(3):
        url = images.url(f"/to?url={url}")
    with pytest.raises(Refused, match="more than 2 redirects"):
        await fetch_image(url, fetch_policy({"max_redirects": 2, **_loopback()}, "t"), PARAM)
    assert (await fetch_image(url, LOOPBACK, PARAM)).media_type == "image/png"


async def test_size_is_bounded(images: ImageServer) -> None:
    small = fetch_policy({"max_bytes": 16 * 1024, **_loopback()}, "test")
    with pytest.raises(Refused, match="larger than 16384 bytes"):
        await fetch_image(images.url("/big.png"), small, PARAM)
    image = await fetch_image(images.url("/big.png"), LOOPBACK, PARAM)
    assert len(base64.b64decode(image.data)) > 64 * 1024


async def test_time_is_bounded(images: ImageServer) -> None:
    quick = fetch_policy({"timeout": 0.2, **_loopback()}, "test")
    with pytest.raises(Refused, match=r"no answer within 0\.2 s"):
        await fetch_image(images.url("/slow.png"), quick, PARAM)


async def test_only_images(images: ImageServer) -> None:
    with pytest.raises(Refused, match="not a PNG, JPEG, GIF or WebP image"):
        await fetch_image(images.url("/text"), LOOPBACK, PARAM)
    with pytest.raises(Refused, match="HTTP 404"):
        await fetch_image(images.url("/nothing.png"), LOOPBACK, PARAM)
    with pytest.raises(Refused, match="http"):
        await fetch_image("file:///etc/passwd", LOOPBACK, PARAM)


def test_data_urls() -> None:
    image = data_url(png_data_url(), PARAM)
    assert image.media_type == "image/png" and base64.b64decode(image.data) == png()
    for bad in (
        "data:image/png,notbase64",
        "data:image/png;base64,@@@@",
        "data:text/plain;base64,aGk=",
    ):
        with pytest.raises(Refused):
            data_url(bad, PARAM)


def test_policy_settings() -> None:
    with pytest.raises(ConfigError, match="allow_networks"):
        fetch_policy({"allow_networks": ["not a network"]}, "d")
    with pytest.raises(ConfigError, match="unknown"):
        fetch_policy({"allow": []}, "d")


def _loopback() -> dict[str, list[str]]:
    return {"allow_networks": ["127.0.0.0/8", "::1/128"]}
