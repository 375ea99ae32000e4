"""What the management API's handlers depend on: the services, and who is calling.

Who is calling (``Actor``) comes from a session cookie (the dashboard) or from an admin token
(``Authorization: Bearer sk-…`` of a key with the admin scope, for scripts). With a session,
every state-changing request must carry the CSRF token in ``X-CSRF-Token``. Routers import
these from here; ``api/manage`` only assembles the routers into the ``/api`` app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends
from starlette.requests import Request

from keyhouse.accounts import sessions
from keyhouse.accounts.refusals import Refused
from keyhouse.api.http import client_ip, presented_key
from keyhouse.errors import PermissionDenied
from keyhouse.i18n import pick_language
from keyhouse.services import Services

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
