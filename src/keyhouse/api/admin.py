"""Administration over the management API: members (find, flag, suspend, delete, tier, admin
rights), invitations and the audit log. Administrators only (a session or an admin token).

Every change is written with its audit entry in one transaction (``accounts.admin``); mails
that go with a change are sent after it has committed, and a mail that cannot be sent does not
undo the change (the response says whether it went).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.accounts import admin, audit, invitations
from keyhouse.api.deps import Actor, AdminActor, services
from keyhouse.api.member_keys import KeyOut, key_view
from keyhouse.billing.ledger import balance_of
from keyhouse.billing.money import show
from keyhouse.db.models import AuditEntry, Invitation, Member, WebSession
from keyhouse.errors import NotFound
from keyhouse.keys.store import list_keys

router = APIRouter(prefix="/admin", tags=["admin"])

Status = Literal["active", "unverified", "flagged", "suspended"]


# ----------------------------------------------------------------------------- wire models


class MemberOut(BaseModel):
    id: str
    email: str
    name: str | None
    phone: str | None
    birthday: date | None
    status: Status
    status_reason: str | None = Field(description="Why flagged or suspended; shown to them.")
    is_admin: bool
    tier: str
    language: str
    email_verified_at: datetime | None
    phone_verified_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class MemberDetail(MemberOut):
    keys: list[KeyOut]
    balance: str
    balance_micros: int
    sessions: int = Field(description="Browsers signed in now.")


class MemberPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[MemberOut]
    total: int
    offset: int
    limit: int
    has_more: bool


class Reason(BaseModel):
    reason: str | None = Field(
        None, max_length=500, description="Required to flag, suspend or delete; the member sees it."
    )


class FlaggedOut(MemberOut):
    mail_sent: bool = Field(description="Whether the mail telling the member went out.")


class MemberPatch(BaseModel):
    tier: str | None = Field(None, description="A tier from the settings; null: the default.")
    is_admin: bool | None = None


class InvitationIn(BaseModel):
    email: str = Field(max_length=320)


class InvitationOut(BaseModel):
    id: str
    email: str
    invited_by: str | None
    state: Literal["pending", "accepted", "expired"]
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None


class InvitationCreated(InvitationOut):
    url: str = Field(description="The sign-up link, for an admin who delivers it themselves.")
    mail_sent: bool


class InvitationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InvitationOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description='A member id, or "cli" for the command line.')
    ip: str | None
    action: str
    target: str | None
    reason: str | None
    data: dict[str, Any] | None


class AuditPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditOut]
    has_more: bool
    next_before: int | None = Field(description="Pass as `before` for the next page.")


# ----------------------------------------------------------------------------- helpers


def member_view(member: Member, default_tier: str) -> MemberOut:
    return MemberOut(
        id=member.id,
        email=member.email,
        name=member.name,
        phone=member.phone,
        birthday=member.birthday,
        status=member.status,  # type: ignore[arg-type]
        status_reason=member.status_reason,
        is_admin=member.is_admin,
        tier=member.tier or default_tier,
        language=member.language,
        email_verified_at=member.email_verified_at,
        phone_verified_at=member.phone_verified_at,
        created_at=member.created_at,
        updated_at=member.updated_at,
        deleted_at=member.deleted_at,
    )


def invitation_view(invitation: Invitation, now: datetime) -> InvitationOut:
    state: Literal["pending", "accepted", "expired"] = "pending"
    if invitation.accepted_at is not None:
        state = "accepted"
    elif invitation.expires_at <= now:
        state = "expired"
    return InvitationOut(
        id=invitation.id,
        email=invitation.email,
        invited_by=invitation.invited_by,
        state=state,
        created_at=invitation.created_at,
        expires_at=invitation.expires_at,
        accepted_at=invitation.accepted_at,
    )


async def get_member(session: AsyncSession, member_id: str) -> Member:
    member = await session.get(Member, member_id)
    if member is None:
        raise NotFound(f"no member {member_id!r}", code="member_not_found")
    return member


def _reason(body: Reason | None) -> str | None:
    return body.reason if body is not None else None


def _like(text: str) -> str:
    escaped = text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# ----------------------------------------------------------------------------- members


@router.get("/members", response_model=MemberPage, summary="Find members")
async def list_members(
    request: Request,
    actor: AdminActor,
    status: Status | None = None,
    q: Annotated[str | None, Query(max_length=320, description="Part of the email.")] = None,
    include_deleted: bool = False,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MemberPage:
    svc = services(request)
    conditions: list[Any] = []
    if status is not None:
        conditions.append(Member.status == status)
    if q:
        conditions.append(func.lower(Member.email).like(_like(q), escape="\\"))
    if not include_deleted:
        conditions.append(Member.deleted_at.is_(None))
    async with svc.db.session() as session:
        total = (
            await session.execute(select(func.count()).select_from(Member).where(*conditions))
        ).scalar_one()
        rows = (
            await session.execute(
                select(Member)
                .where(*conditions)
                .order_by(Member.created_at.desc(), Member.id)
                .offset(offset)
                .limit(limit)
            )
        ).scalars()
        data = [member_view(m, svc.settings.default_tier) for m in rows]
    return MemberPage(
        data=data, total=total, offset=offset, limit=limit, has_more=offset + len(data) < total
    )


@router.get("/members/{member_id}", response_model=MemberDetail, summary="One member")
async def member_detail(request: Request, member_id: str, actor: AdminActor) -> MemberDetail:
    svc = services(request)
    now = svc.clock.now()
    async with svc.db.session() as session:
        member = await get_member(session, member_id)
        keys = await list_keys(session, member.id)
        balance = await balance_of(session, member.id)
        signed_in = (
            await session.execute(
                select(func.count())
                .select_from(WebSession)
                .where(WebSession.member_id == member.id, WebSession.expires_at > now)
            )
        ).scalar_one()
    return MemberDetail(
        **member_view(member, svc.settings.default_tier).model_dump(),
        keys=[key_view(k, now) for k in keys],
        balance=show(balance),
        balance_micros=balance,
        sessions=signed_in,
    )


async def _act(
    request: Request, actor: Actor, member_id: str, action: Any, reason: str | None
) -> tuple[MemberOut, Any]:
    """Run one of ``accounts.admin``'s state changes in a transaction; returns the member's
    view and what the action returned (a mail to send)."""
    svc = services(request)
    async with svc.db.session() as session, session.begin():
        member = await get_member(session, member_id)
        result = await action(
            session,
            svc.clock,
            svc.settings,
            member,
            actor=actor.member_id,
            ip=actor.ip,
            reason=reason,
        )
        view = member_view(member, svc.settings.default_tier)
    return view, result


@router.post(
    "/members/{member_id}/flag",
    response_model=FlaggedOut,
    summary="Flag an account as abnormal: its keys stop, the member is told why",
)
async def flag_member(
    request: Request, member_id: str, actor: AdminActor, body: Reason | None = None
) -> FlaggedOut:
    view, mail = await _act(request, actor, member_id, admin.flag, _reason(body))
    sent = await admin.deliver(services(request).notifier.mail, mail)
    return FlaggedOut(**view.model_dump(), mail_sent=sent)


@router.post("/members/{member_id}/unflag", response_model=MemberOut, summary="Lift a flag")
async def unflag_member(
    request: Request, member_id: str, actor: AdminActor, body: Reason | None = None
) -> MemberOut:
    view, _ = await _act(request, actor, member_id, admin.unflag, _reason(body))
    return view


@router.post(
    "/members/{member_id}/suspend",
    response_model=MemberOut,
    summary="Suspend an account: keys refused, browsers signed out",
)
async def suspend_member(
    request: Request, member_id: str, actor: AdminActor, body: Reason | None = None
) -> MemberOut:
    view, _ = await _act(request, actor, member_id, admin.suspend, _reason(body))
    return view


@router.post(
    "/members/{member_id}/unsuspend", response_model=MemberOut, summary="Lift a suspension"
)
async def unsuspend_member(
    request: Request, member_id: str, actor: AdminActor, body: Reason | None = None
) -> MemberOut:
    view, _ = await _act(request, actor, member_id, admin.unsuspend, _reason(body))
    return view


@router.delete(
    "/members/{member_id}",
    response_model=MemberOut,
    summary="Delete a member: personal data erased, ledger and usage kept (pseudonymised)",
)
async def delete_member(
    request: Request,
    member_id: str,
    actor: AdminActor,
    body: Reason | None = None,
    reason: Annotated[str | None, Query(max_length=500)] = None,
) -> MemberOut:
    given = _reason(body) or reason
    view, _ = await _act(request, actor, member_id, admin.delete_member, given)
    return view


@router.patch(
    "/members/{member_id}", response_model=MemberOut, summary="Change tier or admin rights"
)
async def update_member(
    request: Request, member_id: str, body: MemberPatch, actor: AdminActor
) -> MemberOut:
    svc = services(request)
    changes = body.model_dump(include=body.model_fields_set)
    async with svc.db.session() as session, session.begin():
        member = await get_member(session, member_id)
        await admin.update_member(
            session,
            svc.clock,
            svc.settings,
            member,
            actor=actor.member_id,
            ip=actor.ip,
            changes=changes,
        )
        view = member_view(member, svc.settings.default_tier)
    return view


# ----------------------------------------------------------------------------- invitations


@router.post(
    "/invitations",
    response_model=InvitationCreated,
    status_code=201,
    summary="Invite someone by email (replaces a pending invitation to the same address)",
)
async def create_invitation(
    request: Request, body: InvitationIn, actor: AdminActor
) -> InvitationCreated:
    svc = services(request)
    async with svc.db.session() as session, session.begin():
        inviter = await session.get(Member, actor.member_id)
        invitation, url, mail = await admin.invite(
            session,
            svc.clock,
            svc.ring,
            svc.settings,
            email=body.email,
            inviter=inviter,
            actor=actor.member_id,
            ip=actor.ip,
        )
        view = invitation_view(invitation, svc.clock.now())
    sent = await admin.deliver(svc.notifier.mail, mail)
    return InvitationCreated(**view.model_dump(), url=url, mail_sent=sent)


@router.get("/invitations", response_model=InvitationList, summary="Invitations, newest first")
async def list_invitations(
    request: Request, actor: AdminActor, pending: bool = False
) -> InvitationList:
    svc = services(request)
    async with svc.db.session() as session:
        rows = await invitations.list_invitations(session, pending_only=pending)
    now = svc.clock.now()
    return InvitationList(data=[invitation_view(i, now) for i in rows])


@router.delete(
    "/invitations/{invitation_id}",
    response_model=InvitationOut,
    summary="Withdraw an invitation: its link stops working",
)
async def revoke_invitation(
    request: Request, invitation_id: str, actor: AdminActor
) -> InvitationOut:
    svc = services(request)
    async with svc.db.session() as session, session.begin():
        invitation = await admin.revoke_invitation(
            session, svc.clock, invitation_id, actor=actor.member_id, ip=actor.ip
        )
        view = invitation_view(invitation, svc.clock.now())
    return view


# ----------------------------------------------------------------------------- audit


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first")
async def audit_log(
    request: Request,
    actor: AdminActor,
    target: str | None = None,
    by: Annotated[str | None, Query(description="Only entries by this actor.")] = None,
    action: str | None = None,
    before: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="An entry id: older entries only.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    svc = services(request)
    async with svc.db.session() as session:
        rows = await audit.list_entries(
            session, target, actor=by, action=action, limit=limit + 1, before=before
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        data=[_entry(row) for row in rows],
        has_more=more,
        next_before=rows[-1].id if more and rows else None,
    )


def _entry(row: AuditEntry) -> AuditOut:
    return AuditOut(
        id=row.id,
        at=row.at,
        actor=row.actor,
        ip=row.ip,
        action=row.action,
        target=row.target,
        reason=row.reason,
        data=row.data,
    )
