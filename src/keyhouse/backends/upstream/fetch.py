"""Fetching a member's image URL, for a provider that needs the bytes.

A URL in a request is the member's to choose, and Keyhouse fetches it from inside the
organisation's network: without a guard, ``http://169.254.169.254/`` or ``http://10.0.0.5/admin``
would be read on the member's behalf (server-side request forgery). So a fetch

- goes only to public addresses: every address a name resolves to is checked, at each
  connection (redirects included, and no DNS cache to go stale between check and use); private,
  loopback, link-local, shared, multicast, reserved and unspecified addresses are refused, and
  IPv4 inside IPv6 (mapped, 6to4, Teredo) is judged by its IPv4 address — unless an admin lists
  the network in ``image_fetch.allow_networks``;
- is bounded: at most ``max_bytes`` read, ``timeout`` seconds in all, ``max_redirects`` hops;
- must be an image Anthropic-style providers take (PNG, JPEG, GIF, WebP), judged by its bytes.

A refusal is the member's 400 (``invalid_image_url``), naming the part it came from.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from keyhouse.errors import ConfigError, InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Image types by their first bytes (what Anthropic, among others, accepts).
MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 5 * 1024 * 1024
    timeout: float = 10.0
    max_redirects: int = 3
    #: Networks an admin allows although they are not public (an internal image store).
    allow_networks: tuple[IPNetwork, ...] = ()


_POLICY_KEYS = {"max_bytes", "timeout", "max_redirects", "allow_networks"}


def fetch_policy(raw: Any, where: str) -> FetchPolicy:
    """``image_fetch = { max_bytes, timeout, max_redirects, allow_networks }``, checked."""
    if raw is None:
        return FetchPolicy()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: image_fetch must be a table")
    unknown = set(raw) - _POLICY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown image_fetch settings {sorted(unknown)}")
    defaults = FetchPolicy()
    numbers: dict[str, Any] = {}
    for name, kind in (("max_bytes", int), ("timeout", float), ("max_redirects", int)):
        value = raw.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: image_fetch.{name} must be a number ≥ 0")
        numbers[name] = kind(value)
    networks = raw.get("allow_networks", [])
    if isinstance(networks, str) or not isinstance(networks, list):
        raise ConfigError(f"{where}: image_fetch.allow_networks must be a list of CIDR networks")
    try:
        allowed = tuple(ipaddress.ip_network(str(n), strict=False) for n in networks)
    except ValueError as exc:
        raise ConfigError(f"{where}: image_fetch.allow_networks: {exc}") from None
    return FetchPolicy(allow_networks=allowed, **numbers)


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (IPv4 carried in IPv6 judged as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if inner is not None:
            return is_public(inner)
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def allowed(address: IPAddress, policy: FetchPolicy) -> bool:
    return is_public(address) or any(
        address.version == net.version and address in net for net in policy.allow_networks
    )


class Refused(InvalidRequest):
    """The image could not be fetched (or may not be); the member's mistake, a 400."""

    code = "invalid_image_url"


class _GuardedResolver(AbstractResolver):
    """Resolves as usual, then refuses the name if any of its addresses may not be reached."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        for entry in found:
            address = ipaddress.ip_address(entry["host"].split("%")[0])
            if not allowed(address, self.policy):
                raise _NotPublic(host)
        return found

    async def close(self) -> None:
        await self.inner.close()


class _NotPublic(OSError):
    """Raised inside the connector: a resolved address may not be reached."""


@dataclass(frozen=True)
class Image:
    media_type: str
    #: Base64 of the image's bytes.
    data: str


def sniff(head: bytes) -> str | None:
    """The media type of PNG, JPEG, GIF or WebP bytes; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_url(url: str, param: str) -> Image:
    """A ``data:image/…;base64,…`` URL's media type and data, checked."""
    header, comma, data = url.partition(",")
    kind = header[len("data:") :].split(";")
    if not comma or "base64" not in kind[1:]:
        raise Refused("Invalid image data URL: expected data:image/...;base64,....", param=param)
    try:
        head = base64.b64decode(data[:64].encode() + b"=" * (-len(data[:64]) % 4))
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(
            "Invalid image data URL: the data is not valid base64.", param=param
        ) from None
    media_type = sniff(head) or kind[0].lower()
    if media_type not in MEDIA_TYPES:
        raise Refused(
            f"Invalid image data URL: {kind[0] or 'unknown type'} is not supported "
            f"(use {', '.join(MEDIA_TYPES)}).",
            param=param,
        )
    return Image(media_type, data)


async def fetch_image(url: str, policy: FetchPolicy, param: str) -> Image:
    """The image at ``url`` (http or https), fetched within the policy's bounds."""
    try:
        async with asyncio.timeout(policy.timeout):
            body = await _fetch(url, policy, param)
    except TimeoutError:
        raise Refused(
            f"Error while downloading {_shown(url)}: no answer within {policy.timeout:g} s.",
            param=param,
        ) from None
    media_type = sniff(body[:16])
    if media_type is None:
        raise Refused(
            f"Error while downloading {_shown(url)}: not a PNG, JPEG, GIF or WebP image.",
            param=param,
        )
    return Image(media_type, base64.b64encode(body).decode("ascii"))


async def _fetch(url: str, policy: FetchPolicy, param: str) -> bytes:
    connector = aiohttp.TCPConnector(
        resolver=_GuardedResolver(policy), use_dns_cache=False, force_close=True
    )
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        for _ in range(policy.max_redirects + 1):
            _check_url(url, policy, param)
            try:
                async with session.get(
                    url, allow_redirects=False, headers={"Accept": "image/*"}
                ) as response:
                    if response.status in _REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status != 200:
                        raise Refused(
                            f"Error while downloading {_shown(url)}: HTTP {response.status}.",
                            param=param,
                        )
                    return await _read(response, url, policy, param)
            except _NotPublic:
                raise _not_public(url, param) from None
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, _NotPublic):
                    raise _not_public(url, param) from None
                raise Refused(
                    f"Error while downloading {_shown(url)}: could not connect.", param=param
                ) from None
            except aiohttp.ClientError as exc:
                raise Refused(
                    f"Error while downloading {_shown(url)}: {type(exc).__name__}.", param=param
                ) from None
    raise Refused(
        f"Error while downloading {_shown(url)}: more than {policy.max_redirects} redirects.",
        param=param,
    )


def _check_url(url: str, policy: FetchPolicy, param: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(
            "Invalid image URL: use an http(s) URL or a data: URL.",
            param=param,
        )
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a name: its addresses are checked as it is resolved
    if not allowed(literal, policy):  # aiohttp connects to a literal without resolving it
        raise _not_public(url, param)


async def _read(
    response: aiohttp.ClientResponse, url: str, policy: FetchPolicy, param: str
) -> bytes:
    too_big = Refused(
        f"Error while downloading {_shown(url)}: larger than {policy.max_bytes} bytes.",
        param=param,
    )
    if (response.content_length or 0) > policy.max_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > policy.max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _not_public(url: str, param: str) -> Refused:
    return Refused(
        f"Error while downloading {_shown(url)}: its address is not public, and images are "
        "fetched only from public addresses.",
        param=param,
    )


def _shown(url: str) -> str:
    """The URL for a message: no credentials, no query, not too long."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    shown = f"{parts.scheme}://{host}{parts.path}"
    return shown if len(shown) <= 120 else shown[:117] + "..."
