"""One check cycle in this process: stream the due domains, check them concurrently,
apply the verdicts on one writer thread as they arrive, a batch per transaction.

Memory stays bounded however many domains are due: they are read a page at a
time (:func:`~lapsewatch.cycle.due.due_pages`), at most ``2 x concurrency``
domains are being checked, and at most :data:`WRITER_CAPACITY` results wait for
the writer; when the database falls behind, the checks wait for it.

The writer commits what arrived within :data:`LINGER` seconds of a batch's
first result, at most :data:`MAX_BATCH` results in one transaction: a handful
of commits a second under load, each result committed within a fraction of a
second when they trickle in. A crash loses only results not yet committed;
their domains are still due and the next run checks them. A committed batch
is whole, and applying is idempotent, so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from lapsewatch import metrics
from lapsewatch.config import Settings
from lapsewatch.cycle.apply import (
    CheckResult,
    apply_result,
    apply_results,
    settle_results,
    would_unverify,
)
from lapsewatch.cycle.checker import open_checker, source_counts
from lapsewatch.cycle.due import DueDomain, count_due, due_pages, select_due
from lapsewatch.mail_hosts import load_kept, save_kept
from lapsewatch.memory import Trimmer, trim
from lapsewatch.schedule import Policy
from lapsewatch.store.db import lock_for_writing, make_sessionmaker
from lapsewatch.verdict import Decision, Verdict

log = logging.getLogger(__name__)

__all__ = [
    "LINGER",
    "MAX_BATCH",
    "WRITER_CAPACITY",
    "CycleSummary",
    "check_and_apply",
    "run_cycle",
    "select_batch",
]

DEFAULT_BATCH = 10_000
MAX_BATCH = 500
"""Most results applied in one transaction."""
LINGER = 0.2
"""Seconds the writer waits for more results after the first of a batch: a few
commits a second, however fast results come (and at most that long for a result
to be committed)."""
WRITER_CAPACITY = 2_000
"""Most results waiting for the writer before the checks wait for it."""


@dataclass
class CycleSummary:
    checked: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    unverified: int = 0
    errors: int = 0
    """Domains whose check failed (``unknown``, not waiting for confirmation): retried."""
    pending: int = 0
    """Domains whose dangerous verdict rests on thin evidence: confirmed by a later check."""
    dry_run: bool = False
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per source: requests let through and "too many requests" answers (not in
    :meth:`to_dict`, whose shape the CLI's JSON output promises)."""

    def add(self, result: CheckResult, unverified: int) -> None:
        self.checked += 1
        self.verdicts[result.decision.verdict.value] += 1
        self.unverified += unverified
        waiting = result.decision.pending is not None
        self.pending += waiting
        self.errors += result.decision.verdict is Verdict.UNKNOWN and not waiting

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "verdicts": dict(sorted(self.verdicts.items())),
            "unverified": self.unverified,
            "errors": self.errors,
            "pending_confirmation": self.pending,
            "dry_run": self.dry_run,
        }


def select_batch(
    engine: Engine, *, now: datetime, limit: int | None, everything: bool
) -> list[DueDomain]:
    """The due domains as one list (small batches; a cycle streams them instead)."""
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
    """Check the due domains once; ``now`` fixes the clock (tests).

    ``on_start`` gets the number of due domains first; ``on_result`` is called
    for every result once it is committed (from the writer thread).
    """
    now_at_start = now or datetime.now(UTC)
    if on_start:
        total = count_due(engine, now=now_at_start, everything=everything)
        on_start(total if limit is None else min(total, limit))
    pages = due_pages(engine, now=now_at_start, limit=limit, everything=everything)
    with metrics.cycle_run("process") as done:
        summary = asyncio.run(
            check_and_apply(settings, engine, pages, dry_run=dry_run, now=now, on_result=on_result)
        )
        done(summary)
    return summary


async def check_and_apply(
    settings: Settings,
    engine: Engine,
    due: Generator[list[DueDomain]] | list[DueDomain],
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    on_result: Callable[[CheckResult, int], None] | None = None,
) -> CycleSummary:
    """Check ``due`` (pages of due domains, or a list) and apply every result."""
    pages = due if not isinstance(due, list) else (page for page in [due])
    summary = CycleSummary(dry_run=dry_run)
    writer = _Writer(
        make_sessionmaker(engine),
        Policy.from_settings(settings),
        dry_run=dry_run,
        summary=summary,
        on_result=metrics.result_hook(on_result, dry_run=dry_run),
    )
    try:
        # Pages are read on their own thread: the event loop never waits for the database.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lapsewatch-due") as reader:
            try:
                async with open_checker(settings, engine, save_rates=not dry_run) as checker:
                    metrics.instrument(checker)
                    mail_hosts = checker.mail_hosts
                    mail_hosts.remember(await _load_kept(engine, now or datetime.now(UTC)))
                    try:
                        items = _read(pages, reader)
                        with _long_lived_out_of_gc():
                            async with aclosing(checker.check_many(items, now)) as results:
                                async for result in results:
                                    mail_hosts.overruled(
                                        result.domain, result.decision, result.checked_at
                                    )
                                    await writer.put(result)
                        if not dry_run:
                            await _save_kept(engine, mail_hosts.kept, now or datetime.now(UTC))
                    finally:
                        summary.sources = source_counts(checker)
                await writer.close()
            finally:
                writer.abandon()
    finally:
        pages.close()  # after the reader thread is done with it
        trim()  # what the domains in flight held (a worker's next chunk starts lean)
    return summary


