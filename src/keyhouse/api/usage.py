"""Usage and balance over HTTP: Keyhouse's own JSON (``/api/…``) and the shapes existing tools
read (OpenAI's legacy ``/v1/dashboard/billing/…`` and its organisation usage and costs).

Every endpoint is authenticated by the caller's API key under the ``usage.read`` scope, which
read-only keys have; ``/api/usage`` and ``/api/billing/balance`` (and ``/api/admin/usage``)
also take the dashboard's session cookie, so a signed-in member reads their own figures
without making a key. Members read their own figures; administrators (``principal.is_admin``)
may name another member with ``?member=EMAIL|ID`` or read everyone's. Everything is read from
the roll-ups (``billing.reports``), days in the organisation's timezone. Money is shown twice:
as a decimal string in the currency (``"4.95"``) and as integer micro-units (``…_micros``).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from keyhouse.accounts import sessions
from keyhouse.accounts.members import find_member
from keyhouse.api.deps import optional_actor, services
from keyhouse.api.http import attachment, presented_key, request_id
from keyhouse.api.pipeline import Exchange, authenticate, route
from keyhouse.billing import reports
from keyhouse.billing.money import MICRO, show
from keyhouse.db.models import Member
from keyhouse.errors import InvalidRequest, NotFound, PermissionDenied
from keyhouse.keys.principal import USAGE_READ, Principal

if TYPE_CHECKING:
    from keyhouse.services import Services

#: The longest range one request may cover, in days.
MAX_DAYS = 366


def json(body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def unix(value: datetime) -> int:
    return int(value.timestamp())


def money(micros: int) -> str:
    return show(micros)


# ----------------------------------------------------------------------------- who


class Reader(Protocol):
    """Who reads figures: a key's ``Principal``, or a signed-in member (``SessionReader``)."""

    @property
    def member_id(self) -> str: ...
    @property
    def is_admin(self) -> bool: ...
    @property
    def redacted(self) -> str: ...


@dataclass(frozen=True)
class SessionReader:
    """A member signed in to the dashboard, reading with the session cookie alone."""

    member_id: str
    is_admin: bool
    redacted: str = "the signed-in member"


async def reader(ex: Exchange) -> Principal:
    """The caller's key, allowed to read usage (read-only keys are)."""
    return await authenticate(ex, USAGE_READ)


async def key_or_session_reader(request: Request) -> Reader:
    """The caller's key when one is presented; else the dashboard's session cookie (the
    member reads their own figures; an administrator in good standing, anyone's); else the
    usual "no API key" refusal."""
    if presented_key(request) is None and request.cookies.get(sessions.COOKIE):
        actor = await optional_actor(request)  # an expired session is refused here
        if actor is not None:
            return SessionReader(actor.member_id, actor.is_admin and actor.status == "active")
    return await reader(Exchange(request, services(request), request_id(request)))


def require_admin(principal: Reader) -> None:
    if not principal.is_admin:
        raise PermissionDenied(
            "You have insufficient permissions for this operation: only an administrator's "
            f"key may read every member's usage, and {principal.redacted} is not one.",
        )


async def subject(session: AsyncSession, principal: Reader, wanted: str | None) -> Member:
    """The member whose figures to show: the caller's own, or (administrators only) the one
    named by ``?member=``. Members naming anyone else are refused, whether or not they exist."""
    if not wanted or wanted == principal.member_id:
        member = await session.get(Member, principal.member_id)
        if member is None:
            raise NotFound("no such member", code="member_not_found")
        return member
    try:
        member = await find_member(session, wanted)
    except (NotFound, InvalidRequest):
        if principal.is_admin:
            raise NotFound(
                f"no member {wanted!r}", param="member", code="member_not_found"
            ) from None
        member = None
    if member is None or (member.id != principal.member_id and not principal.is_admin):
        raise PermissionDenied(
            "You have insufficient permissions for this operation: a member's key may read "
            "only that member's usage.",
            param="member",
        )
    return member


# ----------------------------------------------------------------------------- parameters


def parse_date(value: str, name: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{name}': expected a date as YYYY-MM-DD, got {value!r}.",
            param=name,
            code="invalid_value",
        ) from None


