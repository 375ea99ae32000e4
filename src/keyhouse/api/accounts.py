"""Accounts over the management API: sign-up, verification of the email address and phone
number, the profile, sign-in and out, passwords, email changes (``/api/auth/…``, ``/api/me…``).

The handlers only translate between HTTP and ``accounts.flows``: the rules live there.
Sign-up and sign-in set two cookies: the session (HttpOnly, SameSite=Lax, Secure behind
https) and the CSRF token (readable by the page, which echoes it in ``X-CSRF-Token``; it is
also in the JSON body). They never read an old session cookie, so a stale one cannot stand in
the way of signing in again. Refusals carry a machine-readable ``code`` and a message in the
member's language (or the browser's, before sign-in).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from keyhouse.accounts import flows, sessions
from keyhouse.accounts.policy import missing_steps
from keyhouse.accounts.refusals import Refused
from keyhouse.api.deps import CurrentActor, ip_of, language_of, services
from keyhouse.config import Settings
from keyhouse.db.models import Member

router = APIRouter(tags=["accounts"])

Language = Literal["en", "zh-CN"]
Step = Literal["email", "profile", "phone"]
Code = Annotated[
    str,
    Field(min_length=1, max_length=32, description="The 6-digit code.", examples=["042917"]),
]
Password = Annotated[str, Field(min_length=1, max_length=1024, examples=["correct horse battery"])]
Email = Annotated[str, Field(min_length=3, max_length=320, examples=["ann@example.org"])]


# ----------------------------------------------------------------------------- wire models


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignupIn(Strict):
    email: Email
    password: Password
    language: Language | None = Field(
        None, description="For mails and messages; default: the browser's Accept-Language."
    )
    invitation: str | None = Field(
        None, max_length=200, description="The token of an invitation link, if you have one."
    )


class SigninIn(Strict):
    email: Email
    password: Password


class CodeIn(Strict):
    code: Code


class ForgotIn(Strict):
    email: Email


class ResetIn(Strict):
    email: Email
    code: Code
    password: Password = Field(description="The new password.")


class ProfileIn(Strict):
    name: str | None = Field(None, max_length=200, examples=["Ann Lee"])
    birthday: str | None = Field(
        None, description="ISO date.", json_schema_extra={"format": "date"}, examples=["1990-05-17"]
    )
    language: Language | None = None


class PhoneIn(Strict):
    phone: str = Field(
        min_length=1,
        max_length=40,
        description="With the country code; spaces, dashes and parentheses are ignored.",
        examples=["+86 138 0013 8000"],
    )


class EmailChangeIn(Strict):
    email: Email = Field(description="The new address; the old one stays until it is verified.")
    password: str | None = Field(
        None, max_length=1024, description="Your current password (if you have one)."
    )


class PasswordChangeIn(Strict):
    current_password: Password
    new_password: Password


class Me(BaseModel):
    """The signed-in member, and what they still have to do."""

    id: str = Field(examples=["mem_3Jk9x0aQ2mP7v1Lw8RtZ"])
    email: str
    email_verified: bool
    name: str | None
    birthday: date | None
    phone: str | None = Field(description="The verified number (E.164), if any.")
    phone_verified: bool
    language: Language
    status: Literal["active", "unverified", "flagged", "suspended"]
    status_reason: str | None = Field(description="Why, when flagged or suspended.")
    support_contact: str | None = Field(description="Whom to contact, when flagged or suspended.")
    missing_steps: list[Step] = Field(description="Steps the policy requires that are not done.")
    may_create_keys: bool
    is_admin: bool
    created_at: datetime


class SignedIn(BaseModel):
    member: Me
    csrf_token: str = Field(description="Send it as X-CSRF-Token on state-changing requests.")
    session_expires_at: datetime
    code_sent: bool = Field(
        True, description="Sign-up: whether the verification mail went out (else: resend)."
    )


class Sent(BaseModel):
    sent: bool
    to: str | None = Field(None, description="Where the code went (phone and email changes).")
    expires_in: int | None = Field(None, description="Seconds the code is valid for.")


class Ended(BaseModel):
    sessions_ended: int


class Done(BaseModel):
    ok: bool = True


# ----------------------------------------------------------------------------- helpers


def me_view(member: Member, settings: Settings) -> Me:
    troubled = member.status in ("flagged", "suspended")
    return Me(
        id=member.id,
        email=member.email,
        email_verified=member.email_verified_at is not None,
        name=member.name,
        birthday=member.birthday,
        phone=member.phone if member.phone_verified_at is not None else None,
        phone_verified=member.phone_verified_at is not None,
        language=member.language if member.language in ("en", "zh-CN") else "en",  # type: ignore[arg-type]
        status=member.status,  # type: ignore[arg-type]
        status_reason=member.status_reason if troubled else None,
        support_contact=settings.accounts.support_contact if troubled else None,
        missing_steps=missing_steps(member, settings.accounts),  # type: ignore[arg-type]
        may_create_keys=member.status == "active",
        is_admin=member.is_admin,
        created_at=member.created_at,
    )


def set_session_cookies(response: Response, settings: Settings, new: sessions.NewSession) -> None:
    """The session cookie (HttpOnly) and the CSRF cookie (for the page's script to read)."""
    secure = settings.public_url.startswith("https")
    max_age = int(settings.accounts.session_ttl)
    for name, value, http_only in (
        (sessions.COOKIE, new.token, True),
        (sessions.CSRF_COOKIE, new.csrf, False),
    ):
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            secure=secure,
            httponly=http_only,
            samesite="lax",
        )


