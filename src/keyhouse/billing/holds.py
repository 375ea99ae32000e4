"""What the wallet keeps in memory: accounts with their leased credit, holds, settlements.

Plain data, no database: the wallet changes them, the flush writes them, the usage rows are
made of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

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


#: A settled request as the wallet queues it for the flush, and as the flush writes it: plain
#: values only, its accounts by name. The queue keeps ~1,000 of them between two flushes; as
#: objects (a settlement, its hold and usage) each was walked by every pass of the cyclic garbage
#: collector until the flush, while a tuple of plain values is untracked at its first; and the
#: flush reads them as they are, where making three objects of each had been a sixth of its
#: work (``bench/README.md``). The fields are named by the indexes below.
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
    int,
    str | None,
    int,
    int | None,
    int,
    int,
    int | None,
]

#: The fields of a ``Queued`` settlement. ``AMOUNT``: what was held; ``ACCOUNTS``: the names of
#: the accounts held against; ``ESTIMATED``: the usage was counted here, not reported; ``AT``:
#: when it was settled, in whole microseconds since the epoch (``clock.micros``: a ``datetime``
#: cost three times as much to read from the clock and to pickle for the helper, and the
#: flush's quarter hours are then one integer division);
#: ``OVERSHOOT``: what was charged above the hold; ``ORG_COST``: what the request cost the
#: organisation (the deployment's ``cost`` prices; None: unknown).
(
    REQUEST_ID,
    MEMBER_ID,
    KEY_ID,
    MODEL,
    PRICE_VERSION,
    AMOUNT,
    ACCOUNTS,
    COST,
    PROMPT_TOKENS,
    COMPLETION_TOKENS,
    CACHED_TOKENS,
    ESTIMATED,
    AT,
    DEPLOYMENT,
    LATENCY_MS,
    TTFT_MS,
    STATUS,
    OVERSHOOT,
    ORG_COST,
) = range(19)
