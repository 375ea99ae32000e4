"""Sign-up, sign-in, sign-out, password reset and the paused-account page: one step per screen,
each a plain form (they work without script), each calling ``accounts.flows`` — the services
``/api/auth/…`` uses.

Sign-up goes email + password → the mailed code → the profile the policy asks for → the phone
number → the texted code; ``/signup/continue`` sends a member to the first step still missing
(sign-in and OpenID Connect land there too). Refusals show the server's own words, in the page's
language; a throttle's ``retry-after`` becomes the countdown on the resend button.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyhouse.accounts import flows
from keyhouse.accounts.refusals import Refused
from keyhouse.api.accounts import clear_session_cookies, set_session_cookies
from keyhouse.errors import KeyhouseError
from keyhouse.i18n import LANGUAGES
from keyhouse.web.base import (
    HOME,
    LANG_COOKIE,
    Viewer,
    form,
    ip_of,
    optional_viewer,
    page,
    redirect,
    safe_next,
    secure_cookies,
    services,
    viewer,
)
from keyhouse.web.i18n import current_language

#: Where a member goes once sign-up is complete: the seed's next step, creating a key.
AFTER_SIGNUP = "/account/api-keys"
STEP_PAGES = {"email": "/signup/email", "profile": "/signup/profile", "phone": "/signup/phone"}


def message_of(exc: KeyhouseError) -> str:
    """The server's own wording of a refusal, in the page's language."""
    if isinstance(exc, Refused):
        return str(exc.translated(current_language())["error"]["message"])
    return exc.message


def retry_after(exc: KeyhouseError) -> int | None:
    value = exc.headers.get("retry-after")
    return int(value) if value and value.isdigit() else None


def refusal(exc: KeyhouseError) -> dict[str, Any]:
    return {"error": message_of(exc), "param": exc.param, "retry_after": retry_after(exc)}


def next_step(current: Viewer, done: str = HOME) -> str:
    """The first sign-up step the member still owes, or ``done``."""
    if current.paused:
        return "/account/suspended"
    for step in current.missing_steps:
        if step in STEP_PAGES:
            return STEP_PAGES[step]
    return done


def user_agent(request: Request) -> str | None:
    return request.headers.get("user-agent")


# ----------------------------------------------------------------------------- sign in


async def signin_page(request: Request) -> Response:
    current = await optional_viewer(request)
    next_path = safe_next(request.query_params.get("next"))
    if current is not None:
        return redirect(request, continue_to(next_path))
    return await signin_form(request, next_path=next_path)


async def signin_form(
    request: Request, *, next_path: str, status: int = 200, **context: Any
) -> Response:
    svc = services(request)
    oidc = svc.oidc
    return await page(
        request,
        "auth/signin.html",
        {
            "next": next_path,
            "oidc_name": oidc.settings.name if oidc is not None else None,
            "notice": request.query_params.get("notice"),
            **context,
        },
        status=status,
    )


def continue_to(next_path: str) -> str:
    return "/signup/continue?" + urlencode({"next": next_path})


async def signin_post(request: Request) -> Response:
    fields = await form(request)
    await optional_viewer(request)
    svc = services(request)
    next_path = safe_next(fields.get("next"))
    email = fields.get("email", "").strip()
    try:
        result = await flows.signin(
            svc,
            email=email,
            password=fields.get("password", ""),
            ip=ip_of(request),
            user_agent=user_agent(request),
        )
    except KeyhouseError as exc:
        if exc.code == "account_suspended":
            return redirect(request, "/account/suspended?" + urlencode({"why": "suspended"}))
        return await signin_form(
            request, next_path=next_path, status=exc.status, email=email, **refusal(exc)
        )
    response = redirect(request, continue_to(next_path))
    set_session_cookies(response, svc.settings, result.session)
    return response


async def signout_page(request: Request) -> Response:
    """A link to /signout asks first (signing out changes state: it is a POST)."""
    current = await optional_viewer(request)
    if current is None:
        return redirect(request, "/signin")
    return await page(request, "auth/signout.html", {"bare": True})


async def signout_post(request: Request) -> Response:
    await form(request)
    current = await optional_viewer(request)
    svc = services(request)
    if current is not None:
        await flows.signout(svc, current.session_id)
    response = redirect(request, "/signin?notice=signed-out")
    clear_session_cookies(response, svc.settings)
    return response


# ----------------------------------------------------------------------------- sign up


async def signup_page(request: Request) -> Response:
    current = await optional_viewer(request)
    if current is not None:
        return redirect(request, continue_to(AFTER_SIGNUP))
    return await signup_form(request, invitation=request.query_params.get("invitation") or "")


async def signup_form(request: Request, *, status: int = 200, **context: Any) -> Response:
    svc = services(request)
    settings = svc.settings.accounts
    oidc = svc.oidc
    return await page(
        request,
        "auth/signup.html",
        {
            "oidc_name": oidc.settings.name if oidc is not None else None,
            "closed": settings.signup == "invite" and not context.get("invitation"),
            "min_length": settings.password_min_length,
            **_progress(request, "account"),
            **context,
        },
        status=status,
    )


async def signup_post(request: Request) -> Response:
    fields = await form(request)
    await optional_viewer(request)
    svc = services(request)
    email = fields.get("email", "").strip()
    invitation = fields.get("invitation", "").strip()
    try:
        result = await flows.signup(
            svc,
            email=email,
            password=fields.get("password", ""),
            language=current_language(),
            ip=ip_of(request),
            user_agent=user_agent(request),
            invitation=invitation or None,
        )
    except KeyhouseError as exc:
        return await signup_form(
            request, status=exc.status, email=email, invitation=invitation, **refusal(exc)
        )
    target = "/signup/continue"
    if "email" in _missing(result.member, svc):
        target = "/signup/email?sent=" + ("1" if result.code_sent else "0")
    response = redirect(request, target)
    set_session_cookies(response, svc.settings, result.session)
    return response


def _missing(member: Any, svc: Any) -> list[str]:
    from keyhouse.accounts.policy import missing_steps

    return missing_steps(member, svc.settings.accounts)


async def continue_page(request: Request) -> Response:
    """Where sign-in and OpenID Connect land: the next step owed, else the page wanted."""
    current = await viewer(request)
    done = (
        safe_next(request.query_params.get("next"), "")
        if request.query_params.get("next")
        else AFTER_SIGNUP
    )
    return redirect(request, next_step(current, done))


def _progress(request: Request, step: str) -> dict[str, Any]:
    """Where this step stands among those the policy asks for ("Step 2 of 4")."""
    policy = services(request).settings.accounts
    order = ["account"] + [
        name
        for name, required in (
            ("email", policy.require_email),
            ("profile", policy.require_profile),
            ("phone", policy.require_phone),
        )
        if required or name == step
    ]
    return {"step": step, "step_number": order.index(step) + 1, "step_count": len(order)}


async def email_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    current = await viewer(request)
    if "email" not in current.missing_steps:
        return redirect(request, next_step(current, AFTER_SIGNUP))
    sent = request.query_params.get("sent")
    cooldown = int(services(request).settings.accounts.resend_cooldown)
    context.setdefault("retry_after", cooldown if sent == "1" and cooldown else None)
    return await page(
        request,
        "auth/email.html",
        {
            "bare": True,
            "email": current.email,
            "not_sent": sent == "0",
            **_progress(request, "email"),
            **context,
        },
        status=status,
    )


async def email_post(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    try:
        await flows.verify_email(
            services(request), current.member_id, fields.get("code", "").strip(), ip=ip_of(request)
        )
    except KeyhouseError as exc:
        return await email_page(request, status=exc.status, **(refusal(exc) | {"param": "code"}))
    return redirect(request, "/signup/continue")


async def email_resend(request: Request) -> Response:
    await form(request)
    current = await viewer(request)
    try:
        await flows.resend_email_code(services(request), current.member_id, ip=ip_of(request))
    except KeyhouseError as exc:
        return await email_page(request, status=exc.status, **refusal(exc))
    return redirect(request, "/signup/email?sent=1")


async def profile_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    current = await viewer(request)
    if "profile" not in current.missing_steps and not context:
        return redirect(request, next_step(current, AFTER_SIGNUP))
    context.setdefault("name", current.name or "")
    return await page(
        request,
        "auth/profile.html",
        {"bare": True, **_progress(request, "profile"), **context},
        status=status,
    )


async def profile_post(request: Request) -> Response:
    from datetime import date

    fields = await form(request)
    current = await viewer(request)
    name = fields.get("name", "").strip()
    raw = fields.get("birthday", "").strip()
    try:
        try:
            birthday = date.fromisoformat(raw)
        except ValueError:
            raise Refused("invalid_birthday", param="birthday") from None
        await flows.update_profile(
            services(request), current.member_id, name=name, birthday=birthday
        )
    except KeyhouseError as exc:
        return await profile_page(
            request, status=exc.status, name=name, birthday=raw, **refusal(exc)
        )
    return redirect(request, "/signup/continue")


async def phone_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    current = await viewer(request)
    if "phone" not in current.missing_steps and not context:
        return redirect(request, next_step(current, AFTER_SIGNUP))
    context = {"bare": True, **_progress(request, "phone"), **context}
    return await page(request, "auth/phone.html", context, status=status)


async def phone_post(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    phone = fields.get("phone", "").strip()
    try:
        number = await flows.start_phone(
            services(request), current.member_id, phone, ip=ip_of(request)
        )
    except KeyhouseError as exc:
        if fields.get("resend"):
            return await phone_code_page(request, status=exc.status, phone=phone, **refusal(exc))
        return await phone_page(request, status=exc.status, phone=phone, **refusal(exc))
    return redirect(request, "/signup/phone/code?" + urlencode({"to": number}))


async def phone_code_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    current = await viewer(request)
    if "phone" not in current.missing_steps:
        return redirect(request, next_step(current, AFTER_SIGNUP))
    phone = context.pop("phone", None) or request.query_params.get("to", "")
    if not phone:
        return redirect(request, "/signup/phone")
    if "retry_after" not in context:
        cooldown = int(services(request).settings.accounts.resend_cooldown)
        context["retry_after"] = cooldown or None
    return await page(
        request,
        "auth/phone_code.html",
        {"bare": True, "phone": phone, **_progress(request, "phone"), **context},
        status=status,
    )


async def phone_code_post(request: Request) -> Response:
    fields = await form(request)
    current = await viewer(request)
    try:
        await flows.verify_phone(
            services(request), current.member_id, fields.get("code", "").strip(), ip=ip_of(request)
        )
    except KeyhouseError as exc:
        return await phone_code_page(
            request,
            status=exc.status,
            phone=fields.get("phone", ""),
            **(refusal(exc) | {"param": "code", "retry_after": None}),
        )
    return redirect(request, "/signup/continue")


# ----------------------------------------------------------------------------- password reset


async def reset_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    await optional_viewer(request)
    return await page(request, "auth/reset.html", context, status=status)


async def reset_post(request: Request) -> Response:
    fields = await form(request)
    await optional_viewer(request)
    email = fields.get("email", "").strip()
    try:
        await flows.forgot_password(services(request), email=email, ip=ip_of(request))
    except KeyhouseError as exc:
        return await reset_page(request, status=exc.status, email=email, **refusal(exc))
    return redirect(request, "/reset/code?" + urlencode({"email": email}))


async def reset_code_page(request: Request, *, status: int = 200, **context: Any) -> Response:
    await optional_viewer(request)
    settings = services(request).settings.accounts
    context.setdefault("email", request.query_params.get("email", ""))
    return await page(
        request,
        "auth/reset_code.html",
        {"min_length": settings.password_min_length, **context},
        status=status,
    )


async def reset_code_post(request: Request) -> Response:
    fields = await form(request)
    await optional_viewer(request)
    email = fields.get("email", "").strip()
    try:
        await flows.reset_password(
            services(request),
            email=email,
            code=fields.get("code", "").strip(),
            password=fields.get("password", ""),
            ip=ip_of(request),
        )
    except KeyhouseError as exc:
        return await reset_code_page(request, status=exc.status, email=email, **refusal(exc))
    return redirect(request, "/signin?notice=password-reset")


# ----------------------------------------------------------------------------- paused accounts


async def suspended_page(request: Request) -> Response:
    """What happened and whom to contact: the reason for a signed-in (flagged) member; for a
    suspended one, who cannot sign in, the contact."""
    current = await optional_viewer(request)
    settings = services(request).settings.accounts
    return await page(
        request,
        "auth/suspended.html",
        {
            "support": settings.support_contact,
            "status": current.status if current is not None else request.query_params.get("why"),
        },
    )


async def account_page(request: Request) -> Response:
    """``{public_url}/account``, named in the API's refusals: the account's state."""
    current = await viewer(request)
    if current.paused:
        return redirect(request, "/account/suspended")
    if current.missing_steps:
        return redirect(request, next_step(current))
    return redirect(request, "/settings")


# ----------------------------------------------------------------------------- language


async def language_post(request: Request) -> Response:
    """The switch in the top bar: remembered in a cookie, and in the member's profile."""
    fields = await form(request)
    current = await optional_viewer(request)
    chosen = fields.get("lang", "")
    response = redirect(request, safe_next(fields.get("next")))
    if chosen in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE,
            chosen,
            max_age=365 * 86400,
            path="/",
            samesite="lax",
            secure=secure_cookies(request),
            httponly=True,
        )
        if current is not None and current.language != chosen:
            await flows.update_profile(services(request), current.member_id, language=chosen)
    return response


