"""Which limits apply to a request: the key's own overrides, the member's tier, the tier's limits
for this model, and the model's ceiling across all members."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from keyhouse.clock import micros
from keyhouse.config import LimitSet, ModelSpec, Settings, Tier
from keyhouse.keys.principal import Principal
from keyhouse.limits.rules import US, Rule


@lru_cache(maxsize=32)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def day_bounds(now: datetime, timezone: str) -> tuple[int, int]:
    """The calendar day around ``now`` in ``timezone``, as absolute microseconds."""
    zone = _zone(timezone)
    today = now.astimezone(zone).date()
    start = datetime.combine(today, time(0), tzinfo=zone)
    end = datetime.combine(today + timedelta(days=1), time(0), tzinfo=zone)
    return micros(start), micros(end)


def rules_of(
    prefix: str, limits: LimitSet, scope: str, day: tuple[int, int], slot_ttl_us: int
) -> list[Rule]:
    rules: list[Rule] = []
    if limits.rpm is not None:
        rules.append(
            Rule(
                f"{prefix}:rpm",
                "rate",
                limits.rpm,
                "requests",
                60 * US,
                label="requests per min (RPM)",
                scope=scope,
            )
        )
    if limits.tpm is not None:
        rules.append(
            Rule(
                f"{prefix}:tpm",
                "rate",
                limits.tpm,
                "tokens",
                60 * US,
                label="tokens per min (TPM)",
                scope=scope,
            )
        )
    if limits.rpd is not None:
        rules.append(
            Rule(
                f"{prefix}:rpd",
                "day",
                limits.rpd,
                "requests",
                0,
                day[0],
                day[1],
                label="requests per day (RPD)",
                scope=scope,
            )
        )
    if limits.max_parallel is not None:
        rules.append(
            Rule(
                f"{prefix}:par",
                "concurrency",
                limits.max_parallel,
                "requests",
                slot_ttl_us,
                label="requests in flight",
                scope=scope,
            )
        )
    return rules


def tier_of(settings: Settings, principal: Principal) -> Tier:
    return settings.tiers.get(principal.tier or "") or settings.tiers[settings.default_tier]


def rules_for(
    settings: Settings, principal: Principal, model: ModelSpec | None, now: datetime
) -> list[Rule]:
    """Every rule this request counts against (``model`` None: the key and member only)."""
    day = day_bounds(now, settings.timezone)
    ttl = int(settings.slot_ttl * US)
    tier = tier_of(settings, principal)
    rules = rules_of(f"k:{principal.key_id}", principal.limits, "with this API key", day, ttl)
    rules += rules_of(f"m:{principal.member_id}", tier.limits, "in your account", day, ttl)
    if model is not None:
        per_model = next((tier.models[n] for n in model.names if n in tier.models), LimitSet())
        rules += rules_of(
            f"mm:{principal.member_id}:{model.name}", per_model, "in your account", day, ttl
        )
        rules += rules_of(f"g:{model.name}", model.limits, "across all members", day, ttl)
    return rules


def costs_for(rules: list[Rule], tokens: int) -> list[int]:
    costs = []  # a loop, not a comprehension: on 3.11 that is a function call, at 2.5x the cost
    for rule in rules:
        costs.append(tokens if rule.dimension == "tokens" else 1)
    return costs


class RuleBook:
    """``rules_for``, remembered: the rules of a (key, model) pair change only when the key, its
    member or the day does, and building them is a tenth of a cheap request."""

    MAX = 10_000

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._day = (0, 0)
        # Keyed by the principal's identity (the authenticator serves the same object until the
        # key changes), held in the entry so that the id stays its own: hashing a Principal's
        # sixteen fields was half of what this costs. Then by the model's name.
        self._rules: dict[int, tuple[Principal, dict[str | None, list[Rule]]]] = {}

    def rules(self, principal: Principal, model: ModelSpec | None, now_us: int) -> list[Rule]:
        """``now_us``: the limiter's time (``Limiter.now_us``), which needs no datetime."""
        if not self._day[0] <= now_us < self._day[1]:
            self._day = day_bounds(_datetime(now_us), self.settings.timezone)
            self._rules.clear()
        entry = self._rules.get(id(principal))
        if entry is None or entry[0] is not principal:
            if len(self._rules) >= self.MAX:
                self._rules.clear()
            entry = self._rules[id(principal)] = (principal, {})
        name = model.name if model is not None else None
        rules = entry[1].get(name)
        if rules is None:
            rules = entry[1][name] = rules_for(self.settings, principal, model, _datetime(now_us))
        return rules


def _datetime(now_us: int) -> datetime:
    return datetime.fromtimestamp(now_us / US, UTC)
