"""The API keys page (``/account/api-keys``): the table, the create dialog, the secret shown
once, edit and revoke — each a dialog that is also a plain page, so it works without script.

The handlers of ``api/member_keys`` do the work (the same checks, the same transaction, the
same refusals as ``/api/keys``); this module turns forms into their inputs and their answers
into pages. The secret is rendered into the one response that created it (``no-store``) and is
never kept anywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.api import member_keys
from keyhouse.billing import reports
from keyhouse.config import parse_networks
from keyhouse.errors import ConfigError, KeyhouseError
from keyhouse.keys.principal import ENDPOINTS
from keyhouse.web.auth import message_of
from keyhouse.web.base import (
    MAX_FORM_BYTES,
    CsrfFailed,
    Viewer,
    actor_of,
    check_csrf,
    page,
    redirect,
    services,
    viewer,
)
from keyhouse.web.i18n import gettext as _

EXPIRY_DAYS = ("30", "90", "365")
PERIODS = ("month", "day", "none")


async def fields_of(request: Request) -> dict[str, list[str]]:
    """The form, with repeated fields (checkboxes) kept as lists; CSRF checked."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise CsrfFailed
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, []).append(value)
    check_csrf(request, (fields.get("csrf") or [""])[-1])
    return fields


def one(fields: dict[str, list[str]], name: str) -> str:
    return (fields.get(name) or [""])[-1].strip()


