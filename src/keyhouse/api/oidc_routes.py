"""Sign-in with an OpenID Connect provider ("Continue with Google", a company SSO).

``GET /api/auth/oidc`` says whether it is on and what the button says; ``/start`` sends the
browser to the provider; ``/callback`` links what comes back to a member and starts a session,
then sends the browser on to the dashboard.

Linking: the identity ``(issuer, subject)`` once known; otherwise a member with the same
address, only when the provider vouches for it (``email_verified``); otherwise a new member,
under the same sign-up policy as a password sign-up (modes, domains, block-lists). Email is
then verified; the profile and phone steps, if the policy asks for them, remain.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import RedirectResponse, Response

from keyhouse.accounts import oidc, sessions
from keyhouse.accounts.flows import member_by_email, throttle_signups
from keyhouse.accounts.members import create_member
from keyhouse.accounts.policy import check_email_domain, paused, refresh_status
from keyhouse.accounts.refusals import Refused
from keyhouse.api.accounts import set_session_cookies
from keyhouse.api.deps import ip_of, language_of, services
from keyhouse.db.models import Member, OidcIdentity

router = APIRouter(prefix="/auth/oidc", tags=["sign-in with OpenID Connect"])


class OidcInfo(BaseModel):
    enabled: bool
    #: The button's words: "Continue with {name}".
    name: str | None = None
    start_url: str | None = None


def client_of(request: Request) -> oidc.OidcClient:
    client = services(request).oidc
    if client is None:
        raise Refused("oidc_failed", status=404)
    return client


def secure(request: Request) -> bool:
    return services(request).settings.public_url.startswith("https://")


@router.get("", response_model=OidcInfo, summary="Is sign-in with OpenID Connect on?")
async def info(request: Request) -> OidcInfo:
    settings = services(request).settings.oidc
    if not settings.enabled:
        return OidcInfo(enabled=False)
    return OidcInfo(enabled=True, name=settings.name, start_url="/api/auth/oidc/start")


@router.get("/start", summary="Go to the provider's sign-in page", status_code=302)
async def start(request: Request) -> Response:
    url, cookie = await client_of(request).start()
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        oidc.COOKIE_NAME,
        cookie,
        max_age=oidc.COOKIE_MAX_AGE,
        path=oidc.COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=secure(request),
    )
    return response


async def member_for(request: Request, claims: oidc.OidcClaims) -> Member:
    svc = services(request)
    now = svc.clock.now()
    async with svc.db.session() as session, session.begin():
        identity = await session.get(OidcIdentity, (claims.issuer, claims.subject))
        member = await session.get(Member, identity.member_id) if identity else None
        if member is None:
            if not claims.email or not claims.email_verified:
                raise Refused("oidc_email_unverified", status=403)
            email = claims.email.strip()
            member = await member_by_email(session, email)
            if member is None:
                if svc.settings.accounts.signup == "invite":
                    raise Refused("signup_closed", status=403)
                check_email_domain(email, svc.settings.accounts)
                await throttle_signups(svc, ip_of(request))
                member = await create_member(
                    session, svc.clock, email=email, name=claims.name, status="unverified"
                )
                member.language = language_of(request)  # the browser's, as for sign-up
            session.add(
                OidcIdentity(
                    issuer=claims.issuer,
                    subject=claims.subject,
                    member_id=member.id,
                    created_at=now,
                )
            )
        if member.status == "suspended":  # deleted members are suspended too
            raise paused(member, svc.settings)
        if member.email_verified_at is None and claims.email_verified:
            member.email_verified_at = now
        await refresh_status(session, svc.clock, svc.settings, member)
        return member


@router.get("/callback", summary="Where the provider sends the browser back", status_code=302)
async def callback(request: Request) -> Response:
    svc = services(request)
    query = request.query_params
    claims = await client_of(request).finish(
        code=query.get("code"),
        state=query.get("state"),
        error=query.get("error"),
        cookie=request.cookies.get(oidc.COOKIE_NAME),
    )
    member = await member_for(request, claims)
    async with svc.db.session() as session, session.begin():
        new = await sessions.start_session(
            session,
            svc.clock,
            svc.ring,
            member,
            ttl=svc.settings.accounts.session_ttl,
            ip=ip_of(request),
            user_agent=request.headers.get("user-agent"),
        )
    # The web app's sign-up continues from here: the steps still owed, else the home page.
    response = RedirectResponse(
        f"{svc.settings.public_url.rstrip('/')}/signup/continue?next=/", status_code=302
    )
    set_session_cookies(response, svc.settings, new)
    response.delete_cookie(oidc.COOKIE_NAME, path=oidc.COOKIE_PATH)
    return response
