"""Per-source rate limit and concurrency cap, and a pause when a source says 429."""

from __future__ import annotations

import asyncio
import time

from aiolimiter import AsyncLimiter

from lapsewatch.sources.interface import Observation, Source

__all__ = ["Limited"]


class Limited(Source):
    """Wraps a source: at most ``rate`` requests a second, ``concurrency`` at once.

    When an answer carries ``Retry-After``, every further request to that source
    waits until then: one 429 slows the whole source down, not just one domain.
    """

    def __init__(self, inner: Source, *, rate: float, concurrency: int) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # per-instance, mirrors the inner source
        # Allow a burst of at most one second's worth, so the ceiling is respected.
        self._limiter = (
            AsyncLimiter(max(rate, 1.0), 1.0) if rate >= 1 else AsyncLimiter(1, 1 / rate)
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._not_before = 0.0
        self.requests = 0
        self.rate_limited = 0

    async def observe(self, domain: str) -> Observation:
        async with self._slots:
            while (wait := self._not_before - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            async with self._limiter:
                self.requests += 1
                observation = await self.inner.observe(domain)
        if observation.retry_after:
            self.rate_limited += 1
            self._not_before = max(self._not_before, time.monotonic() + observation.retry_after)
        return observation

    async def aclose(self) -> None:
        await self.inner.aclose()
