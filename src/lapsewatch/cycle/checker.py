"""Check many domains concurrently: every source asked at once per domain, each
source under its own rate limit and concurrency cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.due import DueDomain
from lapsewatch.cycle.limits import Limited
from lapsewatch.sources import Source, open_sources
from lapsewatch.verdict import decide

__all__ = ["Checker", "open_checker"]


class Checker:
    """Turns due domains into results; never touches the store."""

    def __init__(self, sources: list[Limited], *, in_flight: int) -> None:
        self.sources = sources
        self._in_flight = in_flight

    async def check_one(self, due: DueDomain, now: datetime | None = None) -> CheckResult:
        observations = tuple(await asyncio.gather(*(s.observe(due.name) for s in self.sources)))
        checked_at = now or datetime.now(UTC)
        decision = decide(
            due.name, observations, now=checked_at, verified_at=due.earliest_verified_at
        )
        return CheckResult(due.name, due.earliest_verified_at, observations, decision, checked_at)

    async def check_many(
        self, due: Iterable[DueDomain], now: datetime | None = None
    ) -> AsyncIterator[CheckResult]:
        """Results in completion order, with at most ``in_flight`` domains open at once."""
        pending: set[asyncio.Task[CheckResult]] = set()
        for item in due:
            if len(pending) >= self._in_flight:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    yield task.result()
            pending.add(asyncio.create_task(self.check_one(item, now)))
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                yield task.result()


def limit_sources(sources: list[Source], settings: Settings) -> list[Limited]:
    return [
        Limited(s, rate=settings.rates.get(s.name, 10.0), concurrency=settings.concurrency)
        for s in sources
    ]


@asynccontextmanager
async def open_checker(settings: Settings) -> AsyncIterator[Checker]:
    async with open_sources(settings) as sources:
        limited = limit_sources(sources, settings)
        yield Checker(limited, in_flight=settings.concurrency * 2)
