"""Which rules a request counts against: key overrides, the member's tier, per-model limits
(found under any of the model's names), the model's ceiling; days in the org's timezone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from keyhouse.config import LimitSet
from keyhouse.keys.principal import Principal
from keyhouse.limits.policy import RuleBook, costs_for, day_bounds, rules_for
from keyhouse.limits.rules import US
from tests.conftest import make_settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def principal(tier: str | None = None, limits: LimitSet = LimitSet()) -> Principal:
    return Principal(
        key_id="key_1",
        member_id="mem_1",
        is_admin=False,
        member_status="active",
        permissions="all",
        endpoints=None,
        models=None,
        ip_allow=None,
        expires_at=None,
        redacted="sk-kh-…",
        tier=tier,
        limits=limits,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keyhouse.toml"
    path.write_text(text)
    return path


def test_the_built_in_default_tier(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    model = settings.models[0]
    rules = rules_for(settings, principal(), model, NOW)
    assert {r.key for r in rules} == {"m:mem_1:rpm", "m:mem_1:tpm", "m:mem_1:par"}
    assert {r.limit for r in rules} == {600, 2_000_000, 16}


def test_everything_that_applies(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        """
[tiers.default]
rpm = 10
[tiers.gold]
rpm = 100
rpd = 1000
[tiers.gold.models."gpt-3.5-turbo"]
rpm = 5

[[models]]
name = "smollm2-135m-instruct"
aliases = ["gpt-3.5-turbo"]
backend = "local"
limits = { rpm = 300, max_parallel = 2 }
""",
    )
    settings = make_settings(tmp_path, KEYHOUSE_CONFIG=str(config))
    model = settings.models[0]
    who = principal("gold", LimitSet(rpm=3, tpm=9000))
    rules = {r.key: r for r in rules_for(settings, who, model, NOW)}
    assert rules["k:key_1:rpm"].limit == 3 and rules["k:key_1:tpm"].limit == 9000
    assert rules["m:mem_1:rpm"].limit == 100 and rules["m:mem_1:rpd"].kind == "day"
    # per-model limits of a tier may name the model by an alias
    assert rules["mm:mem_1:smollm2-135m-instruct:rpm"].limit == 5
    assert rules["g:smollm2-135m-instruct:rpm"].limit == 300
    assert rules["g:smollm2-135m-instruct:par"].kind == "concurrency"
    assert rules["g:smollm2-135m-instruct:par"].scope == "across all members"
    # an unknown tier (removed from the file since) falls back to the default tier
    fallback = {r.key: r for r in rules_for(settings, principal("gone"), None, NOW)}
    assert fallback == {"m:mem_1:rpm": fallback["m:mem_1:rpm"]}
    assert fallback["m:mem_1:rpm"].limit == 10


def test_costs() -> None:
    settings_rules = [
        r for r in rules_for(make_settings(Path("/nonexistent")), principal(), None, NOW)
    ]
    assert costs_for(settings_rules, 700) == [
        700 if r.dimension == "tokens" else 1 for r in settings_rules
    ]


def test_day_bounds_in_the_org_timezone() -> None:
    start, end = day_bounds(datetime(2026, 3, 1, 15, 30, tzinfo=UTC), "Asia/Shanghai")
    # 23:30 on 1 March in Shanghai: that day began at 16:00 UTC the day before
    assert datetime.fromtimestamp(start / US, UTC) == datetime(2026, 2, 28, 16, 0, tzinfo=UTC)
    assert end - start == 86_400 * US
    # a day with a DST change is 23 hours long
    start, end = day_bounds(datetime(2026, 3, 29, 12, 0, tzinfo=UTC), "Europe/Berlin")
    assert end - start == 23 * 3600 * US


def test_the_rule_book_remembers_per_key_and_model_until_the_day_changes(tmp_path: Path) -> None:
    config = write(tmp_path, "[tiers.default]\nrpm = 10\nrpd = 100\n")
    settings = make_settings(tmp_path, KEYHOUSE_CONFIG=str(config))
    model = settings.models[0]
    book = RuleBook(settings)
    now_us = int(NOW.timestamp() * US)
    who = principal()
    first = book.rules(who, model, now_us)
    assert book.rules(who, model, now_us + 1000) is first  # remembered
    assert book.rules(who, None, now_us) is not first  # another model: its own list
    assert book.rules(who, None, now_us) == rules_for(settings, who, None, NOW)
    # the same key made again (its row changed): its rules are made again
    assert book.rules(principal(), model, now_us) is not first
    # the next day (UTC here): the day rule's bounds move
    tomorrow = book.rules(who, model, now_us + 86_400 * US)
    day = next(r for r in tomorrow if r.kind == "day")
    assert day.day_start_us == next(r for r in first if r.kind == "day").day_start_us + 86_400 * US
