"""What every page of the member web app shares: the templates, the signed-in member, the
frame's context, CSRF for forms, the language and the security headers.

Pages read the same browser session as ``/api`` (``accounts.sessions``), call the same services
(``request.app.state.services``), and never reach the database by another path.

Forms carry a CSRF token: for a signed-in member, the session's own (``sessions.csrf_for``, the
one ``/api`` wants in ``X-CSRF-Token``); before sign-in, an HMAC of a random HttpOnly cookie
(``kh_form``), so nobody can sign a visitor in to an account of theirs from another site.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keyhouse.accounts import sessions
from keyhouse.accounts.policy import missing_steps
from keyhouse.api.deps import Actor
from keyhouse.api.http import client_ip
from keyhouse.i18n import LANGUAGES, pick_language
from keyhouse.web import i18n
from keyhouse.web.i18n import gettext as _

if TYPE_CHECKING:
    from keyhouse.db.models import Member
    from keyhouse.services import Services

LANG_COOKIE = "kh_lang"
FORM_COOKIE = "kh_form"
#: Where a signed-in member lands (the quick start).
HOME = "/"
MAX_FORM_BYTES = 64 * 1024

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cache-control": "no-store",
}


class SignInRequired(Exception):
    """No (live) session: the web routes answer 303 to ``/signin?next=<path>``."""

    def __init__(self, next_path: str = HOME) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class CsrfFailed(Exception):
    """A form came without the right token (an old tab, or another site)."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in member, as the pages need them."""

    member_id: str
    email: str
    name: str | None
    language: str
    is_admin: bool
    status: str
    status_reason: str | None
    missing_steps: tuple[str, ...]
    #: The session's CSRF token: forms carry it, scripts send it as X-CSRF-Token.
    csrf: str
    session_id: str

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def paused(self) -> bool:
        return self.status in ("flagged", "suspended")


# ----------------------------------------------------------------------------- templates

templates = Environment(
    loader=PackageLoader("keyhouse.web", "templates"),
    autoescape=select_autoescape(["html", "xml"], default_for_string=True),
    extensions=["jinja2.ext.i18n"],
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.install_gettext_callables(  # type: ignore[attr-defined]
    gettext=i18n.gettext,
    ngettext=i18n.ngettext,
    pgettext=i18n.pgettext,
    npgettext=i18n.npgettext,
    newstyle=True,
)
templates.filters.update(
    money=i18n.money, number=i18n.number, date=i18n.date, datetime=i18n.datetime
)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def ip_of(request: Request) -> str | None:
    return client_ip(request.scope, services(request).settings.trusted_proxies)


def actor_of(request: Request, current: Viewer) -> Actor:
    """The same caller ``/api`` would see for this session."""
    return Actor(
        current.member_id,
        current.email,
        current.is_admin,
        current.status,
        current.language,
        "session",
        current.session_id,
        ip_of(request),
    )


# ----------------------------------------------------------------------------- language


def language_of(request: Request, viewer: Viewer | None = None) -> str:
    """The switch's remembered choice, else the member's saved language, else the browser's."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    if viewer is not None and viewer.language in LANGUAGES:
        return viewer.language
    return pick_language(
        request.headers.get("accept-language"),
        services(request).settings.accounts.default_language,
    )


def use_language(request: Request, viewer: Viewer | None = None) -> str:
    """Set the request's language for ``_()`` and the template filters; returns it."""
    language = language_of(request, viewer)
    settings = services(request).settings
    i18n.use(language, timezone=settings.timezone, currency=settings.currency)
    request.state.language = language  # /api's refusals read it (manage.language_of)
    return language


# ----------------------------------------------------------------------------- the viewer


async def optional_viewer(request: Request) -> Viewer | None:
    """The signed-in member, or None (no cookie, or a session that ended)."""
    if "viewer" in request.state._state:
        return request.state.viewer  # type: ignore[no-any-return]
    svc = services(request)
    token = request.cookies.get(sessions.COOKIE)
    found = None
    if token:
        async with svc.db.session() as session, session.begin():
            found = await sessions.find_session(
                session, svc.clock, svc.ring, token, ttl=svc.settings.accounts.session_ttl
            )
    viewer = None
    if found is not None and token:
        row, member = found
        viewer = viewer_of(member, svc, csrf=sessions.csrf_for(svc.ring, token), session_id=row.id)
    request.state.viewer = viewer
    use_language(request, viewer)
    return viewer


def viewer_of(member: Member, svc: Services, *, csrf: str, session_id: str) -> Viewer:
    return Viewer(
        member_id=member.id,
        email=member.email,
        name=member.name,
        language=member.language,
        is_admin=member.is_admin,
        status=member.status,
        status_reason=member.status_reason,
        missing_steps=tuple(missing_steps(member, svc.settings.accounts)),
        csrf=csrf,
        session_id=session_id,
    )


async def viewer(request: Request) -> Viewer:
    """The signed-in member; ``SignInRequired`` (a redirect to the sign-in page) otherwise."""
    found = await optional_viewer(request)
    if found is None:
        raise SignInRequired(safe_next(request.url.path, request.url.query))
    return found


def safe_next(path: str | None, query: str = "") -> str:
    """A local path to come back to (never another site)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return HOME
    return path + (f"?{query}" if query else "")


# ----------------------------------------------------------------------------- CSRF and forms


def _form_token(request: Request, cookie: str) -> str:
    return services(request).ring.hash("web-form:" + cookie)[:43]


def csrf_token(request: Request, viewer: Viewer | None) -> str:
    """The token this page's forms carry (see the module's docstring)."""
    if viewer is not None:
        return viewer.csrf
    cookie = request.cookies.get(FORM_COOKIE) or getattr(request.state, "form_cookie", None)
    if not cookie:
        cookie = secrets.token_urlsafe(24)
        request.state.form_cookie = cookie  # page() sets it on the response
    return _form_token(request, cookie)


def check_csrf(request: Request, value: str | None) -> None:
    """Refuse a form post whose token is neither the session's nor this browser's form token."""
    if not value:
        raise CsrfFailed
    svc = services(request)
    token = request.cookies.get(sessions.COOKIE)
    if token and sessions.csrf_ok(svc.ring, token, value):
        return
    cookie = request.cookies.get(FORM_COOKIE)
    if cookie and hmac.compare_digest(_form_token(request, cookie), value):
        return
    raise CsrfFailed


async def form(request: Request) -> dict[str, str]:
    """A url-encoded form (the only kind our pages send), CSRF checked. Later duplicates win."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise CsrfFailed
    fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    check_csrf(request, fields.get("csrf"))
    return fields


