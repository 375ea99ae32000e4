"""Credit a member adds themselves: redeeming a code an administrator handed out.

``POST /api/billing/redeem`` with a session (the dashboard) or an admin token. Each code is
redeemed once, by one member, whoever races for it (``billing.codes.redeem``); guesses are
throttled per client IP like verification codes.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from keyhouse.accounts import flows
from keyhouse.api.deps import CurrentActor, ip_of, services
from keyhouse.billing import codes, ledger
from keyhouse.billing.money import show

router = APIRouter(prefix="/billing", tags=["credit"])


class RedeemIn(BaseModel):
    code: str = Field(examples=["KH-7QXM-2R8D-KD3T-9WCF"], max_length=64)


class Redeemed(BaseModel):
    #: What the code added, in the currency, and in micro-units.
    amount: str
    amount_micros: int
    expires_at: datetime | None
    balance: str
    balance_micros: int
    currency: str


@router.post("/redeem", response_model=Redeemed, summary="Redeem a credit code")
async def redeem(request: Request, body: RedeemIn, actor: CurrentActor) -> Redeemed:
    svc = services(request)
    await flows.throttle_attempts(svc, ip_of(request))
    async with svc.db.session() as session, session.begin():
        lot = await codes.redeem(session, svc.ring, actor.member_id, body.code, svc.clock.now())
        balance = await ledger.balance_of(session, actor.member_id)
    return Redeemed(
        amount=show(lot.amount),
        amount_micros=lot.amount,
        expires_at=lot.expires_at,
        balance=show(balance),
        balance_micros=balance,
        currency=svc.settings.currency,
    )
