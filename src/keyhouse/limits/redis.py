"""The Redis store: limits counted once however many workers and replicas serve.

One Lua script decides a request against all its rules atomically, in one round trip, with the
same integer arithmetic as the in-process store. Corrections and slot releases are separate,
later round trips, off the request path. Every key expires on its own.

Concurrent requests share their round trips: the calls that arrive while a batch is out travel
together in the next one, pipelined on one connection of the store's own, each script still
atomic on its own and each caller getting its own reply (``_Batcher``). A lone request pays one
round trip, as before; under load several share each one (about 5 on average in
``bench/limits.py`` at 16 connections), and the client's cost per request drops to a fifth.

All of a request's keys go to one script, so with Redis Cluster they would need a common hash
tag; Keyhouse expects one Redis (with a replica for failover if you like).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import hiredis

from keyhouse.limits.rules import Decision, Rule

# ARGV: now_us, slot_id, commit (1/0); then seven per rule:
# kind, limit, period_us, day_start_us, day_end_us, cost, lease
# (what a rule always sends first, so that it is encoded once per rule: see RedisStore._encoded).
# ``lease``: units to take besides ``cost`` if there is room for them (limits/lease.py); a
# request admitted gets them, or as many as fit. Replies, per rule: value, ok, units leased.
_ACQUIRE = """
local function int(x) return string.format("%.0f", x) end  -- tostring() keeps 14 digits only
local function rule(i)
  local b = 3 + (i - 1) * 7
  return ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 6]),
    ARGV[b + 4], ARGV[b + 5], tonumber(ARGV[b + 7])
