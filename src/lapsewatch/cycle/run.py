"""One check cycle in this process: select a bounded batch of due domains, check
them concurrently, apply each verdict in its own transaction as it arrives."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult, apply_result, would_unverify
from lapsewatch.cycle.checker import open_checker
from lapsewatch.cycle.due import DueDomain, select_due
from lapsewatch.schedule import Policy
from lapsewatch.store.db import make_sessionmaker
from lapsewatch.verdict import Verdict

__all__ = ["CycleSummary", "run_cycle", "select_batch"]

DEFAULT_BATCH = 10_000


@dataclass
class CycleSummary:
    checked: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    unverified: int = 0
    errors: int = 0
    dry_run: bool = False

    def add(self, result: CheckResult, unverified: int) -> None:
        self.checked += 1
        self.verdicts[result.decision.verdict.value] += 1
        self.unverified += unverified
        self.errors += result.decision.verdict is Verdict.UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "verdicts": dict(sorted(self.verdicts.items())),
            "unverified": self.unverified,
            "errors": self.errors,
            "dry_run": self.dry_run,
        }


def select_batch(
    engine: Engine, *, now: datetime, limit: int | None, everything: bool
) -> list[DueDomain]:
    with make_sessionmaker(engine)() as session:
        return select_due(session, now=now, limit=limit, everything=everything)


def run_cycle(
    settings: Settings,
    engine: Engine,
    *,
    limit: int | None = DEFAULT_BATCH,
    everything: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
    on_start: Callable[[int], None] | None = None,
    on_result: Callable[[CheckResult, int], None] | None = None,
) -> CycleSummary:
    """Check the due domains once; ``now`` fixes the clock (tests)."""
    now_at_start = now or datetime.now(UTC)
    batch = select_batch(engine, now=now_at_start, limit=limit, everything=everything)
    if on_start:
        on_start(len(batch))
    return asyncio.run(
        _check_and_apply(settings, engine, batch, dry_run=dry_run, now=now, on_result=on_result)
    )


async def _check_and_apply(
    settings: Settings,
    engine: Engine,
    batch: list[DueDomain],
    *,
    dry_run: bool,
    now: datetime | None,
    on_result: Callable[[CheckResult, int], None] | None,
) -> CycleSummary:
    summary = CycleSummary(dry_run=dry_run)
    sessions = make_sessionmaker(engine)
    policy = Policy.from_settings(settings)

    def write(result: CheckResult) -> int:
        if dry_run:
            with sessions() as session:
                return would_unverify(session, result)
        with sessions.begin() as session:
            return apply_result(session, result, policy=policy)

    # One writer thread: the database sees one writer, the event loop never blocks on it.
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lapsewatch-writer") as writer:
        pending: list[asyncio.Future[int]] = []

        def record(result: CheckResult, future: asyncio.Future[int]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            summary.add(result, future.result())
            if on_result:
                on_result(result, future.result())

        async with open_checker(settings) as checker:
            async for result in checker.check_many(batch, now):
                future = loop.run_in_executor(writer, write, result)
                future.add_done_callback(functools.partial(record, result))
                pending.append(future)
        await asyncio.gather(*pending)
    return summary
