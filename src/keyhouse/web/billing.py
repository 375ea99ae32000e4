"""Billing (``/account/billing``): the balance, the free credit and when it expires, every
grant (lot) with what is left of it, and a form to redeem a code.

The figures come from ``billing.reports.balance_report`` (as ``/api/billing/balance``); the
form calls the very handler of ``POST /api/billing/redeem`` (its throttle, its single
conditional claim), then shows its refusals in the page's language.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.api import credit
from keyhouse.billing import reports
from keyhouse.errors import KeyhouseError
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


def redeem_refusal(exc: KeyhouseError) -> str:
    """A refusal of the redeem handler, in the page's language (the throttle's is translated
    already; the code's own refusals are worded here)."""
    from keyhouse.accounts.refusals import Refused

    if isinstance(exc, Refused):
        from keyhouse.web.auth import message_of

        return message_of(exc)
    messages = {
        "invalid_code": _(
            "That is not a valid code. Check it for typing mistakes: codes look like "
            "KH-XXXX-XXXX-XXXX-XXXX."
        ),
        "code_not_found": _("There is no such code."),
        "code_expired": _("This code has expired."),
        "code_already_redeemed": _("This code has been redeemed already."),
        "code_unavailable": _("This code cannot be redeemed right now; try again."),
    }
    return messages.get(exc.code or "", exc.message)


async def billing_view(request: Request, current: Viewer) -> dict[str, Any]:
    svc = services(request)
    now = svc.clock.now()
    async with svc.db.session() as session:
        view = await reports.balance_report(session, current.member_id, now)
    lots = []
    for lot in view.lots:
        state = "expired" if lot.expired else ("used" if lot.remaining <= 0 else "active")
        lots.append({"lot": lot, "state": state, "detail": lot_detail(lot.kind, lot.note)})
    trial = [lot for lot in view.lots if lot.kind == "trial"]
    free_left = sum(lot.remaining for lot in trial if not lot.expired)
    free_expiry = min(
        (lot.expires_at for lot in trial if lot.expires_at and not lot.expired and lot.remaining),
        default=None,
    )
    return {
        "balance": view.balance,
        "spent": view.spent,
        "next_expiry": view.next_expiry,
        "lots": lots,
        "has_trial": bool(trial),
        "free_left": free_left,
        "free_expiry": free_expiry,
    }


CODE_TAIL = re.compile(r"KH-…-[0-9A-Z]{4}")


def lot_detail(kind: str, note: str | None) -> str | None:
    """What to show beside a lot's kind: an administrator's own note (grants, corrections),
    the last group of a redeemed code; the notes Keyhouse writes itself (in English) are
    said by the kind already."""
    if not note or kind == "trial":
        return None
    if kind == "code":
        found = CODE_TAIL.search(note)
        return found.group(0) if found else None
    return note


def kind_labels() -> dict[str, str]:
    return {
        "trial": _("Free trial credit"),
        "grant": _("Grant"),
        "code": _("Redeemed code"),
        "correction": _("Correction"),
    }


async def billing_page(request: Request) -> Response:
    current = await viewer(request)
    context = await billing_view(request, current)
    redeemed = request.query_params.get("redeemed")
    return await page(
        request,
        "billing/index.html",
        {**context, "kinds": kind_labels(), "redeemed": redeemed == "1", "code": ""},
    )


async def redeem(request: Request) -> Response:
    """The redeem form: ``/api``'s handler, a redirect on success (so a reload does not post
    again), the page with the refusal next to the field otherwise."""
    current = await viewer(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise CsrfFailed
    fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    check_csrf(request, fields.get("csrf"))
    code = fields.get("code", "").strip()
    error = None
    try:
        await credit.redeem(request, credit.RedeemIn(code=code), actor_of(request, current))  # type: ignore[arg-type]
    except KeyhouseError as exc:
        error = redeem_refusal(exc)
    except ValidationError:
        error = _("That is not a valid code.")
    if error is None:
        return redirect(request, "/account/billing?redeemed=1#redeem")
    context = await billing_view(request, current)
    return await page(
        request,
        "billing/index.html",
        {**context, "kinds": kind_labels(), "redeem_error": error, "code": code},
        status=400,
    )


routes = [
    Route("/account/billing", billing_page, methods=["GET"]),
    Route("/account/billing/redeem", redeem, methods=["POST"]),
]
