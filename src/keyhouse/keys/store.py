"""Keys in the database: create (the secret returned once), list, update, revoke.

Every change that affects authentication is recorded on the change counter in the same
transaction, so running servers drop their cached copy within a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyhouse.clock import Clock
from keyhouse.config import LimitSet, parse_networks
from keyhouse.db.changes import KEY, record_change
from keyhouse.db.models import ApiKey, Member
from keyhouse.errors import ConfigError, InvalidRequest, NotFound
from keyhouse.ids import new_id
from keyhouse.keys import tokens
from keyhouse.keys.principal import ENDPOINTS, PERMISSIONS, RESTRICTED
from keyhouse.keys.secrets import SecretRing


@dataclass(frozen=True)
class KeyRules:
    """What a key may do; validated before it is stored."""

    permissions: str = "all"
    endpoints: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    ip_allow: tuple[str, ...] | None = None

    def validated(self) -> KeyRules:
        if self.permissions not in PERMISSIONS:
            raise InvalidRequest(
                f"permissions must be one of {', '.join(PERMISSIONS)}", param="permissions"
            )
        endpoints = None
        if self.permissions == RESTRICTED:
            endpoints = tuple(dict.fromkeys(self.endpoints or ()))
            if not endpoints:
                raise InvalidRequest(
                    "a restricted key needs at least one endpoint "
                    f"(choose from {', '.join(ENDPOINTS)})",
                    param="endpoints",
                )
        elif self.endpoints:
            raise InvalidRequest("endpoints apply to restricted keys only", param="endpoints")
        for endpoint in endpoints or ():
            if endpoint not in ENDPOINTS:
                raise InvalidRequest(
                    f"unknown endpoint {endpoint!r} (choose from {', '.join(ENDPOINTS)})",
                    param="endpoints",
                )
        models = tuple(dict.fromkeys(self.models)) if self.models else None
        ip_allow = None
        if self.ip_allow:
            try:
                ip_allow = tuple(str(n) for n in parse_networks(list(self.ip_allow)))
            except ConfigError as exc:
                raise InvalidRequest(str(exc), param="ip_allow") from None
        return KeyRules(self.permissions, endpoints, models, ip_allow)


def checked_limits(limits: LimitSet) -> LimitSet:
    for name in ("rpm", "tpm", "rpd", "max_parallel"):
        value = getattr(limits, name)
        if value is not None and value < 1:
            raise InvalidRequest(f"{name} must be at least 1 (or no limit at all)", param=name)
    return limits


def _list(values: Iterable[str] | None) -> list[str] | None:
    return list(values) if values is not None else None


async def create_key(
    session: AsyncSession,
    clock: Clock,
    ring: SecretRing,
    member: Member,
    *,
    name: str,
    rules: KeyRules | None = None,
    expires_at: datetime | None = None,
    limits: LimitSet | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the secret, which is never available again."""
    rules = (rules or KeyRules()).validated()
    limits = checked_limits(limits or LimitSet())
    now = clock.now()
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("the expiry must be in the future", param="expires_at")
    secret = tokens.mint()
    key = ApiKey(
        id=new_id("key_"),
        member_id=member.id,
        name=name,
        key_hash=ring.hash(secret),
        secret_id=ring.current_id,
        redacted=tokens.redacted(secret),
        permissions=rules.permissions,
        endpoints=_list(rules.endpoints),
        models=_list(rules.models),
        ip_allow=_list(rules.ip_allow),
        created_at=now,
        expires_at=expires_at,
        rpm=limits.rpm,
        tpm=limits.tpm,
        rpd=limits.rpd,
        max_parallel=limits.max_parallel,
    )
    session.add(key)
    await session.flush()
    # A server may hold a negative cache entry for this hash; the change clears it.
    await record_change(session, KEY, key.id, now)
    return key, secret


async def get_key(session: AsyncSession, key_id: str) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key {key_id!r}", code="key_not_found")
    return key


async def list_keys(session: AsyncSession, member_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if member_id is not None:
        query = query.where(ApiKey.member_id == member_id)
    return list((await session.execute(query)).scalars())


async def revoke_key(session: AsyncSession, clock: Clock, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = clock.now()
    await record_change(session, KEY, key.id, clock.now())


_UNSET: object = object()


async def update_key(
    session: AsyncSession,
    clock: Clock,
    key: ApiKey,
    *,
    name: str | None = None,
    rules: KeyRules | None = None,
    expires_at: datetime | object | None = _UNSET,
    limits: LimitSet | None = None,
) -> None:
    """Change what is given; ``limits`` replaces the key's overrides (None fields: no limit)."""
    if name is not None:
        key.name = name
    if limits is not None:
        limits = checked_limits(limits)
        key.rpm, key.tpm, key.rpd, key.max_parallel = (
            limits.rpm,
            limits.tpm,
            limits.rpd,
            limits.max_parallel,
        )
    if rules is not None:
        rules = rules.validated()
        key.permissions = rules.permissions
        key.endpoints = _list(rules.endpoints)
        key.models = _list(rules.models)
        key.ip_allow = _list(rules.ip_allow)
    if expires_at is not _UNSET:
        key.expires_at = expires_at  # type: ignore[assignment]
    await record_change(session, KEY, key.id, clock.now())
