"""Rate limits and a concurrency cap around a source.

Two ways (``LAPSEWATCH_PACE``):

* ``server`` (the default): every request waits for its server's own learned rate
  (:class:`lapsewatch.pace.ServerPacer`); a per-source cap (``LAPSEWATCH_RATE_RDAP``
  …, only when set) may hold the whole source under an egress budget on top.
* ``source``: one rate per source, as before per-server limits existed: at most
  ``rate`` requests a second to all of that source's servers together.
"""

from __future__ import annotations

import asyncio
import time

from lapsewatch.pace.pacer import (
    HORIZON,
    POLL,
    TIMEOUT_SHARE,
    ServerPacer,
    Trace,
    current_trace,
    tracing,
)
from lapsewatch.pace.policy import Learned, Policy, ServerBucket
from lapsewatch.sources.interface import Observation, Outcome, Source

__all__ = ["BURST_SECONDS", "Limited"]

BURST_SECONDS = 0.1
"""The most a source gets in one burst, in seconds' worth of its rate.

A server's own limiter usually allows a full second's burst. Ours allows a tenth
of that, so that at full speed the server's bucket stays almost full and the
jitter of the network (answers that arrive bunched) never tips it over."""


class _Cap:
    """One fixed rate for a whole source: a GCRA bucket (the pacer's, pinned). A request
    reserves its slot only once it is at most ``HORIZON`` away and sleeps until it; a
    request cancelled before (its domain's deadline) has reserved nothing, so a long
    queue never fills with slots nobody takes.

    aiolimiter, used before, woke every waiting request once per ``1 / rate`` to look
    for room: with thousands queued that cost 5% of the checker's CPU in the bench's
    uniform world, where the cap is the limit."""

    def __init__(self, rate: float) -> None:
        policy = Policy(burst=max(BURST_SECONDS, 1.0 / rate))
        self._bucket = ServerBucket(Learned(rate), policy, pinned=rate)

    async def acquire(self) -> None:
        while True:
            reserved, wait = self._bucket.reserve(time.monotonic(), HORIZON)
            if reserved:
                break
            await asyncio.sleep(min(wait - HORIZON, POLL))
        if wait > 0:
            await asyncio.sleep(wait)


class Limited(Source):
    """Wraps a source: its requests paced, at most ``concurrency`` in flight.

    Every request on the wire passes the limiter, retries included: a source that
    ``paces_requests`` calls back (:meth:`request`) before each one it sends;
    any other source is counted once per observation.

    Without a ``pacer``: one limiter of ``rate`` requests/s for the whole source, and
    a 429 (or REFUSED) pauses every further request to it for its ``Retry-After``.

    With a ``pacer``: each request waits for its server (``host:port``), then for the
    optional per-source ``cap``, then for a concurrency slot, which it keeps until its
    observation ends (retries included). A domain waiting for a slow server holds no
    slot, so it never holds up the domains of the fast ones.
    """

    def __init__(
        self,
        inner: Source,
        *,
        rate: float | None = None,
        concurrency: int,
        pacer: ServerPacer | None = None,
        cap: float | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # per-instance, mirrors the inner source
        self._pacer = pacer
        if pacer is None and rate is None:
            raise ValueError("Limited needs a rate or a pacer")
        limit = cap if pacer is not None else rate
        self._limiter = _Cap(limit) if limit else None
        self._slots = asyncio.Semaphore(concurrency)
        self._not_before = 0.0
        self._paced = inner.paces_requests
        if self._paced:
            inner.pacer = self
        self.requests = 0
        """Requests let through (each attempt of a retried request counts)."""
        self.rate_limited = 0
        """Answers that said "too many requests" (429, or DNS REFUSED)."""

    async def request(self, server: str = "") -> None:
        """Wait until one more request to ``server`` may go out; count it."""
        if self._pacer is None:
            await self._pause()
            assert self._limiter is not None
            await self._limiter.acquire()
            await self._pause()  # a 429 may have come in while we queued
            self.requests += 1
            return
        key = server or f"({self.name})"
        trace = current_trace()
        began = self._pacer.now()
        if trace is not None:
            trace.waiting = True
        try:
            await self._pacer.acquire(key, self.name)
            if self._limiter is not None:
                await self._limiter.acquire()
        finally:
            if trace is not None:
                trace.waiting = False
                trace.wait_for_slot(began, self._pacer.now() - began)
        if trace is not None:
            if not trace.slot:
                await self._slots.acquire()
                trace.slot = True
            trace.sent.append((key, self._pacer.now()))
        self.requests += 1

    async def _pause(self) -> None:
        while (wait := self._not_before - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    def timed_out(self, server: str = "") -> None:
        """Mark ``server`` as silent for the rest of this observation (with a pacer)."""
        trace = current_trace()
        if self._pacer is not None and trace is not None:
            trace.timed_out.add(server or f"({self.name})")

    def refused(self, retry_after: float | None, server: str = "") -> None:
        self.rate_limited += 1
        if self._pacer is not None:
            key = server or f"({self.name})"
            trace = current_trace()
            sent = None
            if trace is not None:
                trace.refused = True
                sent = next((at for s, at in reversed(trace.sent) if s == key), None)
            self._pacer.refused(key, retry_after, sent)
        elif retry_after:
            self._not_before = max(self._not_before, time.monotonic() + retry_after)

    async def observe(self, domain: str) -> Observation:
        return await self.observe_with(domain)

    async def observe_with(self, domain: str, *, mail_hosts: bool = True) -> Observation:
        if self._pacer is not None:
            return await self._observe_paced(domain, self._pacer, mail_hosts)
        async with self._slots:
            if self._paced:
                return await self.inner.observe_with(domain, mail_hosts=mail_hosts)
            await self.request()
            observation = await self.inner.observe_with(domain, mail_hosts=mail_hosts)
        if observation.retry_after:
            self.refused(observation.retry_after)
        return observation

    async def _observe_paced(
        self, domain: str, pacer: ServerPacer, mail_hosts: bool
    ) -> Observation:
        async with tracing() as trace:
            try:
                if not self._paced:
                    await self.request()
                observation, cut = await self._observe_watched(domain, pacer, trace, mail_hosts)
            finally:
                if trace.slot:
                    self._slots.release()
        if not self._paced and observation.retry_after:
            self.refused(observation.retry_after)
        if cut:
            return observation  # cut at the run's end: it says nothing of the server
        if trace.sent and not trace.refused:
            server, sent = trace.sent[-1]
            seconds = pacer.now() - sent
            timed_out = server in trace.timed_out or (  # the source said so, or it took that long
                observation.outcome is Outcome.ERROR and seconds >= TIMEOUT_SHARE * pacer.timeout
            )
            pacer.answered(server, seconds, timed_out=timed_out)
        return observation

    async def _observe_watched(
        self, domain: str, pacer: ServerPacer, trace: Trace, mail_hosts: bool
    ) -> tuple[Observation, bool]:
        """The inner observation, and whether it was cut short, straggling at the run's
        end (:mod:`lapsewatch.pace.stragglers`)."""
        watching = pacer.stragglers.watching(trace.out)
        try:
            async with watching as watched:
                return await self.inner.observe_with(domain, mail_hosts=mail_hosts), False
        except TimeoutError:
            if watched.cut is None or not watched.scope.expired():
                raise
            return Observation.error(self.name, domain, watched.cut), True

    async def aclose(self) -> None:
        await self.inner.aclose()