def date_range(request: Request, svc: Services) -> tuple[date, date]:
    """``start`` and ``end`` (both included; default: the last 30 days, today included)."""
    query = request.query_params
    end = (
        parse_date(query["end"], "end")
        if query.get("end")
        else reports.today(svc.clock.now(), svc.settings.timezone)
    )
    start = parse_date(query["start"], "start") if query.get("start") else end - timedelta(29)
    reports.check_range(start, end, MAX_DAYS)
    return start, end


def many(request: Request, name: str) -> list[str] | None:
    """A list parameter, however the client sent it: repeated, with ``[]``, or with commas."""
    values = [*request.query_params.getlist(name), *request.query_params.getlist(name + "[]")]
    items = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return items or None


#: Unix times a date can hold (years 1970 to 9999): past them, conversions overflow.
MAX_UNIX_TIME = 253_402_300_799


def integer(
    request: Request, name: str, default: int | None = None, most: int = MAX_UNIX_TIME
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{name}': expected an integer, got {raw!r}.", param=name, code="invalid_value"
        ) from None
    if not 0 <= value <= most:
        raise InvalidRequest(
            f"Invalid '{name}': must be between 0 and {most}.", param=name, code="invalid_value"
        )
    return value


# ----------------------------------------------------------------------------- /api/billing


async def balance(request: Request) -> Response:
    """``GET /api/billing/balance``: the balance, the lots and when they expire."""
    svc = services(request)
    principal = await key_or_session_reader(request)
    now = svc.clock.now()
    async with svc.db.session() as session:
        member = await subject(session, principal, request.query_params.get("member"))
        view = await reports.balance_report(session, member.id, now)
    return json(
        {
            "object": "billing.balance",
            "member_id": member.id,
            "email": member.email,
            "currency": svc.settings.currency,
            "balance": money(view.balance),
            "balance_micros": view.balance,
            "spent": money(view.spent),
            "spent_micros": view.spent,
            "next_expiry": iso(view.next_expiry),
            "lots": [
                {
                    "id": lot.id,
                    "kind": lot.kind,
                    "amount": money(lot.amount),
                    "amount_micros": lot.amount,
                    "remaining": money(lot.remaining),
                    "remaining_micros": lot.remaining,
                    "expires_at": iso(lot.expires_at),
                    "expired": lot.expired,
                    "created_at": iso(lot.created_at),
                    "note": lot.note,
                }
                for lot in view.lots
            ],
        }
    )


# ----------------------------------------------------------------------------- /api/usage


def report_response(
    request: Request, svc: Services, report: reports.Report, member: Member | None
) -> Response:
    currency = svc.settings.currency
    if request.query_params.get("format", "json") == "csv":
        who = member.email.split("@")[0] if member is not None else "all"
        name = f"usage-{who}-{report.start}-{report.end}-by-{report.group_by}.csv"
        return Response(
            reports.to_csv(report, currency),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": attachment(name)},
        )
    if request.query_params.get("format", "json") != "json":
        raise InvalidRequest("format must be json or csv", param="format", code="invalid_value")
    return json(
        {
            "object": "usage.report",
            "member": {"id": member.id, "email": member.email} if member is not None else None,
            "currency": currency,
            "timezone": report.timezone,
            "start": report.start.isoformat(),
            "end": report.end.isoformat(),
            "group_by": report.group_by,
            "data": [
                reports.line_dict(line, report.group_by, report.margins) for line in report.lines
            ],
            "total": reports.totals_dict(report.total, report.margins),
        }
    )


async def usage(request: Request) -> Response:
    """``GET /api/usage?start=&end=&group_by=day|model|key[&member=][&format=csv]``."""
    svc = services(request)
    principal = await key_or_session_reader(request)
    start, end = date_range(request, svc)
    group_by = request.query_params.get("group_by", "day")
    reports.check_group(group_by, across_members=False)
    async with svc.db.session() as session:
        member = await subject(session, principal, request.query_params.get("member"))
        report = await reports.usage_report(
            session,
            start=start,
            end=end,
            timezone=svc.settings.timezone,
            group_by=group_by,
            member_id=member.id,
        )
    return report_response(request, svc, report, member)


async def admin_usage(request: Request) -> Response:
    """``GET /api/admin/usage?start=&end=&group_by=day|model|key|member|deployment[&member=]``:
    every member's usage together (or one member's), with what it cost the organisation (the
    margin) and what was charged above holds (overshoot)."""
    svc = services(request)
    principal = await key_or_session_reader(request)
    require_admin(principal)
    start, end = date_range(request, svc)
    group_by = request.query_params.get("group_by", "member")
    reports.check_group(group_by, across_members=True)
    async with svc.db.session() as session:
        wanted = request.query_params.get("member")
        member = await subject(session, principal, wanted) if wanted else None
        report = await reports.usage_report(
            session,
            start=start,
            end=end,
            timezone=svc.settings.timezone,
            group_by=group_by,
            member_id=member.id if member is not None else None,
            margins=True,
        )
    return report_response(request, svc, report, member)


