"""The media endpoints, passed through to deployments that declare them: ``/v1/images/generations``
(JSON in, JSON out), ``/v1/audio/transcriptions`` (a multipart upload in) and
``/v1/audio/speech`` (JSON in, audio bytes out).

Each is keyed, limited and held like chat, and billed by its unit at the model's
``media_prices``: per image made, per second of audio heard, per character spoken. The units
go where tokens go — the limits' token counts, and the usage row's ``prompt_tokens`` (with no
completion tokens) — so dashboards, budgets and reports need nothing new. A price of ``p`` per
unit is held and charged as ``p`` × 1M per 1M "tokens", i.e. exactly ``p`` per unit.

The worst case is held first: ``n`` images; the characters of ``input``; for audio, its
length by the upload's size at a low bitrate (6 kbit/s). The charge is what was made: the
images in the answer, the characters sent, and the seconds the server reports
(``usage.seconds`` or ``duration``) — else, for a WAV file, its length from its header; else
the size at 128 kbit/s, marked as an estimate.
"""

from __future__ import annotations

import email.parser
import email.policy
import math
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response

from keyhouse.api.http import read_body, unless_disconnected
from keyhouse.api.pipeline import (
    NOTHING,
    Exchange,
    admit,
    authenticate,
    price,
    resolve,
    route,
    status_of,
)
from keyhouse.backends.base import Call, Usage
from keyhouse.backends.catalog import Route
from keyhouse.billing.money import MICRO, Prices
from keyhouse.config import MEDIA_ENDPOINTS
from keyhouse.errors import InvalidRequest

#: OpenAI's limit on an audio upload.
MAX_AUDIO_BYTES = 25 * 1024 * 1024
#: Bytes per second of audio: the lowest bitrate held for, and the one assumed when the
#: length is unknown.
HOLD_BYTES_PER_SECOND = 750
GUESS_BYTES_PER_SECOND = 16_000
MAX_SPEECH_CHARACTERS = 4096


def unit_prices(found: Route, endpoint: str) -> Prices:
    """The model's price per unit of this endpoint, as a price per 1M units."""
    per_unit = found.spec.media_price(MEDIA_ENDPOINTS[endpoint]) * MICRO
    return Prices(per_unit, per_unit, Decimal(0))


@dataclass
class Billed:
    """What one media request used: its units, and whether they were counted here."""

    units: int
    estimated: bool = False


async def run_media(
    ex: Exchange,
    endpoint: str,
    name: str,
    bound: int,
    send: Callable[[Route, Call], Awaitable[tuple[bytes, str]]],
    used: Callable[[bytes, str], Billed],
) -> Response:
    """The pipeline's route, admit and price stages with units for tokens; the deployment's
    answer; then the charge for what it made (nothing, if it failed)."""
    found = resolve(ex, name, endpoint)
    admission = await admit(ex, name, bound)
    call = await price(ex, (bound, 0, 1), prices=unit_prices(found, endpoint))
    meter = call.meter
    try:
        data, kind = await unless_disconnected(ex.request, send(found, call))
    except BaseException as exc:
        meter.status = status_of(exc)
        meter.close(NOTHING)
        raise
    billed = used(data, kind)
    meter.report(Usage(billed.units, 0, estimated=billed.estimated))  # settled once written
    return Response(data, media_type=kind, headers=admission.headers)


def upstream_json(endpoint: str, body: dict[str, Any]) -> Callable[..., Any]:
    """The request for a JSON media endpoint, with each deployment's own model name."""
    path = "/" + endpoint.replace(".", "/")

    async def send(route: Route, call: Call) -> tuple[bytes, str]:
        async def one(deployment: Any) -> tuple[bytes, str]:
            backend = deployment.backend
            payload = orjson.dumps({**body, "model": backend.settings.model})
            return await backend.media(path, payload, "application/json")  # type: ignore[no-any-return]

        return await route.backend.media(endpoint, one, call)  # type: ignore[attr-defined,no-any-return]

    return send


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
    return value


# ----------------------------------------------------------------------------- images


async def images_generations(ex: Exchange) -> Response:
    await authenticate(ex, "images.generations")
    body = _json_body(await read_body(ex.request, ex.svc.settings.max_body_bytes))
    name = _required_str(body, "model")
    _required_str(body, "prompt")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        raise InvalidRequest("Invalid value for 'n': expected 1 to 10.", param="n")

    def used(data: bytes, kind: str) -> Billed:
        try:
            made = orjson.loads(data).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            made = None
        return Billed(len(made), False) if isinstance(made, list) else Billed(n, True)

    send = upstream_json("images.generations", body)
    return await run_media(ex, "images.generations", name, n, send, used)


# ----------------------------------------------------------------------------- speech


