"""Each server's bucket and learned rate, in this process or shared through Redis.

Why not a library. ``limits`` (Redis storage) keys its counters by the rate
itself (``LIMITER/key/amount/1/second``), so a rate that changes every second
starts a new, empty window each time (a burst of a full window's worth at every
change); its windows are counted, not scheduled, so a caller cannot be told how
long to wait and must poll. ``pyrate-limiter``'s Redis bucket keeps one sorted-set
member per request (a window's worth of members per server), uses each client's
own clock (machines that disagree by a few milliseconds disagree on the window)
and answers "blocked" without a reservation, so waiters poll too. Neither keeps
the learned rate itself, nor changes it atomically with the bucket.

So this is a small GCRA in one Lua script (atomic in Redis): a hash per server
holding the rate, the ceiling (the last rate refused), the theoretical arrival
time of the next request, the ``Retry-After`` pause and the times of the last
cut and increase. A reservation is one round trip that tells the caller exactly
how long to sleep (no polling); time is Redis's own (``TIME``), so processes on
several machines agree; a cut or an increase changes the shared rate for every
process at once, at most once a cooldown or an epoch whichever process asks.
The rule is :mod:`lapsewatch.pace.policy`'s, written twice (Python here for one
process, Lua for several); tests run both through the same steps.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

from lapsewatch.pace.pins import Pin
from lapsewatch.pace.policy import Learned, Policy, ServerBucket

__all__ = ["KEY_PREFIX", "TTL_SECONDS", "Buckets", "LocalBuckets", "RedisBuckets"]

KEY_PREFIX = "lapsewatch:pace:"
TTL_SECONDS = 7 * 24 * 3600
"""A server not asked for a week is forgotten by Redis (the store still knows it)."""


class Buckets(ABC):
    """Where the buckets live. ``initial`` is used the first time a server is seen."""

    @abstractmethod
    async def reserve(
        self, server: str, initial: Learned, pin: Pin | None, horizon: float
    ) -> tuple[bool, float]:
        """``(reserved, seconds to wait)`` for one more request to ``server``: reserved
        only when the slot is at most ``horizon`` seconds away."""

    @abstractmethod
    async def refused(
        self,
        server: str,
        initial: Learned,
        pin: Pin | None,
        retry_after: float | None,
        age: float | None = None,
    ) -> None:
        """``age``: seconds since the refused request went out (``None``: not known)."""

    @abstractmethod
    async def cut(self, server: str, initial: Learned, pin: Pin | None) -> None: ...

    @abstractmethod
    async def raise_(self, server: str, initial: Learned, pin: Pin | None) -> None: ...

    @abstractmethod
    async def learned(self, servers: list[str]) -> dict[str, Learned]:
        """What is known now of ``servers`` (those seen)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


def _policy_for(policy: Policy, pin: Pin | None) -> Policy:
    if pin is not None and pin.maximum is not None:
        return replace(policy, maximum=pin.maximum)
    return policy