# ----------------------------------------------------------------------------- legacy dashboard


async def dashboard_subscription(ex: Exchange) -> Response:
    """``GET /v1/dashboard/billing/subscription``: OpenAI's legacy object, as tools read it.
    ``hard_limit_usd`` (in the organisation's currency, whatever the name says) is everything
    the member could ever spend — the balance plus what was spent — so that
    ``hard_limit_usd - total_usage / 100`` over all usage is the balance left."""
    svc = ex.svc
    principal = await reader(ex)
    async with svc.db.session() as session:
        member = await subject(session, principal, None)
        view = await reports.balance_report(session, member.id, svc.clock.now())
    hard = (view.balance + view.spent) / MICRO
    soft = member.budget_soft / MICRO if member.budget_soft is not None else hard
    until = view.access_until
    tier = member.tier or svc.settings.default_tier
    return json(
        {
            "object": "billing_subscription",
            "has_payment_method": False,
            "canceled": False,
            "canceled_at": None,
            "delinquent": None,
            "access_until": unix(until) if until is not None else 0,
            "soft_limit_usd": soft,
            "hard_limit_usd": hard,
            "system_hard_limit_usd": hard,
            "plan": {"title": f"Keyhouse credit ({tier})", "id": tier},
            "currency": svc.settings.currency,
            "account_name": member.name or member.email,
            "po_number": None,
            "billing_email": member.email,
            "tax_ids": None,
            "billing_address": None,
            "business_address": None,
        }
    )


async def dashboard_usage(ex: Exchange) -> Response:
    """``GET /v1/dashboard/billing/usage?start_date=&end_date=``: OpenAI's legacy daily costs,
    in hundredths of the currency ("cents"); ``end_date`` is excluded, as at OpenAI."""
    request, svc = ex.request, ex.svc
    principal = await reader(ex)
    query = request.query_params
    for name in ("start_date", "end_date"):
        if not query.get(name):
            raise InvalidRequest(f"Missing query parameter '{name}'.", param=name)
    start = parse_date(query["start_date"], "start_date")
    end = parse_date(query["end_date"], "end_date") - timedelta(days=1)
    reports.check_range(start, end, MAX_DAYS)
    timezone = svc.settings.timezone
    lo, hi = reports.day_bounds(start, end, timezone)
    async with svc.db.session() as session:
        rows = await reports.aggregate(
            session,
            period="day",
            lo=lo,
            hi=hi,
            by=["bucket", "model"],
            member_id=principal.member_id,
        )
    per_day: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (bucket, model), totals in rows:
        per_day[reports.local_day(bucket, timezone)][model] += totals.cost
    total = sum(totals.cost for _, totals in rows)
    return json(
        {
            "object": "list",
            "daily_costs": [
                {
                    "timestamp": float(unix(reports.local_midnight(day, timezone))),
                    "line_items": [
                        {"name": model, "cost": cost / 10_000}
                        for model, cost in sorted(per_day.get(day, {}).items())
                    ],
                }
                for day in reports.days(start, end)
            ],
            "total_usage": total / 10_000,
            "currency": svc.settings.currency,
        }
    )


# ----------------------------------------------------------------------------- organisation


WIDTHS = {"1d": "day", "1h": "hour"}
#: bucket_width → (default limit, most allowed), as OpenAI's.
USAGE_LIMITS = {"1d": (7, 31), "1h": (24, 168)}
COSTS_LIMITS = {"1d": (7, 180)}


def bucket_starts(first: datetime, width: str, count: int, timezone: str) -> list[datetime]:
    """``count + 1`` consecutive bucket boundaries from the bucket holding ``first``: days at
    the organisation's midnights, or hours."""
    local = first.astimezone(reports.zone(timezone))
    if width == "1d":
        day = local.date()
        return [reports.local_midnight(day + timedelta(days=n), timezone) for n in range(count + 1)]
    hour = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    return [hour + timedelta(hours=n) for n in range(count + 1)]


