"""A member's own API keys over the management API: create (the secret shown once), list, read,
update, revoke. The dashboard is a client of these endpoints.

A member sees and changes only their own keys (another member's key is "not found", so ids
cannot be probed). Creating a key needs an active account: a member who has not finished
sign-up, or whose account is flagged or suspended, is told why, in their language.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts import audit
from keyhouse.accounts.refusals import Refused
from keyhouse.api.deps import Actor, CurrentActor, services
from keyhouse.billing.money import show, to_micro
from keyhouse.config import LimitSet, Settings
from keyhouse.db.models import ApiKey, Member
from keyhouse.errors import InvalidRequest, NotFound, PermissionDenied
from keyhouse.keys import store

router = APIRouter(tags=["keys"])

Permission = Literal["all", "restricted", "read-only"]
Period = Literal["day", "month", "none"]
#: The database keeps limits in 32-bit integers and amounts in 64-bit micro-units.
MAX_LIMIT = 2**31 - 1
MAX_MICROS = 10**18  # a trillion of the currency
Limit = Annotated[
    int | None, Field(ge=1, le=MAX_LIMIT, description="None: no limit of the key's own.")
]
LIMITS = ("rpm", "tpm", "rpd", "max_parallel")

#: What the first missing sign-up step is called when a member may not create keys yet.
STEP_REFUSALS = {
    "email": "email_not_verified",
    "profile": "profile_incomplete",
    "phone": "phone_not_verified",
}


# ----------------------------------------------------------------------------- wire models


class BudgetIn(BaseModel):
    """A spending limit for this key, as decimal amounts of the currency ("5.00")."""

    period: Period = Field("month", description="day, month, or none (for good).")
    hard: str | None = Field(None, description="Refuse requests past this amount.")
    soft: str | None = Field(None, description="Tell the member once per period past this.")


class BudgetOut(BaseModel):
    period: Period
    hard: str | None
    hard_micros: int | None
    soft: str | None
    soft_micros: int | None


class KeyLimits(BaseModel):
    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    max_parallel: int | None = None


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    permissions: Permission = "all"
    endpoints: list[str] | None = Field(None, description="For restricted keys only.")
    models: list[str] | None = Field(None, description="Models this key may use; None: all.")
    ip_allow: list[str] | None = Field(None, description="CIDRs; None: any address.")
    expires_at: datetime | None = None
    rpm: Limit = None
    tpm: Limit = None
    rpd: Limit = None
    max_parallel: Limit = None
    budget: BudgetIn | None = None
    admin: bool = Field(
        False, description="An admin token (administrators only): may call /api as an admin."
    )


class KeyUpdate(BaseModel):
    """Only the fields given change; ``null`` lifts a list, a limit, the expiry or the budget."""

    name: str | None = Field(None, min_length=1, max_length=200)
    permissions: Permission | None = None
    endpoints: list[str] | None = None
    models: list[str] | None = None
    ip_allow: list[str] | None = None
    expires_at: datetime | None = None
    rpm: Limit = None
    tpm: Limit = None
    rpd: Limit = None
    max_parallel: Limit = None
    budget: BudgetIn | None = None


class KeyOut(BaseModel):
    """A key as lists show it: never its secret."""

    id: str
    name: str
    redacted: str = Field(description="The prefix and the first and last characters.")
    state: Literal["active", "expired", "revoked"]
    permissions: Permission
    endpoints: list[str] | None
    models: list[str] | None
    ip_allow: list[str] | None
    admin: bool
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    limits: KeyLimits
    budget: BudgetOut | None


class KeyCreated(KeyOut):
    secret: str = Field(description="The secret key. Shown this once: save it now.")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]


# ----------------------------------------------------------------------------- helpers


def key_view(key: ApiKey, now: datetime) -> KeyOut:
    state: Literal["active", "expired", "revoked"] = "active"
    if key.revoked_at is not None:
        state = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        state = "expired"
    budget = None
    if key.budget_hard is not None or key.budget_soft is not None:
        budget = BudgetOut(
            period=key.budget_period or "none",  # type: ignore[arg-type]
            hard=show(key.budget_hard) if key.budget_hard is not None else None,
            hard_micros=key.budget_hard,
            soft=show(key.budget_soft) if key.budget_soft is not None else None,
            soft_micros=key.budget_soft,
        )
    return KeyOut(
        id=key.id,
        name=key.name,
        redacted=key.redacted,
        state=state,
        permissions=key.permissions,  # type: ignore[arg-type]
        endpoints=key.endpoints,
        models=key.models,
        ip_allow=key.ip_allow,
        admin=bool(key.admin),
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        limits=KeyLimits(rpm=key.rpm, tpm=key.tpm, rpd=key.rpd, max_parallel=key.max_parallel),
        budget=budget,
    )


def _micros(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        amount = to_micro(value.strip())
    except (ArithmeticError, ValueError, InvalidRequest):
        raise InvalidRequest(f"not an amount like 5.00: {value!r}", param=name) from None
    if amount < 0:
        raise InvalidRequest("a budget must not be negative", param=name)
    if amount > MAX_MICROS:
        raise InvalidRequest(f"a budget may be at most {MAX_MICROS // 10**6}", param=name)
    return amount


def apply_budget(key: ApiKey, budget: BudgetIn | None) -> None:
    """Set the key's budget (None: lift it)."""
    if budget is None:
        key.budget_period = key.budget_hard = key.budget_soft = None
        return
    key.budget_hard = _micros(budget.hard, "budget.hard")
    key.budget_soft = _micros(budget.soft, "budget.soft")
    key.budget_period = None if budget.period == "none" else budget.period