routes = [
    Route("/signin", signin_page, methods=["GET"]),
    Route("/signin", signin_post, methods=["POST"]),
    Route("/signout", signout_page, methods=["GET"]),
    Route("/signout", signout_post, methods=["POST"]),
    Route("/signup", signup_page, methods=["GET"]),
    Route("/signup", signup_post, methods=["POST"]),
    Route("/signup/continue", continue_page, methods=["GET"]),
    Route("/signup/email", email_page, methods=["GET"]),
    Route("/signup/email", email_post, methods=["POST"]),
    Route("/signup/email/resend", email_resend, methods=["POST"]),
    Route("/signup/profile", profile_page, methods=["GET"]),
    Route("/signup/profile", profile_post, methods=["POST"]),
    Route("/signup/phone", phone_page, methods=["GET"]),
    Route("/signup/phone", phone_post, methods=["POST"]),
    Route("/signup/phone/code", phone_code_page, methods=["GET"]),
    Route("/signup/phone/code", phone_code_post, methods=["POST"]),
    Route("/reset", reset_page, methods=["GET"]),
    Route("/reset", reset_post, methods=["POST"]),
    Route("/reset/code", reset_code_page, methods=["GET"]),
    Route("/reset/code", reset_code_post, methods=["POST"]),
    Route("/account", account_page, methods=["GET"]),
    Route("/account/suspended", suspended_page, methods=["GET"]),
    Route("/language", language_post, methods=["POST"]),
]