class Page:
    """The buckets one request answers: from ``start_time`` (or the ``page`` cursor) to
    ``end_time`` (default: now), at most ``limit`` of them."""

    def __init__(self, request: Request, svc: Services, limits: dict[str, tuple[int, int]]) -> None:
        query = request.query_params
        width = query.get("bucket_width") or "1d"
        if width not in limits:
            raise InvalidRequest(
                f"Invalid 'bucket_width': {width!r} is not supported here "
                f"(use {' or '.join(limits)}).",
                param="bucket_width",
                code="invalid_value",
            )
        start_time = integer(request, "start_time")
        if start_time is None:
            raise InvalidRequest("Missing query parameter 'start_time'.", param="start_time")
        now = unix(svc.clock.now())
        end_time = integer(request, "end_time", now)
        assert end_time is not None
        default, most = limits[width]
        limit = integer(request, "limit", default)
        assert limit is not None
        if not 1 <= limit <= most:
            raise InvalidRequest(
                f"Invalid 'limit': must be between 1 and {most} for bucket_width {width}.",
                param="limit",
                code="invalid_value",
            )
        if end_time <= start_time:
            raise InvalidRequest(
                "Invalid 'end_time': must be after 'start_time'.", param="end_time"
            )
        first = start_time
        cursor = query.get("page")
        if cursor:
            try:
                first = int(cursor.removeprefix("page_"))
            except ValueError:
                first = -1
            if not start_time <= first < end_time:
                raise InvalidRequest("Invalid 'page' cursor.", param="page")
        timezone = svc.settings.timezone
        bounds = bucket_starts(datetime.fromtimestamp(first, UTC), width, limit, timezone)
        stop = datetime.fromtimestamp(end_time, UTC)
        kept = [b for b in bounds[:-1] if b < stop]
        self.width = width
        self.period = WIDTHS[width]
        self.starts = kept
        self.ends = bounds[1 : len(kept) + 1]
        nxt = bounds[len(kept)]
        self.has_more = len(kept) == limit and nxt < stop
        self.next_page = f"page_{unix(nxt)}" if self.has_more else None

    @property
    def lo(self) -> datetime:
        return self.starts[0]

    @property
    def hi(self) -> datetime:
        return self.ends[-1]

    def index(self, bucket: datetime) -> int | None:
        """Which of the page's buckets a roll-up's bucket falls in."""
        at = bisect.bisect_right(self.starts, bucket) - 1
        return at if at >= 0 and bucket < self.ends[at] else None

    def body(
        self,
        rows: list[tuple[tuple[Any, ...], reports.Totals]],
        result: Callable[[tuple[Any, ...], reports.Totals], dict[str, Any]],
        dims: int,
    ) -> dict[str, Any]:
        """OpenAI's ``page`` of ``bucket``s, one result per group in each bucket."""
        grouped: list[dict[tuple[Any, ...], reports.Totals]] = [{} for _ in self.starts]
        for values, totals in rows:
            at = self.index(values[0])
            if at is None:
                continue
            key = tuple(values[1 : 1 + dims])
            grouped[at][key] = grouped[at].get(key, reports.Totals()) + totals
        return {
            "object": "page",
            "data": [
                {
                    "object": "bucket",
                    "start_time": unix(start),
                    "end_time": unix(end),
                    "results": [result(key, totals) for key, totals in sorted(groups.items())],
                }
                for start, end, groups in zip(self.starts, self.ends, grouped, strict=True)
            ],
            "has_more": self.has_more,
            "next_page": self.next_page,
        }


def group_fields(request: Request, allowed: dict[str, str | None]) -> list[str]:
    """The ``group_by`` fields asked for, in OpenAI's names, in a fixed order."""
    asked = many(request, "group_by") or []
    unknown = [g for g in asked if g not in allowed]
    if unknown:
        raise InvalidRequest(
            f"Invalid 'group_by': {', '.join(unknown)} (use {', '.join(allowed)}).",
            param="group_by",
            code="invalid_value",
        )
    return [name for name in allowed if name in asked]


def embedding_models(svc: Services) -> set[str]:
    return {spec.name for spec in svc.settings.models if spec.endpoints == {"embeddings"}}


COST_GROUPS: dict[str, str | None] = {"project_id": None, "line_item": "model", "api_key_id": "key"}