def may_create_keys(member: Member, settings: Settings) -> None:
    """Refuse, with the reason the member can act on, unless the account is active."""
    from keyhouse.accounts.policy import missing_steps, paused

    if member.status == "active":
        return
    if member.status in ("flagged", "suspended"):
        raise paused(member, settings)

    steps = missing_steps(member, settings.accounts)
    raise Refused(
        STEP_REFUSALS.get(steps[0] if steps else "email", "email_not_verified"), status=403
    )


async def own_key(session: AsyncSession, actor: Actor, key_id: str) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or key.member_id != actor.member_id:
        raise NotFound(f"no key {key_id!r}", code="key_not_found")
    return key


# ----------------------------------------------------------------------------- routes


@router.get("/keys", response_model=KeyList, summary="Your API keys (redacted)")
async def list_keys(request: Request, actor: CurrentActor) -> KeyList:
    svc = services(request)
    async with svc.db.session() as session:
        keys = await store.list_keys(session, actor.member_id)
    now = svc.clock.now()
    return KeyList(data=[key_view(key, now) for key in keys])


@router.post(
    "/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key; the secret is in this response only",
)
async def create_key(request: Request, body: KeyCreate, actor: CurrentActor) -> KeyCreated:
    svc = services(request)
    if body.admin and not actor.is_admin:
        raise PermissionDenied(
            "Only administrators may create admin tokens.", code="admin_required", param="admin"
        )
    async with svc.db.session() as session, session.begin():
        member = await session.get(Member, actor.member_id)
        if member is None:
            raise Refused("not_signed_in", status=401)
        may_create_keys(member, svc.settings)
        key, secret = await store.create_key(
            session,
            svc.clock,
            svc.ring,
            member,
            name=body.name.strip(),
            rules=store.KeyRules(
                body.permissions,
                tuple(body.endpoints) if body.endpoints else None,
                tuple(body.models) if body.models else None,
                tuple(body.ip_allow) if body.ip_allow else None,
            ),
            expires_at=body.expires_at,
            limits=LimitSet(body.rpm, body.tpm, body.rpd, body.max_parallel),
        )
        if body.budget is not None:
            apply_budget(key, body.budget)
        if body.admin:
            key.admin = True
            await audit.record(
                session,
                svc.clock,
                actor=actor.member_id,
                action="key.create_admin",
                target=member.id,
                ip=actor.ip,
                data={"key": key.id},
            )
        view = key_view(key, svc.clock.now())
    return KeyCreated(**view.model_dump(), secret=secret)


@router.get("/keys/{key_id}", response_model=KeyOut, summary="One of your keys")
async def get_key(request: Request, key_id: str, actor: CurrentActor) -> KeyOut:
    svc = services(request)
    async with svc.db.session() as session:
        key = await own_key(session, actor, key_id)
    return key_view(key, svc.clock.now())


@router.patch("/keys/{key_id}", response_model=KeyOut, summary="Change one of your keys")
async def update_key(request: Request, key_id: str, body: KeyUpdate, actor: CurrentActor) -> KeyOut:
    svc = services(request)
    given = body.model_fields_set
    async with svc.db.session() as session, session.begin():
        key = await own_key(session, actor, key_id)
        if key.revoked_at is not None:
            raise InvalidRequest("this key has been revoked", code="key_revoked")
        rules = None
        if given & {"permissions", "endpoints", "models", "ip_allow"}:
            permissions = body.permissions or key.permissions
            endpoints = body.endpoints if "endpoints" in given else key.endpoints
            rules = store.KeyRules(
                permissions,
                tuple(endpoints) if endpoints and permissions == "restricted" else None,
                _tuple(body.models if "models" in given else key.models),
                _tuple(body.ip_allow if "ip_allow" in given else key.ip_allow),
            )
        limits = None
        if given & set(LIMITS):
            limits = LimitSet(
                *(getattr(body, n) if n in given else getattr(key, n) for n in LIMITS)
            )
        changes: dict[str, object] = {"rules": rules, "limits": limits}
        if "name" in given and body.name is not None:
            changes["name"] = body.name.strip()
        if "expires_at" in given:
            if body.expires_at is not None and body.expires_at <= svc.clock.now():
                raise InvalidRequest("the expiry must be in the future", param="expires_at")
            changes["expires_at"] = body.expires_at
        if "budget" in given:
            apply_budget(key, body.budget)
        await store.update_key(session, svc.clock, key, **changes)  # type: ignore[arg-type]
        view = key_view(key, svc.clock.now())
    return view


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values else None


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke one of your keys")
async def revoke_key(request: Request, key_id: str, actor: CurrentActor) -> KeyOut:
    """Servers refuse the key within a second. Revoking is for good."""
    svc = services(request)
    async with svc.db.session() as session, session.begin():
        key = await own_key(session, actor, key_id)
        await store.revoke_key(session, svc.clock, key)
        view = key_view(key, svc.clock.now())
    return view
