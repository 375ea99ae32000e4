"""Usage (``/account/usage``) and limits (``/account/limits``).

Usage: cost, tokens and requests per day over a chosen range, split by model or by key, as
server-drawn SVG charts (``web/charts``) each with its table; totals; CSV export through
``/api/usage`` (which takes the session). Everything is read from the day roll-ups by
``billing.reports`` — the same code as ``/api/usage`` — so a member's 90 days is a few hundred
rows whatever the traffic was.

Limits: the member's tier limits with how much of each is in use right now (the limiter is
asked, taking nothing), the tier's per-model limits, the member's budget and what this
period has spent, and the balance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from babel.dates import format_skeleton
from babel.numbers import format_decimal
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.billing import reports
from keyhouse.billing.money import MICRO
from keyhouse.config import LimitSet
from keyhouse.errors import InvalidRequest
from keyhouse.keys import store
from keyhouse.limits.policy import day_bounds, rules_of
from keyhouse.limits.rules import US
from keyhouse.web import charts, i18n
from keyhouse.web.base import Viewer, page, services, viewer
from keyhouse.web.i18n import gettext as _

#: The range picker's presets, in days (today included).
PRESETS = (7, 30, 90)
DEFAULT_DAYS = 30
MAX_DAYS = 366
SPLITS = ("model", "key")


@dataclass(frozen=True)
class Range:
    start: date
    end: date
    error: str | None = None

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def parse_range(query: dict[str, str], today: date) -> Range:
    """``start``/``end`` (both included) or ``days`` (a preset); the last 30 days by default.
    A wrong range falls back to the default with a message rather than failing the page."""
    default = Range(today - timedelta(DEFAULT_DAYS - 1), today)
    if query.get("days", "").isdigit() and not query.get("start"):
        days = min(max(int(query["days"]), 1), MAX_DAYS)
        return Range(today - timedelta(days - 1), today)
    if not query.get("start") and not query.get("end"):
        return default
    try:
        end = date.fromisoformat(query["end"]) if query.get("end") else today
        start = date.fromisoformat(query["start"]) if query.get("start") else end - timedelta(29)
        reports.check_range(start, end, MAX_DAYS)
    except (ValueError, InvalidRequest):
        return Range(
            default.start,
            default.end,
            _("That range cannot be shown (at most 366 days, the start before the end)."),
        )
    return Range(start, end)


def day_label(day: date) -> str:
    return format_skeleton("MMMd", day, locale=i18n.locale())


def memo(format: Callable[[Any], str]) -> Callable[[Any], str]:
    """``format``, remembering its answers for one page (the same days and amounts come up
    in the charts, their tips and their tables; Babel's formatting is the page's main cost)."""
    seen: dict[Any, str] = {}

    def remembered(value: Any) -> str:
        text = seen.get(value)
        if text is None:
            text = seen[value] = format(value)
        return text

    return remembered


def token_label(value: int) -> str:
    return i18n.number(value)


def money_axis(micros: int) -> str:
    """An amount for the cost axis: the number alone (the currency is in the title)."""
    return format_decimal(Decimal(micros) / MICRO, format="#,##0.######", locale=i18n.locale())


def currency_name(currency: str) -> str:
    return _("credits") if currency == "credits" else currency


async def usage_view(request: Request, current: Viewer) -> dict[str, Any]:
    """Everything the usage page shows."""
    svc = services(request)
    timezone = svc.settings.timezone
    today = reports.today(svc.clock.now(), timezone)
    query = dict(request.query_params)
    chosen = parse_range(query, today)
    split = query.get("by") if query.get("by") in SPLITS else "model"
    lo, hi = reports.day_bounds(chosen.start, chosen.end, timezone)
    async with svc.db.session() as session:
        rows = await reports.aggregate(
            session, period="day", lo=lo, hi=hi, by=["bucket", split], member_id=current.member_id
        )
        keys = await store.list_keys(session, current.member_id) if split == "key" else []
    days = reports.days(chosen.start, chosen.end)
    metrics: dict[str, dict[str, dict[date, int]]] = {
        "cost": defaultdict(dict),
        "tokens": defaultdict(dict),
        "requests": defaultdict(dict),
    }
    total = reports.Totals()
    for (bucket, group), sums in rows:
        day = reports.local_day(bucket, timezone)
        metrics["cost"][group][day] = metrics["cost"][group].get(day, 0) + sums.cost
        tokens = sums.prompt_tokens + sums.completion_tokens
        metrics["tokens"][group][day] = metrics["tokens"][group].get(day, 0) + tokens
        metrics["requests"][group][day] = metrics["requests"][group].get(day, 0) + sums.requests
        total = total + sums
    labels = {key.id: f"{key.name} ({key.redacted})" for key in keys}
    other = _("Other")
    titles = {
        "cost": _("Cost per day (%(currency)s)")
        % {"currency": currency_name(svc.settings.currency)},
        "tokens": _("Tokens per day"),
        "requests": _("Requests per day"),
    }
    number = memo(i18n.number)
    formats = {"cost": memo(i18n.money), "tokens": number, "requests": number}
    axes = {"cost": money_axis, "tokens": number, "requests": number}
    days_shown = memo(day_label)
    day_date = memo(i18n.date)
    shown = []
    for name in ("cost", "tokens", "requests"):
        chart = charts.build(days, metrics[name], labels, other)
        fmt = formats[name]
        table = [
            (day_date(day), [fmt(s.values[i]) for s in chart.series], fmt(chart.totals[i]))
            for i, day in enumerate(chart.days)
            if chart.totals[i]
        ]
        shown.append(
            {
                "table": table,
                "legend": [(s.css, s.label, fmt(s.total)) for s in chart.series],
                "name": name,
                "title": titles[name],
                "chart": chart,
                "svg": charts.svg(
                    chart,
                    title=titles[name],
                    value_label=axes[name],
                    tip_label=formats[name],
                    day_label=days_shown,
                    chart_id=f"chart-{name}",
                ),
                "format": formats[name],
            }
        )
    base = {"start": chosen.start.isoformat(), "end": chosen.end.isoformat()}
    return {
        "range": chosen,
        "split": split,
        "presets": PRESETS,
        "charts": shown,
        "total": total,
        "csv": {
            group: "/api/usage?" + urlencode({**base, "group_by": group, "format": "csv"})
            for group in ("day", "model", "key")
        },
        "split_links": {by: "/account/usage?" + urlencode({**base, "by": by}) for by in SPLITS},
        "today": today,
    }


async def usage_page(request: Request) -> Response:
    current = await viewer(request)
    return await page(request, "usage/index.html", await usage_view(request, current))


# ----------------------------------------------------------------------------- limits


LIMIT_NAMES = ("rpm", "tpm", "rpd", "max_parallel")


def limit_titles() -> dict[str, str]:
    return {
        "rpm": _("Requests per minute"),
        "tpm": _("Tokens per minute"),
        "rpd": _("Requests per day"),
        "max_parallel": _("Requests at the same time"),
    }


def reset_text(micros: int) -> str:
    seconds = max(0, round(micros / US))
    if seconds < 60:
        return _("%(n)s s") % {"n": seconds}
    if seconds < 3600:
        return _("%(n)s min") % {"n": round(seconds / 60)}
    return _("%(n)s h") % {"n": i18n.number(round(seconds / 3600, 1))}


async def limits_view(request: Request, current: Viewer) -> dict[str, Any]:
    """The tier's limits and how close the member is to each, the budget, the balance."""
    svc = services(request)
    settings = svc.settings
    now = svc.clock.now()
    async with svc.db.session() as session:
        from keyhouse.db.models import Member

        member = await session.get(Member, current.member_id)
        assert member is not None
        tier_name = member.tier if member.tier in settings.tiers else settings.default_tier
        tier = settings.tiers[tier_name]
        budget_spent = None
        if member.budget_hard is not None or member.budget_soft is not None:
            budget_spent = await period_spent(session, svc, member.id, member.budget_period, now)
        balance = await reports.balance_report(session, member.id, now)
    day = day_bounds(now, settings.timezone)
    rules = rules_of(
        f"m:{member.id}", tier.limits, "in your account", day, int(settings.slot_ttl * US)
    )
    states = await svc.limiter.standing(rules)
    titles = limit_titles()
    rows = []
    for index, rule in enumerate(rules):
        name = LIMIT_NAMES[["rpm", "tpm", "rpd", "par"].index(rule.key.rsplit(":", 1)[1])]
        state = states[index] if states else None
        used = min(rule.limit, state.used) if state else None
        rows.append(
            {
                "name": name,
                "title": titles[name],
                "limit": rule.limit,
                "used": used,
                "percent": round(100 * used / rule.limit) if used is not None else None,
                "reset": reset_text(state.reset_us) if state and state.used else None,
            }
        )
    per_model = [
        {"model": model, "limits": limits_list(limits, titles)}
        for model, limits in sorted(tier.models.items())
    ]
    budget = None
    if budget_spent is not None:
        hard = member.budget_hard
        budget = {
            "period": member.budget_period,
            "hard": hard,
            "soft": member.budget_soft,
            "spent": budget_spent,
            "percent": min(100, round(100 * budget_spent / hard)) if hard else None,
        }
    return {
        "tier": tier_name,
        "limits": rows,
        "limits_unknown": states is None,
        "per_model": per_model,
        "budget": budget,
        "balance": balance.balance,
        "timezone": settings.timezone,
    }


def limits_list(limits: LimitSet, titles: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"title": titles[name], "limit": getattr(limits, name)}
        for name in LIMIT_NAMES
        if getattr(limits, name) is not None
    ]


async def period_spent(
    session: Any, svc: Any, member_id: str, period: str | None, now: datetime
) -> int:
    """What the member spent in the budget's current period (day or month in the
    organisation's timezone; for good without one), from the day roll-ups."""
    if period not in ("day", "month"):
        return await reports.spent(session, member_id)
    today = reports.today(now, svc.settings.timezone)
    first = today if period == "day" else today.replace(day=1)
    lo, hi = reports.day_bounds(first, today, svc.settings.timezone)
    rows = await reports.aggregate(session, period="day", lo=lo, hi=hi, by=[], member_id=member_id)
    return sum(totals.cost for _, totals in rows)


async def limits_page(request: Request) -> Response:
    current = await viewer(request)
    return await page(request, "usage/limits.html", await limits_view(request, current))


routes = [
    Route("/account/usage", usage_page, methods=["GET"]),
    Route("/account/limits", limits_page, methods=["GET"]),
]
