"""The baselines for requests/s: a bare Starlette app (and, for reference, a bare FastAPI
app) under uvicorn, run as Keyhouse runs.

Same uvicorn settings and logging as ``keyhouse serve`` (one worker, no access log), one
route answering ``GET /v1/models`` with a small JSON body, so the
ratio measures what Keyhouse adds: the framework, authentication, routing, rendering.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.logs import setup_logging

BODY = b'{"object":"list","data":[{"id":"hello","object":"model","created":0,"owned_by":"x"}]}'


async def models(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/v1/models", models), Route("/health", health)])


def fastapi_app() -> Starlette:
    from fastapi import FastAPI

    app = FastAPI()
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--framework", choices=["starlette", "fastapi"], default="starlette")
    args = parser.parse_args()
    setup_logging(args.log_level)
    uvicorn.run(
        starlette_app() if args.framework == "starlette" else fastapi_app(),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        proxy_headers=False,
        access_log=False,  # as keyhouse serve, by default
        timeout_keep_alive=30,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
