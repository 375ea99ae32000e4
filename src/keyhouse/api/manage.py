"""The management API (``/api/…``): the FastAPI app that gathers the routers.

A FastAPI app mounted under ``/api`` beside the plain-Starlette ``/v1`` surface: here the
per-request cost of FastAPI buys what this surface needs — an OpenAPI document
(``/api/openapi.json``, browsable at ``/api/docs``) generated from typed handlers. The routers'
dependencies (the services, who is calling) live in ``api/deps``.
Errors keep OpenAI's shape (``{"error": {message, type, param, code}}``); refusals of the
accounts rules are translated into the caller's language.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from keyhouse import __version__
from keyhouse.accounts.refusals import Refused
from keyhouse.api import (
    accounts,
    admin,
    credit,
    docs,
    errors,
    member_keys,
    oidc_routes,
    openapi,
    playground,
    usage,
)
from keyhouse.api.body_guard import BodyGuard
from keyhouse.api.deps import language_of
from keyhouse.errors import InvalidRequest, KeyhouseError


def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


# ----------------------------------------------------------------------------- errors


async def on_keyhouse_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeyhouseError)
    body = exc.translated(language_of(request)) if isinstance(exc, Refused) else exc.body()
    return json(body, exc.status, exc.headers or None)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """Pydantic's complaints, as one OpenAI-shaped 400 naming the first bad field."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request"))
    where = f" ({param})" if param else ""
    return on_error_body(InvalidRequest(f"{message}{where}", param=param))


def on_error_body(exc: KeyhouseError) -> Response:
    return json(exc.body(), exc.status, exc.headers or None)


# ----------------------------------------------------------------------------- app


def build_api() -> FastAPI:
    """The ``/api`` app; ``app.create_app`` mounts it and hands it the services."""
    api = FastAPI(
        title="Keyhouse management API",
        version=__version__,
        description=(
            "Accounts (sign-up, verification, sign-in), a member's own API keys, usage and "
            "balance, and administration. Authenticate with the session cookie set by "
            "`POST /api/auth/signin` (and send `X-CSRF-Token` on every state-changing "
            "request), or with an admin token: `Authorization: Bearer sk-…`."
        ),
        openapi_url="/openapi.json",
        docs_url=None,  # api/docs serves Swagger UI itself: vendored, no CDN, no inline script
        redoc_url=None,
    )
    api.router.redirect_slashes = False
    routers = (
        accounts.router,
        oidc_routes.router,
        member_keys.router,
        admin.router,
        credit.router,
        usage.api_router,
        playground.router,
    )
    for router in routers:
        api.include_router(router)
    docs.install(api)
    errors.install(api)
    openapi.install(api, routers)
    api.add_middleware(BodyGuard)
    api.add_exception_handler(KeyhouseError, on_keyhouse_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    return api