async def organization_costs(ex: Exchange) -> Response:
    """``GET /v1/organization/costs``: cost per day, optionally per line item (model) and key."""
    request, svc = ex.request, ex.svc
    principal = await reader(ex)
    require_admin(principal)
    page = Page(request, svc, COSTS_LIMITS)
    fields = group_fields(request, COST_GROUPS)
    dims = [d for d in (COST_GROUPS[f] for f in fields) if d]
    currency = svc.settings.currency.lower()
    async with svc.db.session() as session:
        rows = await reports.aggregate(
            session,
            period=page.period,
            lo=page.lo,
            hi=page.hi,
            by=["bucket", *dims],
            key_ids=many(request, "api_key_ids"),
        )

    def result(key: tuple[Any, ...], totals: reports.Totals) -> dict[str, Any]:
        named = dict(zip(dims, key, strict=True))
        return {
            "object": "organization.costs.result",
            "amount": {"value": totals.cost / MICRO, "currency": currency},
            "line_item": named.get("model"),
            "project_id": None,
            "api_key_id": named.get("key"),
            "quantity": None,
            "quantity_unit": None,
        }

    return json(page.body(rows, result, len(dims)))


USAGE_GROUPS: dict[str, str | None] = {
    "project_id": None,
    "user_id": "member",
    "api_key_id": "key",
    "model": "model",
    "batch": None,
    "service_tier": None,
}


async def organization_usage(ex: Exchange, kind: str) -> Response:
    request, svc = ex.request, ex.svc
    principal = await reader(ex)
    require_admin(principal)
    page = Page(request, svc, USAGE_LIMITS)
    fields = group_fields(request, USAGE_GROUPS)
    dims = [d for d in (USAGE_GROUPS[f] for f in fields) if d]
    embedding = embedding_models(svc)
    wanted = many(request, "models")
    if kind == "embeddings":
        models = [m for m in wanted if m in embedding] if wanted else sorted(embedding)
    else:
        models = [m for m in wanted if m not in embedding] if wanted else None
    async with svc.db.session() as session:
        rows = (
            []
            if models == []
            else await reports.aggregate(
                session,
                period=page.period,
                lo=page.lo,
                hi=page.hi,
                by=["bucket", *dims],
                models=models,
                exclude_models=embedding if kind == "completions" else None,
                key_ids=many(request, "api_key_ids"),
                member_ids=many(request, "user_ids"),
            )
        )

    def result(key: tuple[Any, ...], totals: reports.Totals) -> dict[str, Any]:
        named = dict(zip(dims, key, strict=True))
        grouped = {
            "project_id": None,
            "user_id": named.get("member"),
            "api_key_id": named.get("key"),
            "model": named.get("model"),
        }
        if kind == "embeddings":
            return {
                "object": "organization.usage.embeddings.result",
                "input_tokens": totals.prompt_tokens,
                "num_model_requests": totals.requests,
                **grouped,
            }
        return {
            "object": "organization.usage.completions.result",
            "input_tokens": totals.prompt_tokens,
            "input_cached_tokens": totals.cached_tokens,
            "input_uncached_tokens": totals.prompt_tokens - totals.cached_tokens,
            "output_tokens": totals.completion_tokens,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "num_model_requests": totals.requests,
            **grouped,
            "batch": None,
            "service_tier": None,
        }

    return json(page.body(rows, result, len(dims)))


async def organization_usage_completions(ex: Exchange) -> Response:
    """``GET /v1/organization/usage/completions`` (chat and completions models)."""
    return await organization_usage(ex, "completions")


async def organization_usage_embeddings(ex: Exchange) -> Response:
    """``GET /v1/organization/usage/embeddings`` (embedding models)."""
    return await organization_usage(ex, "embeddings")


routes = [
    route("/v1/dashboard/billing/subscription", dashboard_subscription, "GET"),
    route("/v1/dashboard/billing/usage", dashboard_usage, "GET"),
    route("/v1/organization/costs", organization_costs, "GET"),
    route("/v1/organization/usage/completions", organization_usage_completions, "GET"),
    route("/v1/organization/usage/embeddings", organization_usage_embeddings, "GET"),
]


#: The ``/api`` side, documented in the management API's OpenAPI (``api/manage``).
api_router = APIRouter(tags=["usage"])
api_router.add_api_route("/billing/balance", balance, methods=["GET"])
api_router.add_api_route("/usage", usage, methods=["GET"])
api_router.add_api_route("/admin/usage", admin_usage, methods=["GET"])
