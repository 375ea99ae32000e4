"""The edge of every HTTP request: its id, and the one readable line the terminal shows.

    POST /v1/chat/completions 200 smollm2-135m-instruct 36+12 tokens 412 ms

``Edge`` wraps the whole app — outside Starlette's own error middleware, so its 500s get an
``x-request-id`` too — with one ``send`` wrapper for both jobs (each wrapper is a Python call
per message on every request).

The line (``settings.access_log``): method, path (never the query string: invitation and reset
tokens travel there), status, and for metered calls the model that answered and its tokens;
never a key, a header or a body. The pipeline leaves the model and usage in
``scope["state"]["access"]`` when it settles a request. A client that leaves before the
response starts is logged with status 499, as nginx does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keyhouse.api.http import new_request_id

log = logging.getLogger("keyhouse.access")


def note(scope: Scope, model: str, prompt_tokens: int, completion_tokens: int) -> None:
    """What the access line says about a metered call (called when its usage is settled)."""
    scope.setdefault("state", {})["access"] = (model, prompt_tokens, completion_tokens)


def line(method: str, path: str, status: int, ms: float, access: object = None) -> str:
    parts = [method, path, str(status)]
    if isinstance(access, tuple) and len(access) == 3:
        model, prompt, completion = access
        parts += [str(model), f"{prompt}+{completion} tokens"]
    parts.append(f"{ms:.0f} ms")
    return " ".join(parts)


class Edge:
    """Gives every request an id (``scope["state"]["request_id"]``) and every response its
    ``x-request-id`` header — errors and 404s included; with ``access_log``, writes the line
    once the request has ended."""

    def __init__(self, app: ASGIApp, *, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        status = 499  # until the response starts: the client left, as nginx says

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers") or ()
                for name, _ in headers:  # ASGI's header names are lower case
                    if name == b"x-request-id":
                        break
                else:
                    message["headers"] = [*headers, header]
            await send(message)

        if not self.access_log:
            await self.app(scope, receive, send_with_id)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            raise  # the client left: 499 unless the response had started
        except BaseException:
            if status == 499:
                status = 500  # what the server's last resort answers
            raise
        finally:
            if log.isEnabledFor(logging.INFO):
                ms = (time.perf_counter() - started) * 1000
                access = scope.get("state", {}).get("access")
                log.info(line(scope["method"], scope["path"], status, ms, access))
