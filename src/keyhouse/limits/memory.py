"""The in-process store: one worker, no Redis. Same arithmetic as the Redis script.

Everything happens between two awaits, so a decision over several rules is atomic within the
process. Old state is swept as it is touched and by ``sweep()``.
"""

from __future__ import annotations

from keyhouse.limits.rules import Decision, Rule


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._rates: dict[str, tuple[int, int, int]] = {}  # key → (level, at_us, empty_at_us)
        self._days: dict[str, tuple[int, int, int]] = {}  # key → (day_start_us, count, end_us)
        self._slots: dict[str, dict[str, int]] = {}  # key → slot id → expiry_us
        #: key → no slot of it expires before this (a look through its slots, only then).
        self._slots_expire: dict[str, int] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    # ------------------------------------------------------------------ raw values

    def _rate(self, rule: Rule, now_us: int) -> int:
        state = self._rates.get(rule.key)
        if state is None:
            return 0
        level, at, _ = state
        elapsed = now_us - at
        if elapsed < 0:
            elapsed = 0
        if elapsed >= rule.period_us:
            return 0
        level -= elapsed * rule.limit
        return level if level > 0 else 0

    def _day(self, rule: Rule) -> int:
        state = self._days.get(rule.key)
        return state[1] if state is not None and state[0] == rule.day_start_us else 0

    def _live_slots(self, rule: Rule, now_us: int) -> dict[str, int]:
        slots = self._slots.get(rule.key)
        if slots is None:
            return {}
        if now_us >= self._slots_expire.get(rule.key, now_us):
            expired = [slot for slot, expiry in slots.items() if expiry <= now_us]
            for slot in expired:
                del slots[slot]
            self._slots_expire[rule.key] = min(slots.values(), default=now_us)
        return slots

    def _take_slot(self, rule: Rule, slot_id: str, expiry_us: int) -> None:
        slots = self._slots.get(rule.key)
        if slots is None:
            slots = self._slots[rule.key] = {}
            self._slots_expire[rule.key] = expiry_us
        elif not slots or expiry_us < self._slots_expire.get(rule.key, expiry_us):
            self._slots_expire[rule.key] = expiry_us
        slots[slot_id] = expiry_us

    def _value(self, rule: Rule, now_us: int) -> int:
        if rule.kind == "rate":
            return self._rate(rule, now_us)
        if rule.kind == "day":
            return self._day(rule)
        return len(self._live_slots(rule, now_us))

    # ------------------------------------------------------------------ the store interface

    async def acquire(
        self,
        rules: list[Rule],
        costs: list[int],
        now_us: int,
        slot_id: str,
        commit: bool = True,
        extras: list[int] | None = None,
    ) -> Decision:
        return self.decide(rules, costs, now_us, slot_id, commit, extras)

    def decide(
        self,
        rules: list[Rule],
        costs: list[int],
        now_us: int,
        slot_id: str,
        commit: bool = True,
        extras: list[int] | None = None,
    ) -> Decision:
        """``acquire``, for callers that need not await it (the limiter)."""
        # One pass to judge, keeping each rule's value after the request, and, if all agree,
        # one to write. A refusal is judged again, slowly, for its message (``_refused``).
        after: list[int] = []
        for rule, cost in zip(rules, costs):
            kind = rule.kind
            if kind == "rate":
                period = rule.period_us
                value = self._rate(rule, now_us) + cost * period
                if value > rule.limit * period:
                    return self._refused(rules, costs, now_us)
            elif kind == "day":
                value = self._day(rule) + cost
                if value > rule.limit:
                    return self._refused(rules, costs, now_us)
            else:
                value = len(self._live_slots(rule, now_us))
                if value + cost > rule.limit:
                    return self._refused(rules, costs, now_us)
                value += 1 if commit and cost else cost  # a slot is one, taken or not
            after.append(value)
        grants = self._leased(rules, after, extras) if extras is not None and commit else None
        slots: dict[str, str] = {}
        if commit:
            for i, (rule, cost, then) in enumerate(zip(rules, costs, after)):
                grant = grants[i] if grants is not None else 0
                if not cost and not grant:
                    continue
                kind = rule.kind
                if kind == "rate":
                    self._set_rate(rule, then, now_us)
                elif kind == "day":
                    self._days[rule.key] = (rule.day_start_us, then, rule.day_end_us)
                else:
                    expiry = now_us + rule.period_us
                    if cost:
                        self._take_slot(rule, slot_id, expiry)
                        slots[rule.key] = slot_id
                    for j in range(1, grant + 1):  # a lease's slots, named as Redis names them
                        self._take_slot(rule, f"{slot_id}:{j}", expiry)
        return Decision(True, rules, costs, after, [True] * len(rules), now_us, slots, grants)

    @staticmethod
    def _leased(rules: list[Rule], after: list[int], extras: list[int]) -> list[int]:
        """Units leased besides the costs (``limits/lease.py``): as many as asked, or as fit.
        ``after`` is raised by them."""
        grants = []
        for i, (rule, extra) in enumerate(zip(rules, extras)):
            grant = 0
            if extra:
                unit = rule.period_us if rule.kind == "rate" else 1
                room = (rule.limit * unit - after[i]) // unit
                grant = extra if extra < room else room if room > 0 else 0
                after[i] += grant * unit
            grants.append(grant)
        return grants

    def _refused(self, rules: list[Rule], costs: list[int], now_us: int) -> Decision:
        """A refusal, with every rule's value before the request and whether it had room."""
        values = [self._value(rule, now_us) for rule in rules]
        oks = []
        for rule, cost, value in zip(rules, costs, values):
            unit = rule.period_us if rule.kind == "rate" else 1  # a bucket's level: unit·µs
            oks.append(value + cost * unit <= rule.limit * unit)
        return Decision(False, rules, costs, values, oks, now_us)

    def adjust_now(self, rule: Rule, delta: int, now_us: int) -> None:
        """Correct a rule by ``delta`` units (negative gives back), e.g. true tokens vs reserved."""
        if rule.kind == "rate":
            self._set_rate(rule, max(0, self._rate(rule, now_us) + delta * rule.period_us), now_us)
        elif rule.kind == "day":
            count = max(0, self._day(rule) + delta)
            self._days[rule.key] = (rule.day_start_us, count, rule.day_end_us)

    def _set_rate(self, rule: Rule, level: int, now_us: int) -> None:
        self._rates[rule.key] = (level, now_us, now_us + -(-level // rule.limit))

    def release_now(self, rule: Rule, slot_id: str) -> None:
        slots = self._slots.get(rule.key)
        if slots is not None:
            slots.pop(slot_id, None)

    async def apply(self, batch: list[tuple[Rule, str, int | str]], now_us: int) -> None:
        for rule, op, value in batch:
            if op == "release":
                self.release_now(rule, str(value))
            else:
                self.adjust_now(rule, int(value), now_us)

    def sweep(self, now_us: int) -> None:
        """Forget state that no longer limits anything."""
        for key, (_, _, empty_at) in list(self._rates.items()):
            if empty_at <= now_us:
                del self._rates[key]
        for key, (_, _, end) in list(self._days.items()):
            if end <= now_us:
                del self._days[key]
        for key, slots in list(self._slots.items()):
            for slot, expiry in list(slots.items()):
                if expiry <= now_us:
                    del slots[slot]
            if not slots:
                del self._slots[key]
                self._slots_expire.pop(key, None)
