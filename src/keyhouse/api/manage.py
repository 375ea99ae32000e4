"""The management API (``/api/…``): accounts, a member's own keys, administration, usage.

A FastAPI app mounted under ``/api`` beside the plain-Starlette ``/v1`` surface: here the
per-request cost of FastAPI buys what this surface needs — an OpenAPI document
(``/api/openapi.json``, browsable at ``/api/docs``) generated from typed handlers.

Who is calling (``Actor``) comes from a session cookie (the dashboard) or from an admin token
(``Authorization: Bearer sk-…`` of a key with the admin scope, for scripts). With a session,
every state-changing request must carry the CSRF token in ``X-CSRF-Token``.
Errors keep OpenAI's shape (``{"error": {message, type, param, code}}``); refusals of the
accounts rules are translated into the caller's language.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from keyhouse import __version__
from keyhouse.accounts import sessions
from keyhouse.accounts.refusals import Refused
from keyhouse.api import errors, openapi
from keyhouse.api.body_guard import BodyGuard
from keyhouse.api.http import client_ip, presented_key
from keyhouse.errors import InvalidRequest, KeyhouseError, PermissionDenied
from keyhouse.i18n import pick_language

if TYPE_CHECKING:
    from keyhouse.app import Services

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def ip_of(request: Request) -> str | None:
    return client_ip(request.scope, services(request).settings.trusted_proxies)


@dataclass(frozen=True)
class Actor:
    """Who is calling the management API, and how."""

    member_id: str
    email: str
    is_admin: bool
    status: str
    language: str
    via: Literal["session", "token"]
    #: The session's id (sessions only): "sign out" ends this one.
    session_id: str | None
    ip: str | None


def language_of(request: Request) -> str:
    """The member's language once known (set by ``optional_actor``), else the browser's."""
    chosen = getattr(request.state, "language", None)
    if chosen:
        return str(chosen)
    svc = services(request)
    return pick_language(
        request.headers.get("accept-language"), svc.settings.accounts.default_language
    )


async def optional_actor(request: Request) -> Actor | None:
    """The caller, if signed in or holding an admin token; None otherwise."""
    svc = services(request)
    ip = ip_of(request)
    key = presented_key(request)
    if key is not None:
        principal = await svc.auth.authenticate(key)
        if not principal.admin:
            raise PermissionDenied(
                "Only an admin token may call the management API with a bearer key; members "
                f"sign in instead ({principal.redacted} has no admin scope).",
                code="admin_token_required",
            )
        if not principal.ip_allowed(ip):
            raise PermissionDenied(
                f"The API key {principal.redacted} may not be used from this IP address.",
                code="ip_not_allowed",
            )
        async with svc.db.session() as session:
            from keyhouse.db.models import Member

            member = await session.get(Member, principal.member_id)
        if member is None or not member.is_admin or member.status != "active":
            raise PermissionDenied("This admin token's member is not an active administrator.")
        actor = Actor(
            member.id, member.email, True, member.status, member.language, "token", None, ip
        )
        request.state.language = actor.language
        return actor
    token = request.cookies.get(sessions.COOKIE)
    if not token:
        return None
    async with svc.db.session() as session, session.begin():
        found = await sessions.find_session(
            session, svc.clock, svc.ring, token, ttl=svc.settings.accounts.session_ttl
        )
    if found is None:
        raise Refused("session_expired", status=401)
    row, member = found
    if request.method not in SAFE_METHODS and not sessions.csrf_ok(
        svc.ring, token, request.headers.get(sessions.CSRF_HEADER)
    ):
        raise Refused("csrf_failed", status=403)
    actor = Actor(
        member.id,
        member.email,
        member.is_admin,
        member.status,
        member.language,
        "session",
        row.id,
        ip,
    )
    request.state.language = actor.language
    return actor


async def current_actor(
    actor: Annotated[Actor | None, Depends(optional_actor)],
) -> Actor:
    """Signed in (any account state: a flagged member must still see why)."""
    if actor is None:
        raise Refused("not_signed_in", status=401)
    return actor


async def admin_actor(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
    """An administrator whose own account is in good standing (a flagged or suspended
    administrator keeps a session to read why, not the powers)."""
    if not actor.is_admin or actor.status != "active":
        raise PermissionDenied(
            "You have insufficient permissions for this operation: administrators only.",
            code="admin_required",
        )
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
AdminActor = Annotated[Actor, Depends(admin_actor)]
OptionalActor = Annotated[Actor | None, Depends(optional_actor)]


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
    from keyhouse.api import (
        accounts,
        admin,
        credit,
        docs,
        member_keys,
        oidc_routes,
        playground,
        usage,
    )

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
