"""Leases: a share of each limit, taken from the store ahead and spent here without asking.

With Redis, every limited request used to wait for a round trip. Now, when a request does ask its
store, it also asks for a *lease* on each rule it counts against: a few more units (``share`` of
the rule's limit), counted in the store like any others, then spent in this process by the
requests that follow, until they run out or ``lifetime`` has passed. Then the first request
renews the lease while the others go on spending it, and a lease nobody renews goes back. The
in-process store is leased from the same way: spending a lease costs less than working out a
bucket's level.

Why a limit still holds across workers and replicas: a unit is spent here only after the store
has counted it, so all processes together never admit more than the limit. What leases cost:

- near a limit, units one process holds are not another's for up to ``lifetime`` (it may refuse
  a request that the limit still had room for, by at most the other processes' leases);
- one process's rate-limit headers see another's requests only at its next round trip.

Only rules whose share comes to two units or more lease, so a limit of 60 a minute at the
default 1 % is asked of the store every time, exactly as without leases.

A process alone is exact: what it holds is subtracted from what the store says
(``Lease.value``), and a request that needs more than a lease holds takes the lease's units and
asks the store for the rest. A concurrency rule's lease is a handful of slots taken in the
store, handed to requests here and taken back when they end, while they are younger than a
quarter of the slot's lifetime (a slot expires that long after it was taken, whoever holds it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keyhouse.limits.rules import Admission, Rule

#: A concurrency rule's lease: at most this many slots (in Redis, each a member of a sorted set).
MAX_SLOTS = 64

#: What ``plan`` took from a lease for one rule: units, or a slot and when it was taken.
Taken = int | tuple[str, int] | None


@dataclass(slots=True)
class Lease:
    rule: Rule
    #: Units in hand (rate and day rules): counted in the store, not yet spent here.
    units: int
    #: The rule's value in the store just after the last grant (a bucket's level in unit·µs).
    seen: int
    at_us: int
    #: Renewed by the first request after this, and given back if none comes.
    until_us: int
    #: Concurrency: slots taken in the store and free here, with when each was taken.
    slots: list[tuple[str, int]] = field(default_factory=list)
    #: Units asked for and not yet granted: requests in flight fill the lease up, not each
    #: of them (at a lease's renewal, all that arrive meanwhile spend what it still holds).
    asking: int = 0
    #: The rule's share (``Leases.size``), kept here: corrections and releases ask for it.
    size: int = 0

    def value(self, now_us: int) -> int:
        """What this process knows of the rule's value: the store's, less what it holds."""
        rule = self.rule
        kind = rule.kind
        if kind == "rate":
            elapsed = now_us - self.at_us
            if elapsed < 0:
                elapsed = 0
            if elapsed >= rule.period_us:
                return 0
            value = self.seen - elapsed * rule.limit - self.units * rule.period_us
        elif kind == "day":
            value = self.seen - self.units
        else:
            value = self.seen - len(self.slots)
        return value if value > 0 else 0

    def told(self, units: int) -> None:
        """The store is told of ``units`` more (or fewer) spent outside this lease (a
        correction, a slot freed): what this process knows of its value follows."""
        seen = self.seen + units * (self.rule.period_us if self.rule.kind == "rate" else 1)
        self.seen = seen if seen > 0 else 0

    def held(self) -> int:
        """What this process holds, in the rule's raw value (unit·µs for a bucket)."""
        kind = self.rule.kind
        if kind == "rate":
            return self.units * self.rule.period_us
        return self.units if kind == "day" else len(self.slots)