GC_THRESHOLDS = (10_000, 50, 50)
"""The collector's thresholds while checks run (Python's are 700, 10, 10)."""

_gc_lock = threading.Lock()
_gc_users = 0
_gc_thresholds: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def _long_lived_out_of_gc() -> Iterator[None]:
    """What exists when the checks start (modules, the ORM's mappings, the sources'
    clients) is moved out of the garbage collector's sight until they end, and the
    collector runs less often.

    The cycle allocates fast (hundreds of domains in flight), so Python's full collection
    ran every second or two, and walking the whole heap each time held the event loop
    and the writer for 200-300 ms: 10-15% of a cycle's time, measured in the bench's
    uniform world. Runs that overlap in one process (threads) share it: the first in
    freezes, the last out restores the collector as it found it."""
    global _gc_users, _gc_thresholds
    with _gc_lock:
        if _gc_users == 0:
            _gc_thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_thresholds)
                gc.unfreeze()


async def _load_kept(engine: Engine, now: datetime) -> dict[str, tuple[Decision, datetime]]:
    """The kept mail-host verdicts (``mail_hosts.load_kept``); none when they cannot be
    read (a failure costs a question to each mail-host domain, never the run)."""
    try:
        return await asyncio.to_thread(load_kept, engine, now)
    except SQLAlchemyError as exc:
        log.warning("kept mail-host verdicts not read: %s", exc)
        return {}


async def _save_kept(
    engine: Engine, kept: dict[str, tuple[Decision, datetime, datetime]], now: datetime
) -> None:
    """Save them (``mail_hosts.save_kept``); a failure is logged, the run goes on."""
    try:
        await asyncio.to_thread(save_kept, engine, kept, now)
    except SQLAlchemyError as exc:
        log.warning("kept mail-host verdicts not saved: %s", exc)


async def _read(
    pages: Generator[list[DueDomain]], reader: ThreadPoolExecutor
) -> AsyncIterator[DueDomain]:
    """The domains of ``pages``, the next page read while this one is being checked."""
    loop = asyncio.get_running_loop()
    upcoming = loop.run_in_executor(reader, next, pages, None)
    while (page := await upcoming) is not None:
        upcoming = loop.run_in_executor(reader, next, pages, None)
        for item in page:
            yield item


class _Writer:
    """Applies results on its own thread (the database sees one writer), in batches."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: Policy,
        *,
        dry_run: bool,
        summary: CycleSummary,
        on_result: Callable[[CheckResult, int], None] | None,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._dry_run = dry_run
        self._summary = summary
        self._on_result = on_result
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(WRITER_CAPACITY)
        self._queue: queue.SimpleQueue[CheckResult | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._trimmer = Trimmer()
        """Hands the heap's free pages back every few seconds (:mod:`lapsewatch.memory`)."""
        self._thread = threading.Thread(target=self._run, name="lapsewatch-writer", daemon=True)
        self._thread.start()

    async def put(self, result: CheckResult) -> None:
        """Queue a result; waits while :data:`WRITER_CAPACITY` results are pending."""
        self._raise()
        await self._room.acquire()
        self._raise()
        self._queue.put(result)

    async def close(self) -> None:
        """Wait until everything queued is committed; raise the writer's error, if any."""
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._raise()

    def abandon(self) -> None:
        """After an error elsewhere: let the thread finish what it holds, then stop."""
        if self._thread.is_alive():
            self._stop.set()
            self._queue.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _release(self, count: int) -> None:
        for _ in range(count):
            self._room.release()

    def _run(self) -> None:
        finished = False
        while not finished:
            results: list[CheckResult] = []
            item = self._queue.get()
            deadline = time.monotonic() + LINGER
            while item is not None:
                results.append(item)
                if len(results) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            finished = item is None
            if not results or self._stop.is_set():
                continue
            try:
                for result, count in self._write(results):
                    self._summary.add(result, count)
                    if self._on_result is not None:
                        self._on_result(result, count)
            except BaseException as exc:
                self.error = exc
                # Wake a put() waiting for room, so that it sees the error.
                self._loop.call_soon_threadsafe(self._release, WRITER_CAPACITY)
                return
            self._loop.call_soon_threadsafe(self._release, len(results))
            self._trimmer.maybe()

    def _write(self, results: list[CheckResult]) -> list[tuple[CheckResult, int]]:
        """Apply a batch; each result as applied (confirmation rule included), with
        how many addresses it unverified."""
        policy = self._policy
        if self._dry_run:
            with self._sessions() as session:
                settled = settle_results(session, results, policy=policy, record=False)
                return [(result, would_unverify(session, result)) for result in settled]
        try:
            with self._sessions.begin() as session:
                lock_for_writing(session.connection())
                settled = settle_results(session, results, policy=policy)
                return list(
                    zip(settled, apply_results(session, settled, policy=policy), strict=True)
                )
        except SQLAlchemyError:
            pass
        # The batch was rolled back as a whole. Once more, one domain per transaction
        # as before batching: a conflict with another writer (a deadlock, a unique
        # key) stays with its domain, and a database that is down fails again.
        applied = []
        for result in results:
            with self._sessions.begin() as session:
                lock_for_writing(session.connection())
                [settled_one] = settle_results(session, [result], policy=policy)
                applied.append((settled_one, apply_result(session, settled_one, policy=policy)))
        return applied
