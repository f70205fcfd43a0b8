"""Per-source rate limit and concurrency cap, and a pause when a source says 429."""

from __future__ import annotations

import asyncio
import time

from aiolimiter import AsyncLimiter

from lapsewatch.sources.interface import Observation, Source

__all__ = ["BURST_SECONDS", "Limited"]

BURST_SECONDS = 0.1
"""The most a source gets in one burst, in seconds' worth of its rate.

A server's own limiter usually allows a full second's burst. Ours allows a tenth
of that, so that at full speed the server's bucket stays almost full and the
jitter of the network (answers that arrive bunched) never tips it over."""


class Limited(Source):
    """Wraps a source: at most ``rate`` requests a second, ``concurrency`` at once.

    Every request on the wire passes the limiter, retries included: a source that
    ``paces_requests`` calls back (:meth:`request`) before each one it sends;
    any other source is counted once per observation. When a source answers 429
    (or REFUSED), every further request to it waits for its ``Retry-After``: one
    429 slows the whole source down, not just one domain.
    """

    def __init__(self, inner: Source, *, rate: float, concurrency: int) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # per-instance, mirrors the inner source
        burst = max(1.0, rate * BURST_SECONDS)
        self._limiter = AsyncLimiter(burst, burst / rate)
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
        """Wait for the limiter and for any ``Retry-After`` pause; count the request.

        One limit for the whole source: ``server`` is not used yet."""
        await self._pause()
        await self._limiter.acquire()
        await self._pause()  # a 429 may have come in while we queued
        self.requests += 1

    async def _pause(self) -> None:
        while (wait := self._not_before - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    def refused(self, retry_after: float | None, server: str = "") -> None:
        self.rate_limited += 1
        if retry_after:
            self._not_before = max(self._not_before, time.monotonic() + retry_after)

    async def observe(self, domain: str) -> Observation:
        async with self._slots:
            if self._paced:
                return await self.inner.observe(domain)
            await self.request()
            observation = await self.inner.observe(domain)
        if observation.retry_after:
            self.refused(observation.retry_after)
        return observation

    async def aclose(self) -> None:
        await self.inner.aclose()