class FormError(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


# ----------------------------------------------------------------------------- reading the form


def endpoint_labels() -> dict[str, str]:
    return {
        "models.read": _("List models"),
        "chat.completions": _("Chat completions"),
        "completions": _("Completions"),
        "embeddings": _("Embeddings"),
        "responses": _("Responses"),
        "usage.read": _("Read usage"),
    }


def parse_key_form(fields: dict[str, list[str]], now: datetime) -> dict[str, Any]:
    """The form as the body of ``POST /api/keys`` (checked here first, so the refusals are
    in the page's language and next to their field)."""
    name = one(fields, "name")
    if not name:
        raise FormError("name", _("Give the key a name."))
    permissions = one(fields, "permissions") or "all"
    if permissions not in ("all", "restricted", "read-only"):
        raise FormError("permissions", _("Choose the permissions."))
    body: dict[str, Any] = {"name": name[:200], "permissions": permissions}
    if permissions == "restricted":
        endpoints = [e for e in fields.get("endpoints", []) if e in ENDPOINTS]
        if not endpoints:
            raise FormError("endpoints", _("Choose at least one endpoint for a restricted key."))
        body["endpoints"] = endpoints
        models = [m for m in fields.get("models", []) if m]
        body["models"] = models or None
    else:
        body["endpoints"] = None
        body["models"] = None
    raw_ips = one(fields, "ip_allow")
    ips = [part for part in raw_ips.replace(",", " ").split() if part]
    if ips:
        try:
            parse_networks(ips)
        except ConfigError:
            raise FormError(
                "ip_allow", _("Enter IP addresses or ranges like 203.0.113.0/24.")
            ) from None
    body["ip_allow"] = ips or None
    body["expires_at"] = expiry(fields, now)
    amount = one(fields, "budget")
    if amount:
        try:
            value = Decimal(amount)
        except InvalidOperation:
            value = Decimal(-1)
        if not value.is_finite() or value <= 0:
            raise FormError("budget", _("Enter an amount like 5.00, or leave it empty."))
        period = one(fields, "budget_period") or "month"
        body["budget"] = {"period": period if period in PERIODS else "month", "hard": amount}
    else:
        body["budget"] = None
    return body


def expiry(fields: dict[str, list[str]], now: datetime) -> datetime | None:
    choice = one(fields, "expires") or "never"
    if choice == "never":
        return None
    if choice in EXPIRY_DAYS:
        return now + timedelta(days=int(choice))
    if choice == "date":
        try:
            day = datetime.strptime(one(fields, "expires_on"), "%Y-%m-%d").date()
        except ValueError:
            raise FormError("expires_on", _("Choose a date for the expiry.")) from None
        when = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
        if when <= now:
            raise FormError("expires_on", _("The expiry must be in the future."))
        return when
    return None


# ----------------------------------------------------------------------------- the page


async def spend_by_key(request: Request, member_id: str) -> dict[str, int]:
    """Each key's spend so far (the day roll-ups, as the usage reports read them)."""
    svc = services(request)
    now = svc.clock.now()
    async with svc.db.session() as session:
        rows = await reports.aggregate(
            session,
            period="day",
            lo=datetime(2000, 1, 1, tzinfo=UTC),
            hi=now + timedelta(days=1),
            by=["key"],
            member_id=member_id,
        )
    return {str(values[0]): totals.cost for values, totals in rows}


async def key_page(
    request: Request, current: Viewer, *, status: int = 200, **context: Any
) -> Response:
    svc = services(request)
    listed = await member_keys.list_keys(request, actor_of(request, current))  # type: ignore[arg-type]
    keys = sorted(listed.data, key=lambda k: (k.state != "active", -k.created_at.timestamp()))
    spend = await spend_by_key(request, current.member_id)
    models = [name for name, _spec in svc.catalog.names()]
    return await page(
        request,
        "keys/index.html",
        {
            "keys": keys,
            "spend": spend,
            "models": models,
            "endpoints": endpoint_labels(),
            "may_create": current.active,
            **context,
        },
        status=status,
    )


async def index(request: Request) -> Response:
    current = await viewer(request)
    return await key_page(request, current)


async def new_dialog(request: Request) -> Response:
    current = await viewer(request)
    return await key_page(request, current, dialog="create", values={})


async def create(request: Request) -> Response:
    fields = await fields_of(request)
    current = await viewer(request)
    svc = services(request)
    values = {name: list(v) for name, v in fields.items() if name != "csrf"}
    try:
        body = parse_key_form(fields, svc.clock.now())
        created = await member_keys.create_key(
            request,  # type: ignore[arg-type]
            member_keys.KeyCreate(**body),
            actor_of(request, current),
        )
    except FormError as exc:
        return await key_page(
            request,
            current,
            status=400,
            dialog="create",
            values=values,
            error=exc.message,
            param=exc.param,
        )
    except (KeyhouseError, ValidationError) as exc:
        message = message_of(exc) if isinstance(exc, KeyhouseError) else str(exc)
        code = exc.status if isinstance(exc, KeyhouseError) else 400
        return await key_page(
            request,
            current,
            status=code,
            dialog="create",
            values=values,
            error=message,
            param=getattr(exc, "param", None),
        )
    return await key_page(request, current, status=201, dialog="secret", created=created)


async def _own(request: Request, current: Viewer, key_id: str) -> member_keys.KeyOut:
    return await member_keys.get_key(request, key_id, actor_of(request, current))  # type: ignore[arg-type]


def keep_soft_limit(body: dict[str, Any], key: member_keys.KeyOut) -> None:
    """The form has no field for a budget's soft limit (an alert set through the API): an
    edit keeps it as it was."""
    soft = key.budget.soft if key.budget is not None else None
    if soft is None:
        return
    if body.get("budget") is None:
        body["budget"] = {"period": key.budget.period, "hard": None}  # type: ignore[union-attr]
    body["budget"]["soft"] = soft


def values_of(key: member_keys.KeyOut) -> dict[str, list[str]]:
    """An existing key as the edit form's values."""
    budget = key.budget
    return {
        "name": [key.name],
        "permissions": [key.permissions],
        "endpoints": list(key.endpoints or []),
        "models": list(key.models or []),
        "ip_allow": [" ".join(key.ip_allow or [])],
        "expires": ["keep" if key.expires_at else "never"],
        "budget": [budget.hard or "" if budget else ""],
        "budget_period": [budget.period if budget else "month"],
    }


async def edit_dialog(request: Request) -> Response:
    current = await viewer(request)
    try:
        key = await _own(request, current, request.path_params["key_id"])
    except KeyhouseError:
        return redirect(request, "/account/api-keys")
    return await key_page(request, current, dialog="edit", key=key, values=values_of(key))


async def edit(request: Request) -> Response:
    fields = await fields_of(request)
    current = await viewer(request)
    svc = services(request)
    key_id = request.path_params["key_id"]
    try:
        key = await _own(request, current, key_id)
    except KeyhouseError:
        return redirect(request, "/account/api-keys")
    values = {name: list(v) for name, v in fields.items() if name != "csrf"}
    try:
        body = parse_key_form(fields, svc.clock.now())
        if one(fields, "expires") == "keep":
            body.pop("expires_at")
        keep_soft_limit(body, key)
        await member_keys.update_key(
            request,  # type: ignore[arg-type]
            key_id,
            member_keys.KeyUpdate(**body),
            actor_of(request, current),
        )
    except FormError as exc:
        return await key_page(
            request,
            current,
            status=400,
            dialog="edit",
            key=key,
            values=values,
            error=exc.message,
            param=exc.param,
        )
    except (KeyhouseError, ValidationError) as exc:
        message = message_of(exc) if isinstance(exc, KeyhouseError) else str(exc)
        return await key_page(
            request,
            current,
            status=400,
            dialog="edit",
            key=key,
            values=values,
            error=message,
            param=getattr(exc, "param", None),
        )
    return redirect(request, "/account/api-keys?done=saved")


async def revoke_dialog(request: Request) -> Response:
    current = await viewer(request)
    try:
        key = await _own(request, current, request.path_params["key_id"])
    except KeyhouseError:
        return redirect(request, "/account/api-keys")
    return await key_page(request, current, dialog="revoke", key=key)


async def revoke(request: Request) -> Response:
    await fields_of(request)
    current = await viewer(request)
    try:
        await member_keys.revoke_key(
            request,  # type: ignore[arg-type]
            request.path_params["key_id"],
            actor_of(request, current),
        )
    except KeyhouseError:
        return redirect(request, "/account/api-keys")
    return redirect(request, "/account/api-keys?done=revoked")


routes = [
    Route("/account/api-keys", index, methods=["GET"]),
    Route("/account/api-keys", create, methods=["POST"]),
    Route("/account/api-keys/new", new_dialog, methods=["GET"]),
    Route("/account/api-keys/{key_id}/edit", edit_dialog, methods=["GET"]),
    Route("/account/api-keys/{key_id}/edit", edit, methods=["POST"]),
    Route("/account/api-keys/{key_id}/revoke", revoke_dialog, methods=["GET"]),
    Route("/account/api-keys/{key_id}/revoke", revoke, methods=["POST"]),
]