class LocalBuckets(Buckets):
    """In this process only (one event loop): ``lapsewatch check``, SQLite, no Redis."""

    def __init__(self, policy: Policy, clock: Any = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.buckets: dict[str, ServerBucket] = {}

    def bucket(self, server: str, initial: Learned, pin: Pin | None) -> ServerBucket:
        bucket = self.buckets.get(server)
        if bucket is None:
            policy = _policy_for(self.policy, pin)
            rate = min(policy.maximum, initial.rate)
            bucket = ServerBucket(
                replace(initial, rate=rate), policy, pinned=pin.rate if pin else None
            )
            self.buckets[server] = bucket
        return bucket

    async def reserve(
        self, server: str, initial: Learned, pin: Pin | None, horizon: float
    ) -> tuple[bool, float]:
        return self.bucket(server, initial, pin).reserve(self.clock(), horizon)

    async def refused(
        self,
        server: str,
        initial: Learned,
        pin: Pin | None,
        retry_after: float | None,
        age: float | None = None,
    ) -> None:
        now = self.clock()
        sent = None if age is None else now - age
        self.bucket(server, initial, pin).refused(now, retry_after, sent)

    async def cut(self, server: str, initial: Learned, pin: Pin | None) -> None:
        self.bucket(server, initial, pin).cut(self.clock())

    async def raise_(self, server: str, initial: Learned, pin: Pin | None) -> None:
        self.bucket(server, initial, pin).raise_(self.clock())

    async def learned(self, servers: list[str]) -> dict[str, Learned]:
        return {s: self.buckets[s].learned() for s in servers if s in self.buckets}


# ARGV: op, start rate, start ceiling ('' = none), pinned rate (0 = none), maximum,
# horizon (reserve) or retry_after (refused), ttl in ms, then the policy: minimum,
# epoch, cooldown, slow_start, decrease, recover, probe, burst; then (refused) the
# seconds since the refused request went out (-1 = not known); then near_decrease.
# Returns {wait, rate, ceiling ('' = none), reserved ('1' or '0')} as strings
# (Redis would truncate Lua numbers to integers).
_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pinned = tonumber(ARGV[4])
local maximum = tonumber(ARGV[5])
local arg = tonumber(ARGV[6])
local minimum = tonumber(ARGV[8])
local epoch = tonumber(ARGV[9])
local cooldown = tonumber(ARGV[10])
local slow_start = tonumber(ARGV[11])
local decrease = tonumber(ARGV[12])
local recover = tonumber(ARGV[13])
local probe = tonumber(ARGV[14])
local burst = tonumber(ARGV[15])
local age = tonumber(ARGV[16]) or -1
local near_decrease = tonumber(ARGV[17])
local s = redis.call('HMGET', key, 'rate', 'ceiling', 'tat', 'paused', 'last_cut', 'last_change')
local rate = tonumber(s[1])
local ceiling = tonumber(s[2])
if rate == nil then
  rate = math.min(maximum, tonumber(ARGV[2]))
  ceiling = tonumber(ARGV[3])
  redis.call('HSET', key, 'rate', tostring(rate))
  if ceiling then redis.call('HSET', key, 'ceiling', tostring(ceiling)) end
end
if pinned > 0 then rate = pinned end
local tat = tonumber(s[3]) or 0
local paused = tonumber(s[4]) or 0
local last_cut = tonumber(s[5]) or -1e18
local last_change = tonumber(s[6]) or -1e18
redis.call('PEXPIRE', key, tonumber(ARGV[7]))
if op == 'reserve' then
  local slot = math.max(tat, now - burst, paused)
  local wait = math.max(0, slot - now)
  if wait > arg then return {tostring(wait), tostring(rate), tostring(ceiling or ''), '0'} end
  redis.call('HSET', key, 'tat', string.format('%.6f', slot + 1 / rate))
  return {tostring(wait), tostring(rate), tostring(ceiling or ''), '1'}
end
if op == 'refused' and arg > 0 then
  redis.call('HSET', key, 'paused', string.format('%.6f', math.max(paused, now + arg)))
end
if op == 'refused' or op == 'cut' then
  -- a refused request sent before the last cut was sent at the old rate: no new cut
  local stale = op == 'refused' and age >= 0 and now - age < last_cut
  if pinned <= 0 and (stale or now - last_cut < cooldown) then
    if op == 'refused' and ceiling == nil then  -- refused just after a cut for slowness
      ceiling = rate / decrease
      redis.call('HSET', key, 'ceiling', tostring(ceiling))
    end
  elseif pinned <= 0 then
    local factor = decrease
    if op == 'refused' then
      if ceiling and rate > 0.9 * ceiling then factor = near_decrease end
      ceiling = rate  -- only a refusal is the server's word on its quota
      redis.call('HSET', key, 'ceiling', tostring(ceiling))
    end
    rate = math.max(minimum, rate * factor)
    redis.call('HSET', key, 'rate', tostring(rate),
      'last_cut', string.format('%.6f', now), 'last_change', string.format('%.6f', now))
  end
elseif op == 'raise' then
  if pinned <= 0 and now - last_change >= epoch then
    local grown
    if ceiling == nil then
      grown = rate * slow_start
    elseif rate < 0.9 * ceiling then
      grown = rate + math.max(recover * (0.9 * ceiling - rate), probe * rate)
    else
      grown = rate * (1 + probe)
    end
    rate = math.min(maximum, math.max(minimum, grown))
    redis.call('HSET', key, 'rate', tostring(rate), 'last_change', string.format('%.6f', now))
  end
end
return {'0', tostring(rate), tostring(ceiling or '')}
"""


class RedisBuckets(Buckets):
    """Shared by every process that uses the same Redis database: N workers behave as
    one client per server. Raises ``redis.RedisError`` when Redis fails (the caller
    falls back to :class:`LocalBuckets`)."""

    def __init__(self, url: str, policy: Policy, *, prefix: str = KEY_PREFIX) -> None:
        import redis.asyncio

        self.policy = policy
        self.prefix = prefix
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._script = self.client.register_script(_SCRIPT)
        self._seen: set[str] = set()

    async def _call(
        self,
        op: str,
        server: str,
        initial: Learned,
        pin: Pin | None,
        arg: float,
        age: float | None = None,
    ) -> list[bytes]:
        self._seen.add(server)
        policy = _policy_for(self.policy, pin)
        p = policy
        args = [
            op,
            repr(initial.rate),
            repr(initial.ceiling) if initial.ceiling is not None else "",
            repr(pin.rate if pin is not None and pin.rate is not None else 0.0),
            repr(p.maximum),
            repr(arg),
            str(TTL_SECONDS * 1000),
            *(repr(x) for x in (p.minimum, p.epoch, p.cooldown, p.slow_start, p.decrease)),
            *(repr(x) for x in (p.recover, p.probe, p.burst)),
            repr(-1.0 if age is None else max(0.0, age)),
            repr(p.near_decrease),
        ]
        result: list[bytes] = await self._script(keys=[self.prefix + server], args=args)
        return result

    async def reserve(
        self, server: str, initial: Learned, pin: Pin | None, horizon: float
    ) -> tuple[bool, float]:
        reply = await self._call("reserve", server, initial, pin, horizon)
        return reply[3] == b"1", float(reply[0])

    async def refused(
        self,
        server: str,
        initial: Learned,
        pin: Pin | None,
        retry_after: float | None,
        age: float | None = None,
    ) -> None:
        await self._call("refused", server, initial, pin, retry_after or 0.0, age)

    async def cut(self, server: str, initial: Learned, pin: Pin | None) -> None:
        await self._call("cut", server, initial, pin, 0.0)

    async def raise_(self, server: str, initial: Learned, pin: Pin | None) -> None:
        await self._call("raise", server, initial, pin, 0.0)

    async def learned(self, servers: list[str]) -> dict[str, Learned]:
        known: dict[str, Learned] = {}
        for server in servers:
            rate, ceiling = await self.client.hmget(self.prefix + server, ["rate", "ceiling"])
            if rate is not None:
                known[server] = Learned(float(rate), float(ceiling) if ceiling else None)
        return known

    async def aclose(self) -> None:
        await self.client.aclose()