async def audio_speech(ex: Exchange) -> Response:
    await authenticate(ex, "audio.speech")
    body = _json_body(await read_body(ex.request, ex.svc.settings.max_body_bytes))
    name = _required_str(body, "model")
    text = _required_str(body, "input")
    if len(text) > MAX_SPEECH_CHARACTERS:
        raise InvalidRequest(
            f"Invalid value for 'input': at most {MAX_SPEECH_CHARACTERS} characters.",
            param="input",
            code="string_above_max_length",
        )
    _required_str(body, "voice")
    characters = len(text)
    send = upstream_json("audio.speech", body)
    return await run_media(
        ex, "audio.speech", name, characters, send, lambda _d, _k: Billed(characters)
    )


# ----------------------------------------------------------------------------- transcriptions


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


def parse_form(content_type: str, body: bytes) -> list[Part]:
    """A ``multipart/form-data`` body's parts, in order."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            "This endpoint takes multipart/form-data (a file upload).", code="invalid_value"
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidRequest("The multipart body could not be read.", code="invalid_value")
    parts = []
    for item in message.iter_parts():  # type: ignore[attr-defined]
        name = item.get_param("name", header="content-disposition")
        if not name:
            continue
        filename = item.get_filename()
        parts.append(
            Part(
                str(name),
                item.get_payload(decode=True) or b"",
                filename,
                item.get_content_type() if filename else None,
            )
        )
    return parts


def encode_form(parts: list[Part]) -> tuple[bytes, str]:
    """Parts as a ``multipart/form-data`` body, and its content type."""
    boundary = "keyhouse-" + secrets.token_hex(16)
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{_quoted(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quoted(part.filename)}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if part.filename is not None:
            out += f"Content-Type: {part.content_type or 'application/octet-stream'}\r\n".encode()
        out += b"\r\n" + part.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def wav_seconds(data: bytes) -> float | None:
    """A RIFF/WAVE file's length from its header; None for anything else."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    i = 12
    rate = None
    while i + 8 <= len(data):
        kind, size = data[i : i + 4], struct.unpack("<I", data[i + 4 : i + 8])[0]
        if kind == b"fmt " and size >= 16:
            rate = struct.unpack("<I", data[i + 16 : i + 20])[0]  # bytes per second
        elif kind == b"data" and rate:
            return min(size, len(data) - i - 8) / rate
        i += 8 + size + (size & 1)
    return None


def reported_seconds(data: bytes) -> float | None:
    """The seconds a transcription answer reports (``usage.seconds`` or ``duration``)."""
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    usage = answer.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("seconds"), int | float):
        return float(usage["seconds"])
    duration = answer.get("duration")
    return float(duration) if isinstance(duration, int | float) else None


async def audio_transcriptions(ex: Exchange) -> Response:
    await authenticate(ex, "audio.transcriptions")
    body = await read_body(ex.request, MAX_AUDIO_BYTES + 64 * 1024)
    parts = parse_form(ex.request.headers.get("content-type", ""), body)
    fields = {p.name: p for p in parts}
    if "file" not in fields or fields["file"].filename is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    if "model" not in fields:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    name = fields["model"].data.decode("utf-8", "replace")
    audio = fields["file"].data
    if len(audio) > MAX_AUDIO_BYTES:
        raise InvalidRequest(
            f"Audio file is too large: at most {MAX_AUDIO_BYTES} bytes.", param="file"
        )
    bound = max(1, math.ceil(len(audio) / HOLD_BYTES_PER_SECOND))
    local = wav_seconds(audio)

    async def send(route: Route, call: Call) -> tuple[bytes, str]:
        async def one(deployment: Any) -> tuple[bytes, str]:
            backend = deployment.backend
            model = Part("model", backend.settings.model.encode())
            payload, kind = encode_form([model if p.name == "model" else p for p in parts])
            return await backend.media("/audio/transcriptions", payload, kind)  # type: ignore[no-any-return]

        return await route.backend.media("audio.transcriptions", one, call)  # type: ignore[attr-defined,no-any-return]

    def used(data: bytes, kind: str) -> Billed:
        seconds = reported_seconds(data)
        if seconds is not None:
            return Billed(max(1, math.ceil(seconds)))
        if local is not None:
            return Billed(max(1, math.ceil(local)))
        return Billed(max(1, math.ceil(len(audio) / GUESS_BYTES_PER_SECOND)), estimated=True)

    return await run_media(ex, "audio.transcriptions", name, bound, send, used)


routes = [
    route("/v1/images/generations", images_generations, "POST"),
    route("/v1/audio/transcriptions", audio_transcriptions, "POST"),
    route("/v1/audio/speech", audio_speech, "POST"),
]