def clear_session_cookies(response: Response, settings: Settings) -> None:
    secure = settings.public_url.startswith("https")
    for name, http_only in ((sessions.COOKIE, True), (sessions.CSRF_COOKIE, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=http_only, samesite="lax")


def signed_in(response: Response, settings: Settings, result: flows.SignedIn) -> SignedIn:
    set_session_cookies(response, settings, result.session)
    return SignedIn(
        member=me_view(result.member, settings),
        csrf_token=result.session.csrf,
        session_expires_at=result.session.expires_at,
        code_sent=result.code_sent,
    )


def _birthday(raw: str | None) -> date | None:
    try:
        return date.fromisoformat(raw) if raw is not None else None
    except ValueError:
        raise Refused("invalid_birthday", param="birthday") from None


# ----------------------------------------------------------------------------- sign-up, sign-in


@router.post(
    "/auth/signup",
    response_model=SignedIn,
    status_code=201,
    summary="Create an account (email and password); a code is mailed to the address",
    description=(
        "The account starts `unverified` and signed in. What it may do before the email, "
        "profile and phone steps are done is the administrator's policy (`missing_steps`, "
        "`may_create_keys`). Refusals: `signup_closed`, `email_domain_not_allowed`, "
        "`email_domain_blocked`, `email_disposable`, `email_taken`, `invalid_email`, "
        "`weak_password`, `invitation_invalid`, `too_many_signups`, `too_many_codes`."
    ),
)
async def signup(request: Request, response: Response, body: SignupIn) -> SignedIn:
    svc = services(request)
    result = await flows.signup(
        svc,
        email=body.email,
        password=body.password,
        language=body.language or language_of(request),
        ip=ip_of(request),
        user_agent=request.headers.get("user-agent"),
        invitation=body.invitation,
    )
    return signed_in(response, svc.settings, result)


@router.post(
    "/auth/signin",
    response_model=SignedIn,
    summary="Sign in with email and password",
    description=(
        "Sets the session and CSRF cookies. Refusals: `invalid_credentials`, `account_locked` "
        "(after repeated failures), `account_suspended`, `too_many_signins`. Flagged members "
        "may sign in, to read why (`status_reason`)."
    ),
)
async def signin(request: Request, response: Response, body: SigninIn) -> SignedIn:
    svc = services(request)
    result = await flows.signin(
        svc,
        email=body.email,
        password=body.password,
        ip=ip_of(request),
        user_agent=request.headers.get("user-agent"),
    )
    return signed_in(response, svc.settings, result)


@router.post("/auth/signout", response_model=Done, summary="Sign out of this browser")
async def signout(request: Request, response: Response, actor: CurrentActor) -> Done:
    svc = services(request)
    if actor.session_id is not None:
        await flows.signout(svc, actor.session_id)
    clear_session_cookies(response, svc.settings)
    return Done()


@router.post(
    "/auth/signout-everywhere",
    response_model=Ended,
    summary="Sign out of every browser (every session of this account ends)",
)
async def signout_everywhere(request: Request, response: Response, actor: CurrentActor) -> Ended:
    svc = services(request)
    ended = await flows.signout_everywhere(svc, actor.member_id)
    clear_session_cookies(response, svc.settings)
    return Ended(sessions_ended=ended)


# ----------------------------------------------------------------------------- the email code


@router.post(
    "/auth/email/verify",
    response_model=Me,
    summary="Confirm the email address with the mailed code",
    description=(
        "Refusals: `invalid_code` (with the tries left), `code_expired`, "
        "`code_tries_exceeded`, `no_code_pending`."
    ),
)
async def verify_email(request: Request, body: CodeIn, actor: CurrentActor) -> Me:
    svc = services(request)
    member = await flows.verify_email(svc, actor.member_id, body.code, ip=ip_of(request))
    return me_view(member, svc.settings)


@router.post(
    "/auth/email/resend",
    response_model=Sent,
    summary="Mail another email-verification code",
    description="Refusals: `resend_too_soon` (cool-down), `too_many_codes` (hourly caps).",
)
async def resend_email(request: Request, actor: CurrentActor) -> Sent:
    svc = services(request)
    sent = await flows.resend_email_code(svc, actor.member_id, ip=ip_of(request))
    return Sent(sent=sent, expires_in=int(svc.settings.accounts.code_ttl) if sent else None)


# ----------------------------------------------------------------------------- passwords


@router.post(
    "/auth/password/forgot",
    response_model=Sent,
    status_code=202,
    summary="Mail a password-reset code",
    description=(
        "The answer is the same whether or not the address has an account (so this cannot "
        "tell anyone who has one): `sent` is always true."
    ),
)
async def forgot_password(request: Request, body: ForgotIn) -> Sent:
    svc = services(request)
    await flows.forgot_password(svc, email=body.email, ip=ip_of(request))
    return Sent(sent=True, expires_in=int(svc.settings.accounts.code_ttl))


@router.post(
    "/auth/password/reset",
    response_model=Done,
    summary="Choose a new password with the mailed code; every session ends",
)
async def reset_password(request: Request, body: ResetIn) -> Done:
    svc = services(request)
    await flows.reset_password(
        svc, email=body.email, code=body.code, password=body.password, ip=ip_of(request)
    )
    return Done()


@router.post(
    "/me/password",
    response_model=Ended,
    summary="Change the password (the current one is required); other sessions end",
)
async def change_password(request: Request, body: PasswordChangeIn, actor: CurrentActor) -> Ended:
    svc = services(request)
    ended = await flows.change_password(
        svc,
        actor.member_id,
        current=body.current_password,
        new=body.new_password,
        keep_session=actor.session_id,
        ip=ip_of(request),
    )
    return Ended(sessions_ended=ended)


# ----------------------------------------------------------------------------- profile


@router.get("/me", response_model=Me, summary="Your account: profile, state, steps left")
async def get_me(request: Request, actor: CurrentActor) -> Me:
    svc = services(request)
    return me_view(await flows.current_member(svc, actor.member_id), svc.settings)


@router.patch(
    "/me",
    response_model=Me,
    summary="Fill in or change the profile (name, birthday) and the language",
    description="Only the fields given change. Refusals: `invalid_birthday`.",
)
async def patch_me(request: Request, body: ProfileIn, actor: CurrentActor) -> Me:
    svc = services(request)
    given = body.model_fields_set
    changes: dict[str, object] = {}
    if "name" in given:
        changes["name"] = body.name
    if "birthday" in given:
        changes["birthday"] = _birthday(body.birthday)
    if "language" in given:
        changes["language"] = body.language
    member = await flows.update_profile(svc, actor.member_id, **changes)  # type: ignore[arg-type]
    request.state.language = member.language
    return me_view(member, svc.settings)


@router.post(
    "/me/phone",
    response_model=Sent,
    summary="Text a code to a phone number",
    description=(
        "A verified number stays until the new one is verified. Refusals: `invalid_phone`, "
        "`phone_taken`, `resend_too_soon`, `too_many_codes`, `delivery_failed`."
    ),
)
async def start_phone(request: Request, body: PhoneIn, actor: CurrentActor) -> Sent:
    svc = services(request)
    number = await flows.start_phone(svc, actor.member_id, body.phone, ip=ip_of(request))
    return Sent(sent=True, to=number, expires_in=int(svc.settings.accounts.code_ttl))


@router.post(
    "/me/phone/verify", response_model=Me, summary="Confirm the phone number with the texted code"
)
async def verify_phone(request: Request, body: CodeIn, actor: CurrentActor) -> Me:
    svc = services(request)
    member = await flows.verify_phone(svc, actor.member_id, body.code, ip=ip_of(request))
    return me_view(member, svc.settings)


@router.post(
    "/me/email",
    response_model=Sent,
    summary="Change the email address: a code goes to the new one",
    description=(
        "The current address stays until the code comes back. Refusals: `invalid_credentials` "
        "(password), `email_taken`, the domain rules, `resend_too_soon`, `too_many_codes`."
    ),
)
async def start_email_change(request: Request, body: EmailChangeIn, actor: CurrentActor) -> Sent:
    svc = services(request)
    address = await flows.start_email_change(
        svc, actor.member_id, email=body.email, password=body.password, ip=ip_of(request)
    )
    return Sent(sent=True, to=address, expires_in=int(svc.settings.accounts.code_ttl))


@router.post(
    "/me/email/verify",
    response_model=Me,
    summary="Confirm the new email address with the mailed code; it replaces the old one",
)
async def verify_email_change(request: Request, body: CodeIn, actor: CurrentActor) -> Me:
    svc = services(request)
    member = await flows.verify_email_change(svc, actor.member_id, body.code, ip=ip_of(request))
    return me_view(member, svc.settings)


# ----------------------------------------------------------------------------- sessions, closing


class SessionOut(BaseModel):
    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    current: bool = Field(description="The session making this request.")


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionOut]


