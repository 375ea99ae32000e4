"""A bare proxy, for scale: Starlette + one aiohttp session, no auth, no limits, no parsing
beyond what forwarding needs. What any Python gateway costs at the least.

    python bench/bare_proxy.py --port 9200 --upstream http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def app(upstream: str) -> Starlette:
    session: aiohttp.ClientSession | None = None

    async def chat(request: Request) -> Response:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession()
        body = await request.body()
        response = await session.post(
            upstream + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        if b'"stream":true' in body.replace(b" ", b""):

            async def relay():  # type: ignore[no-untyped-def]
                async for chunk in response.content.iter_any():
                    yield chunk
                response.release()

            return StreamingResponse(relay(), media_type="text/event-stream")
        data = await response.read()
        response.release()
        return Response(data, media_type="application/json")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(
        app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
