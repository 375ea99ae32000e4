"""The limiter's arithmetic on both stores: exact boundaries, headers, refusals, corrections."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from keyhouse.clock import FrozenClock
from keyhouse.limits.limiter import Limiter, RateLimited
from keyhouse.limits.policy import day_bounds
from keyhouse.limits.rules import US, Decision, Rule, RuleState, duration


def rpm(limit: int, key: str = "k:rpm") -> Rule:
    return Rule(
        key,
        "rate",
        limit,
        "requests",
        60 * US,
        label="requests per min (RPM)",
        scope="with this API key",
    )


def tpm(limit: int, key: str = "k:tpm") -> Rule:
    return Rule(
        key, "rate", limit, "tokens", 60 * US, label="tokens per min (TPM)", scope="in your account"
    )


@pytest.mark.parametrize("limit", [1, 3, 7, 60, 1000])
async def test_n_allowed_n_plus_one_refused_then_allowed_after_the_window(
    limiter: Limiter, clock: FrozenClock, limit: int
) -> None:
    rule = rpm(limit)
    for i in range(limit):
        admission = await limiter.admit([rule], [1])
        assert admission.headers["x-ratelimit-remaining-requests"] == str(limit - i - 1)
    with pytest.raises(RateLimited) as refused:
        await limiter.admit([rule], [1])
    assert refused.value.status == 429
    assert refused.value.type == "requests" and refused.value.code == "rate_limit_exceeded"
    clock.advance(60)
    for _ in range(limit):
        await limiter.admit([rule], [1])
    with pytest.raises(RateLimited):
        await limiter.admit([rule], [1])


async def test_the_bucket_refills_continuously(limiter: Limiter, clock: FrozenClock) -> None:
    rule = rpm(3)
    for _ in range(3):
        await limiter.admit([rule], [1])
    with pytest.raises(RateLimited) as refused:
        await limiter.admit([rule], [1])
    assert refused.value.headers["retry-after"] == "20"
    assert refused.value.headers["retry-after-ms"] == "20000"
    assert "Limit 3, Used 3, Requested 1" in refused.value.message
    assert "Please try again in 20s" in refused.value.message
    clock.advance(19.999)
    with pytest.raises(RateLimited):
        await limiter.admit([rule], [1])
    clock.advance(0.001)
    admission = await limiter.admit([rule], [1])
    assert admission.headers["x-ratelimit-remaining-requests"] == "0"


async def test_headers(limiter: Limiter, clock: FrozenClock) -> None:
    admission = await limiter.admit([rpm(60), tpm(40_000)], [1, 1000])
    h = admission.headers
    assert h["x-ratelimit-limit-requests"] == "60"
    assert h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-reset-requests"] == "1s"
    assert h["x-ratelimit-limit-tokens"] == "40000"
    assert h["x-ratelimit-remaining-tokens"] == "39000"
    assert h["x-ratelimit-reset-tokens"] == "1.5s"


async def test_headers_report_the_rule_closest_to_refusing(limiter: Limiter) -> None:
    key_rule, member_rule = rpm(100, "k:rpm"), rpm(5, "m:rpm")
    admission = await limiter.admit([key_rule, member_rule], [1, 1])
    assert admission.headers["x-ratelimit-limit-requests"] == "5"
    assert admission.headers["x-ratelimit-remaining-requests"] == "4"


async def test_all_or_nothing(limiter: Limiter) -> None:
    """A refusal by one rule takes nothing from the others."""
    roomy, tight = rpm(10, "k:roomy"), rpm(1, "k:tight")
    await limiter.admit([tight], [1])
    for _ in range(3):
        with pytest.raises(RateLimited):
            await limiter.admit([roomy, tight], [1, 1])
    admission = await limiter.admit([roomy], [1])
    assert admission.headers["x-ratelimit-remaining-requests"] == "9"


async def test_token_reservation_is_corrected_after_the_response(
    limiter: Limiter, clock: FrozenClock
) -> None:
    rule = tpm(1000)
    admission = await limiter.admit([rule], [800])  # prompt + max_tokens, reserved up front
    with pytest.raises(RateLimited) as refused:
        await limiter.admit([rule], [300])
    assert refused.value.type == "tokens"
    limiter.finish(admission, 100)  # it used 100 tokens in the end
    await asyncio.gather(*limiter._tasks)
    again = await limiter.admit([rule], [300])
    assert again.headers["x-ratelimit-remaining-tokens"] == "600"


async def test_work_the_token_count_leaves_out_stays_charged(limiter: Limiter) -> None:
    """A schema compiled, logit_bias entries: the model's count (100) does not include them
    (50), so the correction keeps them charged."""
    rule = tpm(1000)
    admission = await limiter.admit([rule], [800])
    admission.overhead_tokens = 50
    limiter.finish(admission, 100)
    await asyncio.gather(*limiter._tasks)
    again = await limiter.admit([rule], [300])
    assert again.headers["x-ratelimit-remaining-tokens"] == "550"


async def test_request_too_large_is_not_worth_retrying(limiter: Limiter) -> None:
    with pytest.raises(RateLimited) as refused:
        await limiter.admit([tpm(1000)], [5000])
    assert refused.value.headers["x-should-retry"] == "false"
    assert "Request too large" in refused.value.message
    assert "retry-after" not in refused.value.headers


async def test_requests_per_day_follow_the_calendar(limiter: Limiter, clock: FrozenClock) -> None:
    def rpd() -> Rule:
        start, end = day_bounds(clock.now(), "Asia/Shanghai")
        return Rule("k:rpd", "day", 2, "requests", 0, start, end, label="requests per day (RPD)")

    clock._now = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    await limiter.admit([rpd()], [1])
    await limiter.admit([rpd()], [1])
    with pytest.raises(RateLimited) as refused:
        await limiter.admit([rpd()], [1])
    assert refused.value.headers["retry-after"] == "3600"  # midnight in Shanghai
    clock.advance(3600)  # 00:00 the next day, Shanghai time
    admission = await limiter.admit([rpd()], [1])
    assert admission.headers["x-ratelimit-remaining-requests"] == "1"
    assert admission.headers["x-ratelimit-reset-requests"] == "24h0m0s"


async def test_concurrency_slots(limiter: Limiter, clock: FrozenClock) -> None:
    rule = Rule("k:par", "concurrency", 2, "requests", 600 * US, label="requests in flight")
    first = await limiter.admit([rule], [1])
    await limiter.admit([rule], [1])
    with pytest.raises(RateLimited) as refused:
        await limiter.admit([rule], [1])
    assert refused.value.type == "requests"
    assert "in flight" in refused.value.message
    limiter.finish(first, None)
    await asyncio.gather(*limiter._tasks)
    await limiter.admit([rule], [1])


async def test_a_crashed_request_does_not_hold_its_slot_forever(
    limiter: Limiter, clock: FrozenClock
) -> None:
    rule = Rule("k:par", "concurrency", 1, "requests", 600 * US)
    await limiter.admit([rule], [1])  # never finished: its worker died
    with pytest.raises(RateLimited):
        await limiter.admit([rule], [1])
    clock.advance(600)
    await limiter.admit([rule], [1])


async def test_peek_takes_nothing(limiter: Limiter) -> None:
    rule = rpm(5)
    await limiter.admit([rule], [1])
    for _ in range(3):
        headers = await limiter.peek([rule])
        assert headers["x-ratelimit-remaining-requests"] == "4"


def test_duration_format() -> None:
    assert duration(0) == "0s"
    assert duration(17_000) == "17ms"
    assert duration(1 * US) == "1s"
    assert duration(1_500_000) == "1.5s"
    assert duration(360 * US) == "6m0s"
    assert duration(3723 * US) == "1h2m3s"
    assert duration(86_400 * US) == "24h0m0s"
    # Under a minute, to the millisecond (rounded up); from a minute, to the second (rounded up)
    assert duration(59_998_001) == "59.999s"
    assert duration(59_999_001) == "1m0s"
    assert duration(60 * US + 1) == "1m1s"
    assert duration(17 * 3600 * US + 14 * 60 * US + 53_250_000) == "17h14m54s"


async def test_costs_must_match_the_rules(limiter: Limiter) -> None:
    with pytest.raises(ValueError, match="2 rules but 1 costs"):
        await limiter.admit([rpm(10), tpm(1000)], [1])


async def test_slots_expire_one_by_one_whatever_was_released(
    limiter: Limiter, clock: FrozenClock
) -> None:
    """Slots taken at different times expire at their own times, also after a release."""
    rule = Rule("k:par", "concurrency", 3, "requests", 600 * US)
    first = await limiter.admit([rule], [1])
    clock.advance(100)
    await limiter.admit([rule], [1])  # expires at 700 s
    clock.advance(100)
    await limiter.admit([rule], [1])  # expires at 800 s
    limiter.finish(first, None)
    await asyncio.gather(*limiter._tasks)
    clock.advance(499)  # 699 s: two in flight
    assert (await limiter.standing([rule]) or [])[0].used == 2
    clock.advance(1)  # 700 s: the second has expired
    assert (await limiter.standing([rule]) or [])[0].used == 1
    clock.advance(100)  # 800 s: all gone
    assert (await limiter.standing([rule]) or [])[0].used == 0


def reference_headers(states: list[RuleState]) -> dict[str, str]:
    """The headers as OpenAI's rule puts them, from the states (what Decision.headers must
    give without making them): per dimension, the fewest remaining, then the longest reset,
    then the first rule."""
    headers: dict[str, str] = {}
    for dimension in ("requests", "tokens"):
        candidates = [
            s for s in states if s.rule.dimension == dimension and s.rule.kind != "concurrency"
        ]
        if candidates:
            best = min(candidates, key=lambda s: (s.remaining, -s.reset_us))
            headers[f"x-ratelimit-limit-{dimension}"] = str(best.rule.limit)
            headers[f"x-ratelimit-remaining-{dimension}"] = str(best.remaining)
            headers[f"x-ratelimit-reset-{dimension}"] = duration(best.reset_us)
    return headers


def test_decision_headers_are_those_of_its_states() -> None:
    chance = random.Random(16)
    now = 1_000 * US
    for _ in range(2000):
        rules: list[Rule] = []
        values: list[int] = []
        for i in range(chance.randint(1, 6)):
            kind = chance.choice(["rate", "day", "concurrency"])
            limit = chance.choice([1, 2, 5, 60, 1000, 10**8])
            dimension = chance.choice(["requests", "tokens"])
            if kind == "rate":
                period = chance.choice([US, 60 * US])
                rules.append(Rule(f"r{i}", "rate", limit, dimension, period))
                values.append(chance.randint(0, limit * period))
            elif kind == "day":
                end = now + chance.randint(0, 86_400 * US)
                rules.append(Rule(f"d{i}", "day", limit, dimension, 0, end - 86_400 * US, end))
                values.append(chance.randint(0, limit))
            else:
                rules.append(Rule(f"c{i}", "concurrency", limit, "requests", 600 * US))
                values.append(chance.randint(0, limit))
        costs = [1] * len(rules)
        oks = [chance.random() < 0.8 for _ in rules]
        decision = Decision(all(oks), rules, costs, values, oks, now)
        assert decision.headers() == reference_headers(decision.states)
