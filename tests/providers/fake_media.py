"""A fake OpenAI media server over real HTTP: ``/v1/images/generations`` (``ImagesResponse``),
``/v1/audio/speech`` (MP3-framed bytes) and ``/v1/audio/transcriptions`` (a multipart upload;
``json`` answers report ``usage`` in seconds as OpenAI's whisper does, ``verbose_json`` a
``duration``, ``text`` plain text). Serve it with ``Serving``."""

from __future__ import annotations

import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.providers.support import png

#: An MPEG audio frame header, then silence: what a speech answer starts with.
MP3 = b"\xff\xfb\x90\x64" + b"\x00" * 413


@dataclass
class FakeMedia:
    port: int = 0
    key: str | None = None
    #: Seconds of audio the transcription answers report.
    seconds: float = 3.2
    #: Report no length at all in ``json`` answers (an older server).
    report: bool = True
    statuses: deque[int] = field(default_factory=deque)
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.statuses:
            status = self.statuses.popleft()
            return web.json_response(
                {"error": {"message": "busy", "type": "server_error", "param": None, "code": None}},
                status=status,
            )
        if request.path == "/v1/images/generations":
            body = await request.json()
            self.seen.append((request.path, body))
            images = [
                {"b64_json": base64.b64encode(png()).decode()} for _ in range(body.get("n", 1))
            ]
            return web.json_response({"created": 1700000000, "data": images})
        if request.path == "/v1/audio/speech":
            body = await request.json()
            self.seen.append((request.path, body))
            return web.Response(body=MP3 * 4, content_type="audio/mpeg")
        if request.path == "/v1/audio/transcriptions":
            form = await request.post()
            upload = form["file"]
            fields: dict[str, Any] = {k: v for k, v in form.items() if k != "file"}
            fields["file"] = (upload.filename, upload.content_type, upload.file.read())  # type: ignore[union-attr]
            self.seen.append((request.path, fields))
            fmt = fields.get("response_format", "json")
            if fmt == "text":
                return web.Response(text="hello world\n", content_type="text/plain")
            if fmt == "verbose_json":
                return web.json_response(
                    {"task": "transcribe", "language": "english", "duration": self.seconds,
                     "text": "hello world", "segments": []}
                )  # fmt: skip
            answer: dict[str, Any] = {"text": "hello world"}
            if self.report:
                answer["usage"] = {"type": "duration", "seconds": self.seconds}
            return web.json_response(answer)
        return web.json_response({"error": {"message": "not found"}}, status=404)