end
local now = tonumber(ARGV[1])
local slot = ARGV[2]
local commit = ARGV[3] == "1"
local n = #KEYS
local values, oks, new_day = {}, {}, {}
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
    if tonumber(st[1]) == tonumber(day_start) then
      value = tonumber(st[2]) or 0
    else
      new_day[i] = true
    end
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
  local kind, limit, period, cost, day_start, day_end, lease = rule(i)
  local value = values[i]
  local leased = 0
  if allowed == 1 and commit and lease > 0 then
    local room
    if kind == "rate" then
      room = math.floor((limit * period - value) / period) - cost
    else
      room = limit - value - cost
    end
    leased = math.max(0, math.min(lease, room))
  end
  if allowed == 1 and cost + leased > 0 then
    if kind == "rate" then
      value = value + (cost + leased) * period
      if commit then
        redis.call("HSET", KEYS[i], "l", int(value), "t", ARGV[1])
        redis.call("PEXPIRE", KEYS[i], math.ceil(value / limit / 1000) + 1000)
      end
    elseif kind == "day" then
      value = value + cost + leased
      if commit then
        redis.call("HSET", KEYS[i], "d", day_start, "c", int(value))
        if new_day[i] then  -- the day's end does not move: once a day is enough
          -- relative to the caller's clock, not Redis's (they may differ, as in tests)
          redis.call("PEXPIRE", KEYS[i], math.ceil((tonumber(day_end) - now) / 1000) + 3600000)
        end
      end
    else
      value = value + (cost > 0 and 1 or 0) + leased  -- a slot is one, whatever its cost
      if commit then
        local expiry = int(now + period)
        local members = {}
        if cost > 0 then members = {expiry, slot} end
        for j = 1, leased do  -- a lease's slots: the request's id, then ":1", ":2", …
          members[#members + 1] = expiry
          members[#members + 1] = slot .. ":" .. j
        end
        redis.call("ZADD", KEYS[i], unpack(members))
        redis.call("PEXPIRE", KEYS[i], math.ceil(period / 1000) + 1000)
      end
    end
  end
  out[#out + 1] = int(value)
  out[#out + 1] = oks[i]
  out[#out + 1] = leased
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
    redis.call("HSET", KEYS[i], "l", int(level), "t", ARGV[1])
    redis.call("PEXPIRE", KEYS[i], math.ceil(level / limit / 1000) + 1000)
  elseif kind == "day" and redis.call("EXISTS", KEYS[i]) == 1 then
    local c = math.max(0, (tonumber(redis.call("HGET", KEYS[i], "c")) or 0) + tonumber(ARGV[b + 5]))
    redis.call("HSET", KEYS[i], "c", int(c))
  end
end
return 1
"""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _arg(value: int | str) -> bytes:
    return _bulk(b"%d" % value if isinstance(value, int) else value.encode())


def _command(*args: int | str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_arg(a) for a in args)


_COMMIT, _PEEK, _RELEASE, _ADJUST = _arg(1), _arg(0), _arg("release"), _arg("adjust")
_ONE, _ZERO = _arg(1), _arg(0)
#: hiredis's answer when a reply is not whole yet.
_MORE = object()


class _Link(asyncio.Protocol):
    """One connection's replies, read straight off its socket into hiredis: a batch's replies
    wake its sender once, rather than a coroutine of redis-py's per reply (a tenth of what the
    limits cost a request in Redis)."""

    def __init__(self, transport: Any) -> None:
        from redis._parsers.base import BaseParser
        from redis.exceptions import InvalidResponse

        self._transport = transport
        # Errors as redis-py makes them (NoScriptError for NOSCRIPT, …): returned, not raised
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, notEnoughData=_MORE
        )
        self._replies: list[Any] = []
        self._expected = 0
        self._done: asyncio.Future[list[Any]] | None = None
        self._lost: Exception | None = None

    def exchange(self, data: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Send ``data`` (``count`` commands); the future gets their ``count`` replies."""
        if self._lost is not None:
            raise self._lost
        self._replies = []
        self._expected = count
        self._done = done = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        return done

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        replies = self._replies
        try:
            while (reply := reader.gets()) is not _MORE:
                done = self._done
                if done is None:
                    raise RuntimeError("a reply from Redis that nobody asked for")
                replies.append(reply)
                if len(replies) == self._expected:
                    self._replies, self._expected, self._done = [], 0, None
                    if not done.done():
                        done.set_result(replies)
                    replies = self._replies
        except Exception as exc:  # not Redis's protocol, or a reply nobody asked for
            self._fail(exc)
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._fail(RedisConnectionError("Connection closed by server."))

    def _fail(self, exc: Exception) -> None:
        self._lost = exc
        done, self._done = self._done, None
        if done is not None and not done.done():
            done.set_exception(exc)


class _Batcher:
    """Commands of concurrent callers, pipelined on one connection of our own: one batch out at
    a time, and whatever arrives meanwhile goes out together as soon as it is back (no timer,
    so a lone call waits for nothing). Each command is still a script of its own, atomic on its
    own, and each caller gets its own reply, or its own error if only its command failed.

    Cheaper than redis-py's client per call: no pool checkout, no per-reply timeout, commands
    encoded by the store (``RedisStore._encoded``). The connection still comes from redis-py, so
    the URL means the same (password, database, TLS, unix socket).

    When the connection fails or the batch takes longer than ``timeout``, every caller waiting
    — in the batch and queued behind it — gets the error at once, so none waits more than about
    ``timeout`` on a dead Redis; the next batch opens a new connection.
    """

    def __init__(self, client: Any, timeout: float, scripts: dict[str, str]) -> None:
        pool = client.connection_pool
        # No socket timeout of redis-py's (it costs a timer per reply): one for the whole batch.
        self._connection_kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        self._connection_class = pool.connection_class
        self._connection: Any = None
        self._link: _Link | None = None
        self._timeout = timeout
        self._scripts = scripts  # sha → body, loaded again if Redis forgot them (NOSCRIPT)
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, command: bytes) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if self._sender is None:  # nothing out: send at the loop's next turn, with whoever joins
            self._sender = loop.create_task(self._send())
        return await future

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    replies = await self._round_trip([command for command, _ in batch])
                except BaseException as exc:  # the connection is gone, Redis is too slow, or stop
                    await self.close()
                    batch += self._queue  # they would meet the same Redis: fail them now
                    self._queue = []
                    for _, future in batch:
                        if future.done():
                            continue
                        if isinstance(exc, Exception):
                            future.set_exception(exc)
                        else:
                            future.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    return
                for (_, future), reply in zip(batch, replies):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        from redis.exceptions import TimeoutError as RedisTimeout

        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange_all(commands)
        except TimeoutError:
            raise RedisTimeout(f"no reply from Redis within {self._timeout:g} s") from None

    async def _exchange_all(self, commands: list[bytes]) -> list[Any]:
        from redis.exceptions import NoScriptError

        replies = await self._exchange(commands)
        forgotten = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if forgotten:  # Redis restarted or its scripts were flushed: load them, run those again
            loads = [_command("SCRIPT", "LOAD", body) for body in self._scripts.values()]
            for reply in await self._exchange(loads):
                if isinstance(reply, Exception):
                    raise reply
            again = await self._exchange([commands[i] for i in forgotten])
            for i, reply in zip(forgotten, again):
                replies[i] = reply
        return replies

    async def _exchange(self, commands: list[bytes]) -> list[Any]:
        link = self._link
        if link is None:
            link = await self._open()
        return await link.exchange(b"".join(commands), len(commands))

    async def _open(self) -> _Link:
        """A connection as redis-py makes it (the URL's password, database, TLS), whose socket
        then answers to a ``_Link`` of ours."""
        connection = self._connection_class(**self._connection_kwargs)
        await connection.connect()
        self._connection = connection  # closes the socket when we are done with it
        transport = connection._writer.transport
        link = _Link(transport)
        transport.set_protocol(link)
        self._link = link
        return link

    async def close(self) -> None:
        self._link = None
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect(nowait=True)

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        for _, future in self._queue:
            future.cancel()
        self._queue = []
        await self.close()


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
        self._acquire_sha = hashlib.sha1(_ACQUIRE.encode()).hexdigest()
        self._apply_sha = hashlib.sha1(_APPLY.encode()).hexdigest()
        self._evalsha_acquire = _bulk(b"EVALSHA") + _arg(self._acquire_sha)
        self._batcher = _Batcher(
            self.client, timeout, {self._acquire_sha: _ACQUIRE, self._apply_sha: _APPLY}
        )
        self._evalsha_apply = _bulk(b"EVALSHA") + _arg(self._apply_sha)
        #: Rule → its key, its fixed arguments to _ACQUIRE and to _APPLY, in Redis's protocol
        #: (the rules of a request repeat: RuleBook remembers them). Encoding them anew with
        #: each call was most of what a call cost us.
        self._wire: dict[Rule, tuple[bytes, bytes, bytes]] = {}
        #: The rules' ids, in order → what ``_planned`` gives for them (and the rules).
        self._plans: dict[tuple[int, ...], tuple[bytes, list[bytes], tuple[Rule, ...]]] = {}

    async def start(self) -> None:
        await self.client.ping()
        for body in (_ACQUIRE, _APPLY):
            await self.client.script_load(body)

    async def stop(self) -> None:
        await self._batcher.stop()
        await self.client.aclose()

    def _encoded(self, rule: Rule) -> tuple[bytes, bytes, bytes]:
        wire = self._wire.get(rule)
        if wire is None:
            if len(self._wire) >= 10_000:
                self._wire.clear()
            applied = _arg(rule.kind) + _arg(rule.limit) + _arg(rule.period_us)
            wire = self._wire[rule] = (
                _arg(self.prefix + rule.key),
                applied + _arg(rule.day_start_us) + _arg(rule.day_end_us),
                applied,
            )
        return wire

    def _planned(self, rules: list[Rule]) -> tuple[bytes, list[bytes]]:
        """A request's command up to its keys, and each rule's fixed arguments: the same
        rules come back request after request (RuleBook), so this is made once for them."""
        ids = tuple(map(id, rules))
        plan = self._plans.get(ids)
        if plan is None:
            if len(self._plans) >= 10_000:
                self._plans.clear()
            wires = [self._encoded(rule) for rule in rules]
            n = len(rules)
            head = b"".join(
                [b"*%d\r\n" % (6 + 8 * n), self._evalsha_acquire, _arg(n)]
                + [wire[0] for wire in wires]
            )
            # The plan holds the rules themselves, so their ids cannot be another's meanwhile.
            plan = self._plans[ids] = (head, [wire[1] for wire in wires], tuple(rules))
        return plan[0], plan[1]

    async def acquire(
        self,
        rules: list[Rule],
        costs: list[int],
        now_us: int,
        slot_id: str,
        commit: bool = True,
        extras: list[int] | None = None,
    ) -> Decision:
        head, fixed = self._planned(rules)
        parts = [head, _arg(now_us), _arg(slot_id), _COMMIT if commit else _PEEK]
        for i, (wire, cost) in enumerate(zip(fixed, costs)):
            parts.append(wire)
            parts.append(_ONE if cost == 1 else _arg(cost))
            parts.append(_arg(extras[i]) if extras is not None and extras[i] else _ZERO)
        raw = await self._batcher.call(b"".join(parts))
        allowed = raw[0] == 1
        values = list(map(int, raw[1::3]))
        oks = [True] * len(rules) if allowed else [ok == 1 for ok in raw[2::3]]
        slots: dict[str, str] = {}
        if allowed and commit:
            for rule, cost in zip(rules, costs):
                if rule.kind == "concurrency" and cost:
                    slots[rule.key] = slot_id
        grants = list(map(int, raw[3::3])) if extras is not None else None
        return Decision(allowed, rules, costs, values, oks, now_us, slots, grants)

    async def apply(self, batch: list[tuple[Rule, str, int | str]], now_us: int) -> None:
        if not batch:
            return
        # The corrections of one rule add up (one member's requests all correct its token
        # bucket): one adjustment each, rather than a read and two writes per request.
        deltas: dict[Rule, int] = {}
        keys: list[bytes] = []
        args: list[bytes] = [_arg(now_us)]
        for rule, op, value in batch:
            if op == "release":
                wire = self._encoded(rule)
                keys.append(wire[0])
                args += [_RELEASE, wire[2], _arg(value)]
            else:
                deltas[rule] = deltas.get(rule, 0) + int(value)
        for rule, delta in deltas.items():
            if delta:
                wire = self._encoded(rule)
                keys.append(wire[0])
                args += [_ADJUST, wire[2], _arg(delta)]
        if not keys:
            return
        # EVALSHA sha numkeys, the keys, now, then five arguments per operation
        size = 3 + len(keys) + 1 + 5 * len(keys)
        head = [b"*%d\r\n" % size, self._evalsha_apply, _arg(len(keys))]
        # Rides along with the next batch of decisions.
        await self._batcher.call(b"".join(head + keys + args))

    def sweep(self, now_us: int) -> None:
        return None  # Redis expires keys itself
