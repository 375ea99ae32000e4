"""The ``/api`` bodies, capped before FastAPI reads them.

FastAPI reads a whole body into memory whatever its size — a gigabyte to ``/api/auth/signin``,
before anyone is signed in. The management API's bodies are small forms: this refuses a larger
one with a 413 in OpenAI's error shape, as soon as its declared or received size passes the
cap, before the app sees the request. (Lone surrogates need nothing here: FastAPI validates
the JSON text with pydantic, which refuses them with a 400.)
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyhouse.api.errors import error_body
from keyhouse.errors import RequestTooLarge

#: The largest body any /api operation needs (a profile, a key's settings) is a few KiB.
MAX_API_BODY = 256 * 1024


class BodyGuard:
    def __init__(self, app: ASGIApp, limit: int = MAX_API_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self.refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self.refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the disconnect, when it comes

        await self.app(scope, replay, send)

    async def refuse(self, send: Send) -> None:
        error = RequestTooLarge(f"Request too large: the body may be at most {self.limit} bytes.")
        body = error_body(error)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
