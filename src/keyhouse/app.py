"""Build the ASGI app from a ``Settings`` — as many apps as you like (tests build several)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from keyhouse import __version__, web
from keyhouse.api import errors, manage, usage, v1
from keyhouse.api.access import Edge
from keyhouse.api.dispatch import Dispatch
from keyhouse.api.pipeline import Endpoint
from keyhouse.clock import Clock, SystemClock
from keyhouse.config import Settings, load_settings
from keyhouse.services import Services, open_services, warm

__all__ = ["Services", "app_from_env", "create_app"]


class App(Starlette):
    """Starlette with two layers around its own: outermost the edge (request ids, the access
    line), so that even the 500s of Starlette's error middleware pass through it; then the
    ``/v1`` pipeline's routes, dispatched before any of Starlette's per-request layers."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        routes: list[BaseRoute],
        access_log: bool,
        lifespan: Any,
    ) -> None:
        super().__init__(routes=routes, lifespan=lifespan)
        self.endpoints = endpoints
        self.access_log = access_log

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return Edge(Dispatch(self.endpoints, inner), access_log=self.access_log)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> Starlette:
    settings = settings or load_settings()
    clock = clock or SystemClock()

    api = manage.build_api()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with open_services(settings, clock) as svc:
            await warm(svc)  # before "ready": what the first requests would wait for
            app.state.services = svc
            api.state.services = svc
            # Everything made so far lives as long as the server: keep it out of the garbage
            # collector's full passes, which otherwise walk it again and again (a fifth of a
            # cheap request's CPU under load).
            gc.collect()
            gc.freeze()
            loop = asyncio.get_running_loop()
            # SIGHUP: re-read the TOML file's models and limits (only the main thread can).
            with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(svc.reload()))
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signal.SIGHUP)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    # The /v1 path needs none of FastAPI's per-request layers, nor Starlette's: its routes are
    # dispatched ahead of them (api/dispatch). The documented /api surface is a FastAPI app
    # mounted beside them.
    app = App(
        endpoints=[*v1.routes, *usage.routes],
        routes=[
            Route("/health", health, methods=["GET"]),
            Mount("/api", api),
            # The member web app: last, so it never shadows the API.
            *web.routes(),
        ],
        access_log=settings.access_log,
        lifespan=lifespan,
    )
    # /v1/chat/completions/ is "Invalid URL", as at OpenAI, not a redirect (api/dispatch
    # matches paths exactly, and the router must not redirect what it does not know).
    app.router.redirect_slashes = False
    errors.install(app)
    web.install(app)
    return app


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory`` (each worker builds its app from the environment)."""
    from keyhouse import server
    from keyhouse.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level)
    server.configure(settings)
    return create_app(settings)
