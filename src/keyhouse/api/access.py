"""One readable line per request, for the terminal ``keyhouse serve`` runs in.

    POST /v1/chat/completions 200 smollm2-135m-instruct 36+12 tokens 412 ms

Method, path (never the query string: invitation and reset tokens travel there), status, and
for metered calls the model that answered and its tokens; never a key, a header or a body. The
pipeline leaves the model and usage in ``scope["state"]["access"]`` when it settles a request.
A client that leaves before the response starts is logged with status 499, as nginx does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 499

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
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
