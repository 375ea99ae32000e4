"""Who is calling, and what their key may do. Built from the database, served from memory."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from keyhouse.config import NO_LIMITS, IPNetwork, LimitSet

#: Endpoint scopes a key may be restricted to.
MODELS_READ = "models.read"
#: Reading the member's own usage, balance and dashboards (read-only keys may).
USAGE_READ = "usage.read"
ENDPOINTS = (
    "models.read",
    "chat.completions",
    "completions",
    "embeddings",
    "responses",
    "usage.read",
    "images.generations",
    "audio.transcriptions",
    "audio.speech",
)
#: What a read-only key may call.
READ_SCOPES = frozenset({MODELS_READ, USAGE_READ})

ALL = "all"
RESTRICTED = "restricted"
READ_ONLY = "read-only"
PERMISSIONS = (ALL, RESTRICTED, READ_ONLY)


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending limit: ``hard`` refuses, ``soft`` tells (micro-units) — per day, per month, or
    for good (``period`` None)."""

    period: str | None
    hard: int | None
    soft: int | None

    @classmethod
    def of(cls, period: str | None, hard: int | None, soft: int | None) -> Budget | None:
        return cls(period, hard, soft) if hard is not None or soft is not None else None


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    member_id: str
    is_admin: bool
    member_status: str
    permissions: str
    #: For restricted keys: the endpoints allowed. None: not restricted by endpoint.
    endpoints: frozenset[str] | None
    #: Public model names allowed; None: every model.
    models: frozenset[str] | None
    ip_allow: tuple[IPNetwork, ...] | None
    expires_at: datetime | None
    redacted: str
    #: The member's tier (None: the default tier) and the key's own limit overrides.
    tier: str | None = None
    limits: LimitSet = NO_LIMITS
    member_budget: Budget | None = None
    key_budget: Budget | None = None
    #: An admin token: may call the management API as an administrator.
    admin: bool = False

    def may_call(self, endpoint: str) -> bool:
        if self.permissions == ALL:
            return True
        if self.permissions == READ_ONLY:
            return endpoint in READ_SCOPES
        return self.endpoints is not None and endpoint in self.endpoints

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def ip_allowed(self, ip: str | None) -> bool:
        if self.ip_allow is None:
            return True
        if ip is None:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.ip_allow)