class CloseIn(Strict):
    password: str | None = Field(
        None, max_length=1024, description="Your password (if you have one)."
    )


@router.get("/me/sessions", response_model=SessionList, summary="Your signed-in browsers")
async def list_sessions(request: Request, actor: CurrentActor) -> SessionList:
    rows = await flows.list_sessions(services(request), actor.member_id)
    return SessionList(
        data=[
            SessionOut(
                id=row.id,
                created_at=row.created_at,
                last_seen_at=row.last_seen_at,
                expires_at=row.expires_at,
                ip=row.ip,
                user_agent=row.user_agent,
                current=row.id == actor.session_id,
            )
            for row in rows
        ]
    )


@router.delete(
    "/me/sessions/{session_id}", response_model=Ended, summary="Sign one of your browsers out"
)
async def end_session(request: Request, session_id: str, actor: CurrentActor) -> Ended:
    ended = await flows.end_own_session(services(request), actor.member_id, session_id)
    return Ended(sessions_ended=int(ended))


@router.post(
    "/me/close",
    response_model=Done,
    summary="Close your account for good (your password confirms it)",
    description=(
        "Keys are revoked, every session ends and the personal data is erased; the usage and "
        "ledger stay under the account's opaque id. Refusals: `invalid_credentials`."
    ),
)
async def close_account(
    request: Request, response: Response, body: CloseIn, actor: CurrentActor
) -> Done:
    svc = services(request)
    await flows.delete_account(svc, actor.member_id, password=body.password, ip=ip_of(request))
    clear_session_cookies(response, svc.settings)
    return Done()
