"""The Redis store: limits counted once however many workers and replicas serve.

One Lua script decides a request against all its rules atomically, in one round trip, with the
same integer arithmetic as the in-process store. Corrections and slot releases are separate,
later round trips, off the request path. Every key expires on its own.

All of a request's keys go to one script, so with Redis Cluster they would need a common hash
tag; Keyhouse expects one Redis (with a replica for failover if you like).
"""

from __future__ import annotations

from typing import Any

from keyhouse.limits.rules import Decision, Rule, RuleState, state_of

# ARGV: now_us, slot_id, commit (1/0); then six per rule:
# kind, limit, period_us, cost, day_start_us, day_end_us
_ACQUIRE = """
local function int(x) return string.format("%.0f", x) end  -- tostring() keeps 14 digits only
local function rule(i)
  local b = 3 + (i - 1) * 6
  return ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
    ARGV[b + 5], ARGV[b + 6]
end
local now = tonumber(ARGV[1])
local slot = ARGV[2]
local commit = ARGV[3] == "1"
local n = #KEYS
local values, oks = {}, {}
local allowed = 1
for i = 1, n do
  local kind, limit, period, cost, day_start = rule(i)
  local value, ok
  if kind == "rate" then
    local st = redis.call("HMGET", KEYS[i], "l", "t")
    local level, at = tonumber(st[1]) or 0, tonumber(st[2]) or now
    local elapsed = now - at
    if elapsed < 0 then elapsed = 0 end
    if elapsed >= period then level = 0 else level = math.max(0, level - elapsed * limit) end
    value = level
    ok = level + cost * period <= limit * period
  elseif kind == "day" then
    local st = redis.call("HMGET", KEYS[i], "d", "c")
    value = 0
    if tonumber(st[1]) == tonumber(day_start) then value = tonumber(st[2]) or 0 end
    ok = value + cost <= limit
  else
    redis.call("ZREMRANGEBYSCORE", KEYS[i], "-inf", now)
    value = redis.call("ZCARD", KEYS[i])
    ok = value + cost <= limit
  end
  values[i] = value
  oks[i] = ok and 1 or 0
  if not ok then allowed = 0 end
end
local out = {allowed}
for i = 1, n do
  local kind, limit, period, cost, day_start, day_end = rule(i)
  local value = values[i]
  if allowed == 1 and cost > 0 then
    if kind == "rate" then
      value = value + cost * period
      if commit then
        redis.call("HSET", KEYS[i], "l", int(value), "t", int(now))
        redis.call("PEXPIRE", KEYS[i], math.ceil(value / limit / 1000) + 1000)
      end
    elseif kind == "day" then
      value = value + cost
      if commit then
        redis.call("HSET", KEYS[i], "d", day_start, "c", int(value))
        -- relative to the caller's clock, not Redis's (they may differ, as in tests)
        redis.call("PEXPIRE", KEYS[i], math.ceil((tonumber(day_end) - now) / 1000) + 3600000)
      end
    else
      value = value + 1
      if commit then
        redis.call("ZADD", KEYS[i], int(now + period), slot)
        redis.call("PEXPIRE", KEYS[i], math.ceil(period / 1000) + 1000)
      end
    end
  end
  out[#out + 1] = int(value)
  out[#out + 1] = oks[i]
end
return out
"""

# ARGV: now_us; then five per operation: op (adjust|release), kind, limit, period_us, value
_APPLY = """
local function int(x) return string.format("%.0f", x) end
local now = tonumber(ARGV[1])
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 5
  local op, kind = ARGV[b + 1], ARGV[b + 2]
  local limit, period = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if op == "release" then
    redis.call("ZREM", KEYS[i], ARGV[b + 5])
  elseif kind == "rate" then
    local delta = tonumber(ARGV[b + 5])
    local st = redis.call("HMGET", KEYS[i], "l", "t")
    local level, at = tonumber(st[1]) or 0, tonumber(st[2]) or now
    local elapsed = math.max(0, now - at)
    if elapsed >= period then level = 0 else level = math.max(0, level - elapsed * limit) end
    level = math.max(0, level + delta * period)
    redis.call("HSET", KEYS[i], "l", int(level), "t", int(now))
    redis.call("PEXPIRE", KEYS[i], math.ceil(level / limit / 1000) + 1000)
  elseif kind == "day" and redis.call("EXISTS", KEYS[i]) == 1 then
    local c = math.max(0, (tonumber(redis.call("HGET", KEYS[i], "c")) or 0) + tonumber(ARGV[b + 5]))
    redis.call("HSET", KEYS[i], "c", int(c))
  end
end
return 1
"""


class RedisStore:
    name = "redis"

    def __init__(self, url: str, *, prefix: str = "kh:rl:", timeout: float = 0.25) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.prefix = prefix
        self.client: Any = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._acquire = self.client.register_script(_ACQUIRE)
        self._apply = self.client.register_script(_APPLY)

    async def start(self) -> None:
        await self.client.ping()

    async def stop(self) -> None:
        await self.client.aclose()

    async def acquire(
        self, rules: list[Rule], costs: list[int], now_us: int, slot_id: str, commit: bool = True
    ) -> Decision:
        args: list[Any] = [now_us, slot_id, 1 if commit else 0]
        for rule, cost in zip(rules, costs, strict=True):
            args += [rule.kind, rule.limit, rule.period_us, cost]
            args += [rule.day_start_us, rule.day_end_us]
        raw = await self._acquire(keys=[self.prefix + r.key for r in rules], args=args)
        allowed = int(raw[0]) == 1
        states: list[RuleState] = []
        slots: dict[str, str] = {}
        for i, (rule, cost) in enumerate(zip(rules, costs, strict=True)):
            value = int(raw[1 + 2 * i])
            ok = int(raw[2 + 2 * i]) == 1
            states.append(state_of(rule, value, cost, ok, now_us))
            if allowed and commit and rule.kind == "concurrency" and cost:
                slots[rule.key] = slot_id
        return Decision(allowed, states, slots)

    async def apply(self, batch: list[tuple[Rule, str, int | str]], now_us: int) -> None:
        if not batch:
            return
        keys, args = [], [now_us]
        for rule, op, value in batch:
            keys.append(self.prefix + rule.key)
            args += [op, rule.kind, rule.limit, rule.period_us, value]
        await self._apply(keys=keys, args=args)

    def sweep(self, now_us: int) -> None:
        return None  # Redis expires keys itself
