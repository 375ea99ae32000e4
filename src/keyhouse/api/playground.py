"""The playground's server side: chat with the session alone, billed and limited like any call.

A signed-in member has no secret key in the browser, and must not need one. Each member gets
one key named "Playground", made on first use (restricted to chat and the model list; its
secret is thrown away at once, so nothing but this route can use it). It sits in the member's
key list like any other, so its spend shows there, and the member may restrict or revoke it
(the next playground call makes a fresh one). A playground call hands that key's principal
to the very ``/v1`` chat handler — limits, hold, backend, settlement and usage row as for any
client — handing the pipeline a principal it authenticated itself (``Answer(…, on_behalf=)``),
which only in-process code can do.

``GET /api/usage/requests/{id}`` reads back what one of the member's own requests cost, from
its usage row (written within a flush interval of the reply's end): the playground shows it
under each reply, the API tester under each call.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from keyhouse.accounts.refusals import Refused
from keyhouse.api import v1
from keyhouse.api.deps import CurrentActor, services
from keyhouse.api.member_keys import may_create_keys
from keyhouse.api.pipeline import Answer
from keyhouse.api.usage import key_or_session_reader
from keyhouse.billing.money import show
from keyhouse.db.models import ApiKey, Member, UsageRecord
from keyhouse.errors import NotFound
from keyhouse.keys import store
from keyhouse.keys.auth import check_member, principal_from
from keyhouse.keys.principal import MODELS_READ, Principal

router = APIRouter(tags=["playground"])

#: The name of each member's playground key (data, not a translated string).
KEY_NAME = "Playground"
CHAT = "chat.completions"


async def find_playground_key(
    session: AsyncSession, member_id: str, now: datetime
) -> ApiKey | None:
    """The member's newest live key named "Playground", if any."""
    query = (
        select(ApiKey)
        .where(
            ApiKey.member_id == member_id,
            ApiKey.name == KEY_NAME,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
        .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalars().first()


async def playground_principal(request: Request, member_id: str) -> Principal:
    """The principal of the member's playground key, made now if there is none. Read from the
    database each time (a person's pace), so a revoke or a flag applies at once."""
    svc = services(request)
    now = svc.clock.now()
    async with svc.db.session() as session, session.begin():
        member = await session.get(Member, member_id)
        if member is None or member.deleted_at is not None:
            raise Refused("not_signed_in", status=401)
        key = await find_playground_key(session, member_id, now)
        if key is None:
            may_create_keys(member, svc.settings)  # the refusal the member can act on
            key, _secret = await store.create_key(
                session,
                svc.clock,
                svc.ring,
                member,
                name=KEY_NAME,
                rules=store.KeyRules("restricted", (CHAT, MODELS_READ)),
            )
            del _secret  # nobody ever sees it: only this route uses the key
        principal = principal_from(key, member)
    check_member(principal, svc.settings.public_url)
    svc.auth.mark_used(principal.key_id)
    return principal


@router.post(
    "/playground/chat/completions",
    summary="Chat as the signed-in member (the playground)",
    description=(
        "The body and answer of `POST /v1/chat/completions` (streaming included), sent with "
        "the session cookie and `X-CSRF-Token` instead of a key. The call is made with the "
        'member\'s "Playground" key (created on first use), so it is limited, billed and '
        "recorded like any other."
    ),
)
async def playground_chat(request: Request, actor: CurrentActor) -> Response:
    principal = await playground_principal(request, actor.member_id)
    return Answer(v1.chat_completions, request, on_behalf=principal)


class PlaygroundModel(BaseModel):
    id: str
    #: Per 1M tokens, in the currency.
    input_price: str
    output_price: str
    default_max_tokens: int
    context_length: int
    #: What a request that names no temperature gets (the model's default, else OpenAI's 1).
    default_temperature: float = 1.0


class PlaygroundModels(BaseModel):
    object: str = "list"
    currency: str
    data: list[PlaygroundModel]


def chat_models(svc: object, allow: frozenset[str] | None) -> list[PlaygroundModel]:
    """Every chat model name (aliases included) a key with this allow-list may use."""
    catalog = svc.catalog  # type: ignore[attr-defined]
    return [
        PlaygroundModel(
            id=name,
            input_price=price(spec.input_price),
            output_price=price(spec.output_price),
            default_max_tokens=spec.default_max_tokens,
            context_length=spec.context_length,
            default_temperature=1.0
            if spec.default_temperature is None
            else spec.default_temperature,
        )
        for name, spec in catalog.names()
        if CHAT in spec.endpoints and (allow is None or not allow.isdisjoint(spec.names))
    ]


def price(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


@router.get(
    "/playground/models",
    response_model=PlaygroundModels,
    summary="The chat models the signed-in member may use in the playground",
)
async def playground_models(request: Request, actor: CurrentActor) -> PlaygroundModels:
    svc = services(request)
    async with svc.db.session() as session:
        key = await find_playground_key(session, actor.member_id, svc.clock.now())
    allow = frozenset(key.models) if key is not None and key.models is not None else None
    return PlaygroundModels(currency=svc.settings.currency, data=chat_models(svc, allow))


class RequestUsage(BaseModel):
    request_id: str
    model: str
    key_id: str
    at: datetime
    status: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: str
    cost_micros: int
    currency: str
    latency_ms: int
    ttft_ms: int | None


@router.get(
    "/usage/requests/{request_id}",
    response_model=RequestUsage,
    tags=["usage"],
    summary="What one of your requests used and cost (by its x-request-id)",
    description=(
        "404 `request_not_found` until the request's usage is written (within a fraction of "
        "a second of its end), and for requests that are not yours."
    ),
)
async def request_usage(request: Request, request_id: str) -> RequestUsage:
    svc = services(request)
    who = await key_or_session_reader(request)
    async with svc.db.session() as session:
        row = (
            (
                await session.execute(
                    select(UsageRecord).where(UsageRecord.request_id == request_id[:64])
                )
            )
            .scalars()
            .first()
        )
    if row is None or row.member_id != who.member_id:
        raise NotFound(f"no usage recorded for {request_id!r} yet", code="request_not_found")
    return RequestUsage(
        request_id=row.request_id,
        model=row.model,
        key_id=row.key_id,
        at=row.at,
        status=row.status,
        prompt_tokens=row.prompt_tokens,
        cached_tokens=row.cached_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.prompt_tokens + row.completion_tokens,
        cost=show(row.cost),
        cost_micros=row.cost,
        currency=svc.settings.currency,
        latency_ms=row.latency_ms,
        ttft_ms=row.ttft_ms,
    )
