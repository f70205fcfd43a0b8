"""The per-server pacer a :class:`~lapsewatch.pace.limited.Limited` source asks before
every request on the wire, and what it learns from the answers.

* **Per server.** Each ``host:port`` (an RDAP base URL's host, a WHOIS server, a DNS
  resolver) has its own bucket and learned rate (:mod:`lapsewatch.pace.policy`); a
  small registry's limit never slows the big ones down.
* **Learned.** A clean epoch in which the rate was the limit raises it; a refusal
  (429, ``Retry-After``, REFUSED, a WHOIS quota text) cuts it and honours
  ``Retry-After``; so do a burst of timeouts (at least 3 in an epoch and 5% of its
  answers) and a jump in latency (the epoch's mean above twice the server's usual plus
  50 ms).
* **Pinned.** ``LAPSEWATCH_PACE_FILE`` fixes or caps a server's rate (:mod:`.pins`).
* **Shared.** With ``LAPSEWATCH_PACE_REDIS`` the buckets live in Redis
  (:mod:`.shared`): N processes behave as one client per server. If Redis fails
  mid-run, this process goes on alone with what it last knew (logged once).
* **Never holding a domain.** A request whose server is paused (``Retry-After``) for
  more than ``LAPSEWATCH_PACE_MAX_WAIT`` seconds, or a retry after the same server let
  the previous attempt time out (the source reports it: ``Pacer.timed_out``; a pause
  between attempts is not a timeout), is not sent: :class:`NotSent` makes that domain's
  observation an error at once, and the schedule retries it later (backoff). Waiting
  in a server's queue is not cut short: that is the cycle's real work, and the domain
  deadline (``LAPSEWATCH_DOMAIN_DEADLINE``) bounds it.
* **Not held by its last domains.** Once a run has nothing left to start, an
  observation out ten times longer than its server usually answers (at least 1 s) is
  cut short, an error checked again later (:mod:`.stragglers`).
* **Remembered.** The learned rates are read from the store when a cycle starts and
  written back when it ends (:mod:`.store`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from contextvars import Context, ContextVar
from dataclasses import dataclass, field, replace
from functools import partial

import dns.exception
from sqlalchemy import Engine

from lapsewatch.config import Settings
from lapsewatch.pace.pins import Pin, Pins, load_pins
from lapsewatch.pace.policy import START_BY_SOURCE, Learned, Policy, start_for
from lapsewatch.pace.shared import Buckets, LocalBuckets, RedisBuckets
from lapsewatch.pace.stragglers import Stragglers
from lapsewatch.sources._http import FetchError

__all__ = [
    "NotSent",
    "ServerPacer",
    "Trace",
    "current_trace",
    "open_pacer",
    "policy_from_settings",
    "shared_pace",
    "tracing",
]

log = logging.getLogger(__name__)

HORIZON = 0.2
"""Seconds ahead a slot is reserved; further, the head of the queue asks again later."""
POLL = 0.5
"""Longest sleep before asking again (a growing rate brings the slot nearer)."""
TIMEOUT_SHARE = 0.9
"""An attempt that took this share of the request timeout or more timed out."""
BUSY_SHARE = 0.5
"""A server's rate is raised after an epoch in which its queue was held by the rate
for at least this share of the time. A rate is raised only where it is the limit (as
TCP leaves an application-limited window alone): raised whenever a request had queued
at all, a burst of new domains (a Celery chunk's start) took the resolver from 100 to
1000/s, twice its quota, in a few seconds at demand well under it, and the bursts
that followed were refused (1.8-2% of all requests with 2 workers in the bench's
patchwork world)."""


class NotSent(FetchError, dns.exception.Timeout):
    """A request the pacer did not let out; its domain's observation becomes an error.

    A ``FetchError`` (not retried, its reason is the observation's detail) for the
    HTTP sources, a ``dns.exception.Timeout`` for the DNS source."""


@dataclass
class Trace:
    """The requests of one observation (one source, one domain), in its task."""

    sent: list[tuple[str, float]] = field(default_factory=list)
    """``(server, when it was let out)`` per request."""
    slot: bool = False
    """Holds one of the source's concurrency slots (taken with the first request out)."""
    refused: bool = False
    timed_out: set[str] = field(default_factory=set)
    """Servers that let a request of this observation time out (the source said so)."""
    waiting: bool = False
    """Its next request waits for a slot (not on the wire: never a straggler)."""
    waits: list[tuple[float, float]] = field(default_factory=list)
    """``(when it began, seconds)`` per wait of a request for its slot."""

    def wait_for_slot(self, began: float, seconds: float) -> None:
        """A request waited ``seconds`` for its slot from ``began`` (time not out on the
        wire, left out of :meth:`out`)."""
        self.waits.append((began, seconds))

    def out(self, now: float) -> tuple[str, float] | None:
        """``(server, seconds)``: the server asked last, and how long this observation has
        been out on the wire or between attempts since its first request to that server,
        slot waits left out (a DNS check that moves to the next resolver starts afresh
        there); ``None`` before its first request and while it waits for a slot."""
        if self.waiting or not self.sent:
            return None
        server = self.sent[-1][0]
        first = next(at for s, at in self.sent if s == server)
        waited = sum(seconds for began, seconds in self.waits if began >= first)
        return server, now - first - waited


_TRACE: ContextVar[Trace | None] = ContextVar("lapsewatch_pace_trace", default=None)


def current_trace() -> Trace | None:
    return _TRACE.get()


@asynccontextmanager
async def tracing() -> AsyncIterator[Trace]:
    trace = Trace()
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


@dataclass
class _Epoch:
    """One server's signals in the current epoch, as this process saw them."""

    start: float
    held: float = 0.0
    """Seconds the server's queue in this process was held by its rate (the reserver
    asleep until the next slot came within reach)."""
    refusals: int = 0
    answers: int = 0
    timeouts: int = 0
    latency: float = 0.0


@dataclass
class _Queue:
    """The requests waiting for one server's slots, and the task handing them out."""

    waiters: deque[asyncio.Future[float]] = field(default_factory=deque)
    dispatcher: asyncio.Task[None] | None = None


def policy_from_settings(settings: Settings) -> Policy:
    """``LAPSEWATCH_PACE_START``, when set, is every new server's start; else by source."""
    if settings.pace_start is not None:
        return Policy(start=settings.pace_start, maximum=settings.pace_max)
    return Policy(maximum=settings.pace_max, starts=tuple(START_BY_SOURCE.items()))


class ServerPacer:
    """Paces the requests of every source of one checker, server by server."""

    def __init__(
        self,
        buckets: Buckets,
        *,
        policy: Policy,
        pins: Pins | None = None,
        known: dict[str, Learned] | None = None,
        max_wait: float = 10.0,
        timeout: float = 5.0,
        clock: object = time.monotonic,
    ) -> None:
        self.buckets = buckets
        self.policy = policy
        self.pins = pins or Pins()
        self.known = dict(known or {})
        self.max_wait = max_wait
        self.timeout = timeout
        self._clock = clock if callable(clock) else time.monotonic
        self._epochs: dict[str, _Epoch] = {}
        self._baseline: dict[str, float] = {}
        self._sources: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._local: LocalBuckets | None = None
        self._paused_until: dict[str, float] = {}
        self._queues: dict[str, _Queue] = {}
        self.not_sent = 0
        """Requests not let out (too long a wait, or a retry after a timeout)."""
        self.stragglers = Stragglers(self._baseline.get, self.now)
        """The open observations; cut when slow once the run has nothing left to start."""

    def now(self) -> float:
        """The pacer's clock (``time.monotonic`` but in tests)."""
        return float(self._clock())

    # -- what a server starts from -----------------------------------------------------------

    def _initial(self, server: str) -> tuple[Learned, Pin | None]:
        pin = self.pins.get(server)
        source = self._sources.get(server, "")
        learned = self.known.get(server) or Learned(start_for(self.policy, source))
        return learned, pin

    # -- requests -------------------------------------------------------------------------------

    async def acquire(self, server: str, source: str) -> None:
        """Wait for ``server``'s next slot; raise :class:`NotSent` instead of waiting out
        a pause of more than ``max_wait``, or of retrying a server that just timed out."""
        self._sources[server] = source
        trace = _TRACE.get()
        if trace is not None and server in trace.timed_out:
            self.not_sent += 1  # the timeout itself is counted once, when the check ends
            raise NotSent(
                f"no answer from {server} within {self.timeout:g} s: not retried now, "
                "the domain is checked again later"
            )
        queue = self._queues.setdefault(server, _Queue())
        turn: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if trace is not None and trace.slot:
            # Its observation holds one of the source's concurrency slots (a DNS check's
            # MX after its NS, a retry): first in line. At the back, behind the requests
            # of every domain just started, it held its slot for seconds, and those
            # requests, let out at the server's rate, then waited for slots: the server
            # got nothing, then a burst of twice its rate (REFUSED), and a worker's
            # chunk alternated between its resolver and its registry being idle
            # (measured in the bench's patchwork world with 2 workers).
            queue.waiters.appendleft(turn)
        else:
            queue.waiters.append(turn)
        if queue.dispatcher is None or queue.dispatcher.done():
            # Its own context: the reserver serves every domain, not the one that woke it.
            task = asyncio.create_task(self._dispatch(server, queue), context=Context())
            task.add_done_callback(partial(self._dispatcher_done, server, queue))
            queue.dispatcher = task
        wait = await turn
        if wait > 0:
            await asyncio.sleep(wait)

    async def _dispatch(self, server: str, queue: _Queue) -> None:
        """Hand ``server``'s slots to its waiters in arrival order, until none is left.

        One reserver per server in this process: only it asks the bucket, for a slot at
        most HORIZON away, so a rate that grows (or is cut) applies to the queue at once
        and Redis sees one caller. It hands out as many slots as fall within HORIZON in
        one turn of the event loop: a lock passed from waiter to waiter let one request
        out per turn, and a busy loop (2,000 domains open) held a server at 60% of its
        rate (measured in the bench's patchwork world)."""
        while queue.waiters:
            head = queue.waiters[0]
            if head.done():  # its domain gave up (deadline): no slot for it
                queue.waiters.popleft()
                continue
            at = self._clock()
            pause = self._paused_until.get(server, 0.0) - at
            if pause > self.max_wait:
                queue.waiters.popleft()
                head.set_exception(self._busy(server))
                continue
            if pause > 0:
                await asyncio.sleep(pause)
            await self._evaluate(server, self._clock())  # the reserver keeps the epochs
            initial, pin = self._initial(server)
            reserved, wait = await self._reserve(server, initial, pin)
            if reserved:
                # The slot goes to the first waiter still there (one may have left meanwhile).
                while queue.waiters and queue.waiters[0].done():
                    queue.waiters.popleft()
                if queue.waiters:
                    queue.waiters.popleft().set_result(wait)
                continue
            epoch, asleep = self._epoch(server, at), self._clock()
            await asyncio.sleep(min(wait - HORIZON, POLL))
            # The time it took, not the time asked for (on a busy event loop each wake
            # comes late, and a fast server held all the time counted as half idle), but
            # no further than the slot it waited for: later than that is the loop's.
            epoch.held += min(self._clock() - asleep, wait)

    def _dispatcher_done(self, server: str, queue: _Queue, task: asyncio.Task[None]) -> None:
        """Whatever ended the reserver (its queue empty, cancelled, even before it ever
        ran, or a bug), no waiter is left hanging: each gets :class:`NotSent`."""
        if queue.dispatcher is not task:
            return  # a new reserver took over
        queue.dispatcher = None
        why = "cancelled"
        if not task.cancelled():
            exc = task.exception()
            if exc is None:
                why = "ended"
            else:
                log.error("pacing %s failed", server, exc_info=exc)
                why = type(exc).__name__
        while queue.waiters:
            waiter = queue.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(NotSent(f"{server}: pacing {why}; checked again later"))

    def _busy(self, server: str) -> NotSent:
        self.not_sent += 1
        return NotSent(
            f"{server} asked for a pause of more than {self.max_wait:g} s (Retry-After): "
            "not asked now, the domain is checked again later"
        )

    async def _reserve(self, server: str, initial: Learned, pin: Pin | None) -> tuple[bool, float]:
        if self._local is not None:
            return await self._local.reserve(server, initial, pin, HORIZON)
        try:
            return await self.buckets.reserve(server, initial, pin, HORIZON)
        except Exception as exc:  # Redis went away: go on alone
            await self._fall_back(exc)
            assert self._local is not None
            return await self._local.reserve(server, initial, pin, HORIZON)

    async def _fall_back(self, exc: Exception) -> None:
        if self._local is not None:
            return
        log.warning(
            "shared rate limits unavailable (%s: %s); this process paces alone",
            type(exc).__name__,
            exc,
        )
        local = LocalBuckets(self.policy, clock=self._clock)
        for server, learned in self.known.items():
            local.bucket(server, learned, self.pins.get(server))
        self._local = local

    def _buckets(self) -> Buckets:
        return self._local if self._local is not None else self.buckets

    async def _call(
        self,
        op: str,
        server: str,
        retry_after: float | None = None,
        sent: float | None = None,
    ) -> None:
        initial, pin = self._initial(server)
        try:
            buckets = self._buckets()
            if op == "refused":
                age = None if sent is None else self._clock() - sent
                await buckets.refused(server, initial, pin, retry_after, age)
            elif op == "cut":
                await buckets.cut(server, initial, pin)
            else:
                await buckets.raise_(server, initial, pin)
        except Exception as exc:
            await self._fall_back(exc)
            await self._call(op, server, retry_after, sent)

    # -- what comes back ------------------------------------------------------------------------

    def refused(self, server: str, retry_after: float | None, sent: float | None = None) -> None:
        """``server`` said "too many requests": cut its rate, pause it for ``retry_after``.
        ``sent``: when the refused request went out (this pacer's clock), if known."""
        now = self._clock()
        self._epoch(server, now).refusals += 1
        if retry_after:
            until = now + retry_after
            self._paused_until[server] = max(self._paused_until.get(server, 0.0), until)
        task = asyncio.get_running_loop().create_task(
            self._call("refused", server, retry_after, sent)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def answered(self, server: str, seconds: float, *, timed_out: bool) -> None:
        """The last request of an observation to ``server`` ended after ``seconds``."""
        epoch = self._epoch(server, self._clock())
        if timed_out:
            epoch.timeouts += 1
        else:
            epoch.answers += 1
            epoch.latency += seconds

    def _epoch(self, server: str, now: float) -> _Epoch:
        epoch = self._epochs.get(server)
        if epoch is None:
            epoch = self._epochs[server] = _Epoch(now)
        return epoch

    async def _evaluate(self, server: str, now: float) -> None:
        """At the end of an epoch: cut (timeouts, latency), raise (busy and clean) or keep."""
        epoch = self._epochs.get(server)
        if epoch is None or now - epoch.start < self.policy.epoch:
            return
        self._epochs[server] = _Epoch(now)
        mean = epoch.latency / epoch.answers if epoch.answers else None
        usual = self._baseline.get(server)
        if mean is not None and epoch.answers >= 5:
            self._baseline[server] = mean if usual is None else min(mean, 0.9 * usual + 0.1 * mean)
        if epoch.refusals:
            return  # already cut when they came in
        total = epoch.answers + epoch.timeouts
        if epoch.timeouts >= 3 and epoch.timeouts >= 0.05 * total:
            log.info("%s: %d timeouts in %d answers: slowing down", server, epoch.timeouts, total)
            await self._call("cut", server)
        elif (
            mean is not None
            and usual is not None
            and epoch.answers >= 5
            and mean > 2 * usual + 0.05
        ):
            log.info("%s: answers took %.0f ms (usually %.0f): slowing down", server,
                     mean * 1000, usual * 1000)  # fmt: skip
            await self._call("cut", server)
        elif epoch.held >= BUSY_SHARE * (now - epoch.start):
            await self._call("raise", server)

    # -- the end ----------------------------------------------------------------------------------

    async def learned(self) -> dict[str, tuple[str, Learned]]:
        """What was learned of every server asked in this run (pinned ones left out)."""
        servers = [s for s in self._sources if self.pins.get(s) is None or not self._pinned(s)]
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        try:
            known = await self._buckets().learned(servers)
        except Exception as exc:
            await self._fall_back(exc)
            known = await self._buckets().learned(servers)
        return {s: (self._sources[s], learned) for s, learned in known.items()}

    def _pinned(self, server: str) -> bool:
        pin = self.pins.get(server)
        return pin is not None and pin.rate is not None

    async def aclose(self) -> None:
        await self.stragglers.stop()
        for task in list(self._pending):
            task.cancel()
        for queue in self._queues.values():
            if queue.dispatcher is not None:
                queue.dispatcher.cancel()
        with suppress(Exception):
            await self.buckets.aclose()


def shared_pace(settings: Settings) -> Settings:
    """Settings for a Celery worker: ``LAPSEWATCH_PACE_REDIS=auto`` (the default) shares
    the limits through the broker's Redis; ``off`` keeps them per process."""
    if settings.pace_redis == "auto" and settings.broker_url.startswith(("redis://", "rediss://")):
        return replace(settings, pace_redis=settings.broker_url)
    return settings


@asynccontextmanager
async def open_pacer(
    settings: Settings, store: Engine | None = None, *, save: bool = True
) -> AsyncIterator[ServerPacer]:
    """A pacer for one checker: learned rates read from ``store`` first and written back
    at the end (unless ``save`` is false), buckets in Redis when ``settings`` share them."""
    policy = policy_from_settings(settings)
    pins = load_pins(settings.pace_file)
    known: dict[str, Learned] = {}
    if store is not None:
        from lapsewatch.pace.store import load_rates

        try:
            known = await asyncio.to_thread(load_rates, store)
        except Exception as exc:  # a store without the table yet, or down: start afresh
            log.warning("learned rates not read: %s: %s", type(exc).__name__, exc)
    url = settings.pace_redis
    buckets: Buckets = (
        RedisBuckets(url, policy) if url not in ("auto", "off", "") else LocalBuckets(policy)
    )
    pacer = ServerPacer(
        buckets,
        policy=policy,
        pins=pins,
        known=known,
        max_wait=settings.pace_max_wait,
        timeout=settings.timeout,
    )
    try:
        yield pacer
    finally:
        try:
            learned = await pacer.learned()
            if store is not None and save and learned:
                from lapsewatch.pace.store import save_rates

                await asyncio.to_thread(save_rates, store, learned)
        except Exception as exc:
            log.warning("learned rates not saved: %s: %s", type(exc).__name__, exc)
        finally:
            await pacer.aclose()
