"""What the wallet keeps in memory: accounts with their leased credit, holds, settlements.

Plain data, no database: the wallet changes them, the flush writes them, the usage rows are
made of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from keyhouse.backends.base import Usage
from keyhouse.billing.money import Prices


@dataclass(eq=False)
class Account:
    """One thing credit is held against: a member's balance, or a budget for one period
    (named as ``billing.names`` says)."""

    name: str
    member_id: str
    #: Budgets: the hard limit of the period. Balances: None (the balance is the limit).
    limit: int | None = None
    soft: int | None = None
    lease_id: str | None = None
    #: Credit this process leased, what requests hold of it now, and what they were charged
    #: that the next flush has yet to write.
    leased: int = 0
    held: int = 0
    pending: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def free(self) -> int:
        return self.leased - self.held - self.pending

    @property
    def is_budget(self) -> bool:
        return self.limit is not None


#: A hold on no account (billing off, or meter-only): one shared, never-changed empty tuple.
NO_ACCOUNTS: tuple[Account, ...] = ()


@dataclass(slots=True, eq=False)
class Hold:
    request_id: str
    member_id: str
    key_id: str
    model: str
    prices: Prices
    price_version: int | None
    accounts: Sequence[Account]
    amount: int
    #: The output the backend may produce (None: as the request asked).
    max_output: int | None = None
    settled: bool = False


@dataclass(slots=True, eq=False)
class Settlement:
    """A settled request, waiting for the flush to write its usage row and charge."""

    hold: Hold
    cost: int
    usage: Usage
    at: datetime
    deployment: str | None
    latency_ms: int
    ttft_ms: int | None
    status: int
    #: What was charged above the hold (0 when the hold covered it).
    overshoot: int = 0
    #: What the request cost the organisation (the deployment's ``cost`` prices); None: unknown.
    org_cost: int | None = None


#: A settlement as the wallet queues it for the flush: plain values only, its accounts by
#: name. The queue keeps ~1,000 of them between two flushes; as objects (a ``Settlement``, its
#: ``Hold`` and ``Usage``) each was walked by every pass of the cyclic garbage collector until
#: the flush, while a tuple of plain values is untracked at its first (``bench/README.md``).
#: The fields: request id, member, key, model, price version, amount held, account names,
#: cost, prompt, completion and cached tokens, estimated, at, deployment, latency and time to
#: first token in ms, status, overshoot, the organisation's cost. ``billing.writer`` sends
#: them to the flush as they are and makes ``Settlement``s of them there.
Queued = tuple[
    str,
    str,
    str,
    str,
    int | None,
    int,
    tuple[str, ...],
    int,
    int,
    int,
    int,
    bool,
    datetime,
    str | None,
    int,
    int | None,
    int,
    int,
    int | None,
]