class Leases:
    """Every lease of a process, by rule key. Nothing here awaits: a request that its leases
    cover is decided between two awaits (``take``), as the in-process store decides."""

    def __init__(self, share: float, lifetime_us: int) -> None:
        self.share = share
        self.lifetime_us = lifetime_us
        self._held: dict[str, Lease] = {}
        #: Slots handed to requests here → when the store took them (for ``release``).
        self._born: dict[str, int] = {}
        #: What goes back to the store with the next ``due`` besides due leases.
        self._returns: list[tuple[Rule, str, int | str]] = []

    def size(self, rule: Rule) -> int:
        """The lease a rule asks for: its ``share``, if that is two units or more."""
        units = int(rule.limit * self.share)
        if rule.kind == "concurrency" and units > MAX_SLOTS:
            units = MAX_SLOTS
        return units if units >= 2 else 0

    def _lease(self, rule: Rule) -> Lease | None:
        """The rule's lease, brought up to the rule (a new day voids it, a new limit bounds it).
        ``take`` inlines its first two lines: it runs for every rule of every request."""
        lease = self._held.get(rule.key)
        if lease is None or lease.rule is rule:
            return lease
        if lease.rule.day_start_us != rule.day_start_us:  # a new day: the old one's are void
            del self._held[rule.key]
            return None
        # The same counter under a changed limit: its units are still units, but no more than
        # the new limit's share may be spent (a limit cut from 100,000 to 100 a minute must not
        # let a thousand through); the rest goes back.
        lease.rule = rule
        lease.size = size = self.size(rule)
        if lease.units > size:
            self._returns.append((rule, "adjust", size - lease.units))
            lease.told(size - lease.units)
            lease.units = size
        while len(lease.slots) > size:
            self._returns.append((rule, "release", lease.slots.pop()[0]))
            lease.told(-1)
        return lease

    # ------------------------------------------------------------------ the request path

    def take(self, rules: list[Rule], costs: list[int], now_us: int) -> Admission | None:
        """Admit a request from leases alone, or None when one of its rules needs the store."""
        held = self._held
        values: list[int] = []
        slots: dict[str, str] = {}
        # One pass that takes as it goes (every request's path); a rule that its lease cannot
        # cover puts back what the rules before it took (``_untake``). Each value is
        # ``Lease.value``'s, inlined: a call per rule was a fifth of this.
        for rule, cost in zip(rules, costs):
            lease = held.get(rule.key)
            if lease is not None and lease.rule is not rule:  # another day, or a new limit
                lease = self._lease(rule)
            if lease is None or (lease.until_us <= now_us and not lease.asking):
                return self._untake(rules, costs, len(values), slots)  # due: this one renews
            kind = rule.kind
            if kind == "rate":
                units = lease.units - cost
                if units < 0:
                    return self._untake(rules, costs, len(values), slots)
                lease.units = units
                elapsed = now_us - lease.at_us
                if elapsed < 0:
                    elapsed = 0
                value = (
                    lease.seen - elapsed * rule.limit - units * rule.period_us
                    if elapsed < rule.period_us
                    else 0
                )
            elif kind == "day":
                units = lease.units - cost
                if units < 0:
                    return self._untake(rules, costs, len(values), slots)
                lease.units = units
                value = lease.seen - units
            else:
                free = lease.slots
                if cost:
                    if not free:
                        return self._untake(rules, costs, len(values), slots)
                    slot, born = free.pop()
                    slots[rule.key] = slot
                    self._born[slot] = born
                value = lease.seen - len(free)
            values.append(value if value > 0 else 0)
        return Admission(rules, costs, values, now_us, slots)

    def _untake(self, rules: list[Rule], costs: list[int], n: int, slots: dict[str, str]) -> None:
        """Put back what ``take`` took from the first ``n`` rules' leases."""
        for rule, cost in zip(rules[:n], costs[:n]):
            lease = self._held[rule.key]
            if rule.kind != "concurrency":
                lease.units += cost
            elif rule.key in slots:
                slot = slots[rule.key]
                lease.slots.append((slot, self._born.pop(slot)))
        return None

    def plan(
        self, rules: list[Rule], costs: list[int], now_us: int
    ) -> tuple[list[int], list[int], list[Taken]]:
        """Before a round trip: what each rule takes here (``taken``), what it asks of the store
        (``asks``: the rest) and how big a lease it asks for besides (enough to fill it up)."""
        asks: list[int] = []
        extras: list[int] = []
        taken: list[Taken] = []
        for rule, cost in zip(rules, costs):
            size = self.size(rule)
            lease = self._lease(rule)
            if lease is None and size:  # to count what is asked for until it is granted
                lease = self._held[rule.key] = Lease(rule, 0, 0, now_us, 0, size=size)
            if rule.kind == "concurrency":
                slot = lease.slots.pop() if cost and lease is not None and lease.slots else None
                taken.append(slot)
                asks.append(0 if slot is not None else cost)
                have = len(lease.slots) if lease is not None else 0
            else:
                use = min(lease.units, cost) if lease is not None else 0
                if use:
                    lease.units -= use  # type: ignore[union-attr]
                taken.append(use)
                asks.append(cost - use)
                have = lease.units if lease is not None else 0
            extra = size - have - lease.asking if lease is not None else 0
            if extra > 0:
                lease.asking += extra  # type: ignore[union-attr]
            extras.append(extra if extra > 0 else 0)
        return asks, extras, taken

    def undo(self, rules: list[Rule], taken: list[Taken], extras: list[int], now_us: int) -> None:
        """Put back what ``plan`` took, the round trip having refused or failed. A lease given
        back meanwhile is made again, already due, so that these go back to the store too."""
        for rule, got, extra in zip(rules, taken, extras):
            lease = self._lease(rule)
            if lease is not None and extra:
                lease.asking = lease.asking - extra if lease.asking > extra else 0
            if not got:
                continue
            if lease is None:
                lease = self._held[rule.key] = Lease(
                    rule, 0, 0, now_us, now_us, size=self.size(rule)
                )
            if isinstance(got, tuple):
                lease.slots.append(got)
            else:
                lease.units += got

    def granted(
        self,
        rules: list[Rule],
        asks: list[int],
        extras: list[int],
        taken: list[Taken],
        values: list[int],
        grants: list[int],
        now_us: int,
        slot_id: str,
    ) -> tuple[list[int], dict[str, str]]:
        """After an admitting round trip: keep what the store granted; each rule's value as this
        process knows it (for the headers), and the request's slots."""
        after: list[int] = []
        slots: dict[str, str] = {}
        for i, rule in enumerate(rules):
            ask, got, value, grant = asks[i], taken[i], values[i], grants[i]
            size = self.size(rule)
            lease = self._lease(rule)
            if lease is not None and extras[i]:
                lease.asking = lease.asking - extras[i] if lease.asking > extras[i] else 0
            if rule.kind == "concurrency" and (got is not None or ask):
                slot, born = got if isinstance(got, tuple) else (slot_id, now_us)
                slots[rule.key] = slot
                if size:
                    self._born[slot] = born
            if lease is None:
                if not (size or grant):
                    after.append(value)
                    continue
                lease = self._held[rule.key] = Lease(rule, 0, value, now_us, now_us, size=size)
            if grant:
                if rule.kind == "concurrency":
                    lease.slots += [(f"{slot_id}:{j}", now_us) for j in range(1, grant + 1)]
                else:
                    lease.units += grant
                lease.until_us = now_us + self.lifetime_us
            lease.seen = value
            lease.at_us = now_us
            after.append(lease.value(now_us))
        return after, slots

    def own(self, rules: list[Rule], values: list[int]) -> list[int]:
        """The store's values, less what this process holds of them: what it has spent."""
        out = []
        for rule, value in zip(rules, values):
            lease = self._lease(rule)
            if lease is not None:
                value -= lease.held()
            out.append(value if value > 0 else 0)
        return out

    # ------------------------------------------------------------------ when a request ends

    def correct(self, rule: Rule, delta: int) -> int:
        """Correct a token rule by ``delta`` units against its lease; what is left for the
        store. Units over-reserved go into the lease (the store counted them: they are ours to
        spend), up to twice its share; the rest goes back."""
        lease = self._lease(rule)
        if lease is None:
            return delta
        if delta < 0:
            room = 2 * lease.size - lease.units
            keep = -delta if -delta < room else room if room > 0 else 0
            lease.units += keep
            rest = delta + keep
        else:
            use = delta if delta < lease.units else lease.units
            lease.units -= use
            rest = delta - use
        if rest:
            lease.told(rest)
        return rest

    def release(self, rule: Rule, slot: str, now_us: int) -> bool:
        """Take a request's slot back into the lease (True), or leave it for the store to free."""
        born = self._born.pop(slot, None)
        lease = self._lease(rule)
        if lease is None:
            return False
        if (
            born is None
            or lease.until_us <= now_us
            or now_us - born >= rule.period_us // 4
            or len(lease.slots) >= lease.size
        ):
            lease.told(-1)  # freed in the store
            return False
        lease.slots.append((slot, born))
        return True

    def due(self, now_us: int) -> list[tuple[Rule, str, int | str]]:
        """Leases past their lifetime, as what gives them back (``Store.apply``'s batch)."""
        batch, self._returns = self._returns, []
        for key, lease in list(self._held.items()):
            if lease.until_us > now_us or lease.asking:
                continue
            del self._held[key]
            rule = lease.rule
            if rule.kind == "concurrency":
                batch += [(rule, "release", slot) for slot, _ in lease.slots]
            elif lease.units and not (rule.kind == "day" and now_us >= rule.day_end_us):
                batch.append((rule, "adjust", -lease.units))
        return batch