def secure_cookies(request: Request) -> bool:
    return services(request).settings.public_url.startswith("https")


# ----------------------------------------------------------------------------- rendering


def nav() -> list[dict[str, str]]:
    """The left navigation (the member's map; the admin console joins it later)."""
    return [
        {"href": "/", "label": _("Quick start"), "icon": "home"},
        {"href": "/account/api-keys", "label": _("API keys"), "icon": "key"},
        {"href": "/playground", "label": _("Playground"), "icon": "chat"},
        {"href": "/tester", "label": _("API tester"), "icon": "send"},
        {"href": "/account/usage", "label": _("Usage"), "icon": "chart"},
        {"href": "/account/billing", "label": _("Billing"), "icon": "wallet"},
        {"href": "/settings", "label": _("Settings"), "icon": "gear"},
    ]


def with_headers(response: Response, request: Request) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    cookie = getattr(request.state, "form_cookie", None)
    if cookie and not request.cookies.get(FORM_COOKIE):
        response.set_cookie(
            FORM_COOKIE,
            cookie,
            path="/",
            httponly=True,
            samesite="lax",
            secure=secure_cookies(request),
        )
    return response


async def page(
    request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> Response:
    """Render ``template`` inside the frame, with the security headers."""
    current = await optional_viewer(request)
    language = use_language(request, current)
    svc = services(request)
    full = {
        "request": request,
        "viewer": current,
        "language": language,
        "languages": i18n.LANGUAGE_NAMES,
        "csrf": csrf_token(request, current),
        "nav": nav(),
        "path": request.url.path,
        "here": safe_next(request.url.path, request.url.query),
        "public_url": svc.settings.public_url.rstrip("/"),
        "site": "Keyhouse",
        **(context or {}),
    }
    html = templates.get_template(template).render(full)
    return with_headers(HTMLResponse(html, status_code=status), request)


def redirect(request: Request, to: str, status: int = 303) -> Response:
    return with_headers(RedirectResponse(to, status_code=status), request)


def signin_redirect(next_path: str) -> str:
    return "/signin?next=" + quote(next_path, safe="/")


# ----------------------------------------------------------------------------- error pages


async def on_signin_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return redirect(request, signin_redirect(exc.next_path))


async def on_csrf_failed(request: Request, exc: Exception) -> Response:
    await optional_viewer(request)
    return await page(
        request,
        "error.html",
        {
            "heading": _("This form has expired"),
            "message": _("Go back, reload the page and try again."),
        },
        status=403,
    )


async def on_http_error(request: Request, exc: Exception) -> Response:
    """A page that does not exist, asked for by a browser: a page saying so. Everything else
    (the API, scripts) keeps the OpenAI-shaped JSON error."""
    from starlette.exceptions import HTTPException

    from keyhouse.api import errors

    assert isinstance(exc, HTTPException)
    path = request.url.path
    browser = "text/html" in request.headers.get("accept", "")
    if exc.status_code != 404 or not browser or path.startswith(("/v1", "/api", "/static")):
        return await errors.on_http_error(request, exc)
    await optional_viewer(request)
    return await page(
        request,
        "error.html",
        {
            "heading": _("Page not found"),
            "message": _("There is no page at this address. Check the link, or start again."),
        },
        status=404,
    )


def install(app: Any) -> None:
    """The web app's exception handlers (``app.create_app`` calls it after ``errors.install``)."""
    from starlette.exceptions import HTTPException

    app.add_exception_handler(SignInRequired, on_signin_required)
    app.add_exception_handler(CsrfFailed, on_csrf_failed)
    app.add_exception_handler(HTTPException, on_http_error)
