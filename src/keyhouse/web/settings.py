"""Account settings (``/settings``): name, language, password, the signed-in browsers (end one
or all) and closing the account — plain forms over ``accounts.flows``, as ``/api/me…`` uses."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.accounts import flows
from keyhouse.api.accounts import clear_session_cookies
from keyhouse.errors import KeyhouseError
from keyhouse.i18n import LANGUAGES
from keyhouse.web.auth import refusal
from keyhouse.web.base import LANG_COOKIE, form, ip_of, page, redirect, services, viewer
from keyhouse.web.i18n import gettext as _

NOTICES = ("saved", "password", "sessions", "session")


def device_of(user_agent: str | None) -> str:
    """A browser and system, roughly, from the User-Agent (for people to recognise)."""
    text = user_agent or ""
    browser = next(
        (
            name
            for token, name in (
                ("Edg/", "Edge"),
                ("Firefox/", "Firefox"),
                ("Chrome/", "Chrome"),
                ("Chromium/", "Chromium"),
                ("Safari/", "Safari"),
                ("curl/", "curl"),
                ("python-httpx/", "Python (httpx)"),
            )
            if token in text
        ),
        _("Unknown browser"),
    )
    system = next(
        (
            name
            for token, name in (
                ("Android", "Android"),
                ("iPhone", "iOS"),
                ("iPad", "iPadOS"),
                ("Windows", "Windows"),
                ("Mac OS X", "macOS"),
                ("Linux", "Linux"),
            )
            if token in text
        ),
        "",
    )
    return f"{browser} · {system}" if system else browser


async def settings_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    current = await viewer(request)
    svc = services(request)
    member = await flows.current_member(svc, current.member_id)
    rows = await flows.list_sessions(svc, current.member_id)
    browsers = [
        {
            "id": row.id,
            "device": device_of(row.user_agent),
            "ip": row.ip,
            "last_seen_at": row.last_seen_at,
            "created_at": row.created_at,
            "current": row.id == current.session_id,
        }
        for row in rows
    ]
    notice = request.query_params.get("done")
    return await page(
        request,
        "settings/index.html",
        {
            "member": member,
            "sessions": browsers,
            "has_password": member.password_hash is not None,
            "notice": notice if notice in NOTICES else None,
            "min_length": svc.settings.accounts.password_min_length,
            **context,
        },
        status=status,
    )


async def index(request: Request) -> Response:
    return await settings_page(request)


async def profile(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    name = fields.get("name", "").strip()
    if not name:
        return await settings_page(
            request, status=400, section="profile", param="name", error=_("Enter your name.")
        )
    try:
        await flows.update_profile(services(request), current.member_id, name=name)
    except KeyhouseError as exc:
        return await settings_page(request, status=exc.status, section="profile", **refusal(exc))
    return redirect(request, "/settings?done=saved")


async def language(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    chosen = fields.get("language", "")
    if chosen not in LANGUAGES:
        return redirect(request, "/settings")
    await flows.update_profile(services(request), current.member_id, language=chosen)
    response = redirect(request, "/settings?done=saved")
    response.set_cookie(
        LANG_COOKIE,
        chosen,
        max_age=365 * 86400,
        path="/",
        samesite="lax",
        httponly=True,
        secure=services(request).settings.public_url.startswith("https"),
    )
    return response


async def password(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    try:
        await flows.change_password(
            services(request),
            current.member_id,
            current=fields.get("current_password", ""),
            new=fields.get("new_password", ""),
            keep_session=current.session_id,
            ip=ip_of(request),
        )
    except KeyhouseError as exc:
        context = refusal(exc)
        if context["param"] in (None, "password"):
            context["param"] = "new_password" if exc.code == "weak_password" else context["param"]
        return await settings_page(request, status=exc.status, section="password", **context)
    return redirect(request, "/settings?done=password")


async def end_session(request: Request) -> Response:
    await form(request)
    current = await viewer(request)
    session_id = request.path_params["session_id"]
    await flows.end_own_session(services(request), current.member_id, session_id)
    if session_id == current.session_id:
        response = redirect(request, "/signin?notice=signed-out")
        clear_session_cookies(response, services(request).settings)
        return response
    return redirect(request, "/settings?done=session#sessions")


async def end_all(request: Request) -> Response:
    await form(request)
    current = await viewer(request)
    svc = services(request)
    await flows.signout_everywhere(svc, current.member_id)
    response = redirect(request, "/signin?notice=signed-out")
    clear_session_cookies(response, svc.settings)
    return response


async def close(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    svc = services(request)
    if fields.get("confirm", "").strip().lower() != current.email.lower():
        return await settings_page(
            request,
            status=400,
            section="close",
            param="confirm",
            error=_("Type your email address to confirm."),
        )
    try:
        await flows.delete_account(
            svc, current.member_id, password=fields.get("password"), ip=ip_of(request)
        )
    except KeyhouseError as exc:
        return await settings_page(request, status=exc.status, section="close", **refusal(exc))
    response = redirect(request, "/signin?notice=closed")
    clear_session_cookies(response, svc.settings)
    return response


routes = [
    Route("/settings", index, methods=["GET"]),
    Route("/settings/profile", profile, methods=["POST"]),
    Route("/settings/language", language, methods=["POST"]),
    Route("/settings/password", password, methods=["POST"]),
    Route("/settings/sessions/end-all", end_all, methods=["POST"]),
    Route("/settings/sessions/{session_id}/end", end_session, methods=["POST"]),
    Route("/settings/close", close, methods=["POST"]),
]
