"""Check many domains concurrently: every source asked at once per domain, each
source under its own rate limit and concurrency cap."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Engine

from lapsewatch.config import ConfigError, Settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.due import DueDomain
from lapsewatch.mail_hosts import MailHostChecks, not_read_again, registered_since_read
from lapsewatch.pace import ServerPacer, open_pacer
from lapsewatch.pace.limited import Limited
from lapsewatch.schedule import Policy
from lapsewatch.source_catalog import Evidence, names_with
from lapsewatch.sources import Observation, Source, observe_relevant, open_sources
from lapsewatch.sources.interface import Deadline, failure
from lapsewatch.verdict import (
    Decision,
    MailHostCheck,
    Verdict,
    decide,
    needs_mail_hosts,
    read_mail_hosts,
)

__all__ = ["CHECKER", "Checker", "open_checker", "source_counts"]

log = logging.getLogger(__name__)

DEFAULT_DOMAIN_DEADLINE = 60.0
CHECKER = "checker"
"""The source named by the error observation of a check that failed outside every
source (the mail-host step, the verdict)."""


class Checker:
    """Turns due domains into results; never touches the store, never raises for a domain."""

    def __init__(
        self,
        sources: list[Limited],
        *,
        in_flight: int,
        deadline: float = DEFAULT_DOMAIN_DEADLINE,
        policy: Policy | None = None,
        pacer: ServerPacer | None = None,
    ) -> None:
        self.sources = sources
        self._pacer = pacer
        """With per-server pacing: cuts the stragglers once nothing is left to start."""
        self._in_flight = in_flight
        self._deadline = deadline
        self._policy = policy or Policy()
        """Its ``interval``: how often a domain's MX is read (``DueDomain.read_mail_hosts``)."""
        self.mail_hosts = MailHostChecks(sources, deadline=deadline, policy=self._policy)
        """This cycle's mail-host domain checks: each at most once, however many share it."""

    async def check_one(self, due: DueDomain, now: datetime | None = None) -> CheckResult:
        """One domain's result, by one deadline for the whole check (its sources and its
        mail-host domains); any failure in it is that domain's error, never the cycle's.

        A source that fails or is still busy at the deadline is that source's
        ``error`` observation. A mail-host domain whose verdict is not known by
        then, or any other failure (the mail-host step, the verdict: a bug), adds
        a ``checker`` error observation and makes the verdict ``unknown`` (a
        dangerous verdict of the domain's own sources still stands); either way
        it is logged with the domain and the domain is retried with backoff
        (``unknown`` counts as a failed check).

        The MX is read when ``due.read_mail_hosts`` says so; otherwise the stored mail
        hosts stand in, and the MX is read after all (the DNS source asked again) only
        when the grace name-server rule needs it (``verdict.needs_mail_hosts``).
        """
        checked_at = now or datetime.now(UTC)
        deadline = Deadline.after(self._deadline)
        observations: tuple[Observation, ...] = ()
        try:
            read = due.read_mail_hosts(self._policy, checked_at)
            observations = await observe_relevant(self.sources, due.name, deadline, mail_hosts=read)
            if not read and needs_mail_hosts(
                observations, due.known_nameservers, due.known_mail_hosts
            ):
                observations = await self._with_mail_hosts(due.name, observations, deadline)
            checked_at = now or datetime.now(UTC)  # when the sources answered
            mail_hosts = await self._mail_hosts(due, observations, checked_at, deadline)
            if read_mail_hosts(observations) is None and _registered_again(mail_hosts):
                # The stored mail hosts stood in: does the MX still name that domain?
                again = await self._with_mail_hosts(due.name, observations, deadline)
                if read_mail_hosts(again) is None:  # no telling: that mail host is unknown
                    mail_hosts = not_read_again(mail_hosts)
                else:
                    observations = again
                    mail_hosts = await self._mail_hosts(due, observations, checked_at, deadline)
            decision = decide(
                due.name,
                observations,
                now=checked_at,
                verified_at=due.earliest_verified_at,
                known_nameservers=due.known_nameservers,
                known_mail_hosts=due.known_mail_hosts,
                mail_hosts=mail_hosts,
            )
            late = [m.domain for m in mail_hosts if m.decision.reason == deadline.missed]
            if late:
                why = f"mail host domain {', '.join(late)}: {deadline.missed}"
                observations = (*observations, Observation.error(CHECKER, due.name, why))
                if not decision.verdict.dangerous:
                    # Not "registered" on an unfinished check: retried with backoff.
                    decision = replace(
                        decision, verdict=Verdict.UNKNOWN, reason=why, decided_by=None
                    )
        except Exception as exc:
            log.warning("%s: no verdict: %s: %s", due.name, type(exc).__name__, exc)
            log.debug("%s: no verdict", due.name, exc_info=exc)
            failed = Observation.error(CHECKER, due.name, failure(exc))
            observations = (*observations, failed)
            reason = f"no verdict: {type(exc).__name__}: {str(exc)[:200]}"
            decision = Decision(due.name, Verdict.UNKNOWN, reason)
        return CheckResult(due.name, due.earliest_verified_at, observations, decision, checked_at)

    async def _mail_hosts(
        self,
        due: DueDomain,
        observations: tuple[Observation, ...],
        checked_at: datetime,
        deadline: Deadline,
    ) -> tuple[MailHostCheck, ...]:
        """The mail-host domains' verdicts, a domain registered since the MX named it
        made ``reregistered`` (``mail_hosts.registered_since_read``)."""
        checks = await self.mail_hosts.for_domain(
            due.name, observations, checked_at, deadline, stored=due.known_mail_hosts
        )
        return registered_since_read(
            checks,
            due.known_mail_hosts,
            due.mail_hosts_read_at,
            due.earliest_verified_at,
            checked_at,
        )

    async def _with_mail_hosts(
        self, domain: str, observations: tuple[Observation, ...], deadline: Deadline
    ) -> tuple[Observation, ...]:
        """The observations with the DNS source's asked again, its MX read this time."""
        dns = [s for s in self.sources if s.name in names_with(Evidence.DNS)]
        again = {o.source: o for o in await observe_relevant(dns, domain, deadline)}
        return tuple(again.get(o.source, o) for o in observations)

    async def check_many(
        self, due: Iterable[DueDomain] | AsyncIterable[DueDomain], now: datetime | None = None
    ) -> AsyncGenerator[CheckResult]:
        """Results in completion order, with at most ``in_flight`` domains open at once.

        ``due`` is read only as fast as results are taken: a slow consumer slows
        the checks down instead of letting results pile up (bounded memory).
        Close the iterator (``contextlib.aclosing``) to stop early. Once ``due`` is used
        up, the last domains' stragglers are cut short (with per-server pacing:
        :mod:`lapsewatch.pace.stragglers`), so that a run, or a Celery chunk, ends when
        its healthy answers are in.
        """
        items = _aiter(due)
        taking = asyncio.Lock()
        results: asyncio.Queue[CheckResult | BaseException | object] = asyncio.Queue(
            maxsize=self._in_flight
        )

        async def work() -> None:
            try:
                while True:
                    async with taking:
                        item = await anext(items, None)
                    if item is None:
                        if self._pacer is not None:
                            self._pacer.stragglers.drain()
                        break
                    await results.put(await self.check_one(item, now))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer, which raises it
                await results.put(exc)
            await results.put(_FINISHED)

        workers = [asyncio.create_task(work()) for _ in range(self._in_flight)]
        running = len(workers)
        cut_before = self._pacer.stragglers.cut if self._pacer is not None else 0
        try:
            while running:
                got = await results.get()
                if got is _FINISHED:
                    running -= 1
                elif isinstance(got, BaseException):
                    raise got
                else:
                    assert isinstance(got, CheckResult)
                    yield got
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            if self._pacer is not None:
                await self._pacer.stragglers.stop()
                if cut := self._pacer.stragglers.cut - cut_before:
                    log.info("%d requests cut short at the end (stragglers): checked later", cut)
            await self.mail_hosts.aclose()


def limit_sources(
    sources: list[Source], settings: Settings, pacer: ServerPacer | None = None
) -> list[Limited]:
    """Each source under its limits: per server (``pacer``), or one rate per source."""
    return [
        Limited(
            s,
            rate=settings.rates.get(s.name, 10.0),
            concurrency=settings.concurrency,
            pacer=pacer,
            cap=settings.source_caps.get(s.name),
        )
        for s in sources
    ]


@asynccontextmanager
async def open_checker(
    settings: Settings, store: Engine | None = None, *, save_rates: bool = True
) -> AsyncIterator[Checker]:
    """A checker over ``settings``' sources; with per-server pacing, the learned rates are
    read from ``store`` first and written back at the end (unless ``save_rates`` is false)."""
    if settings.pace not in ("server", "source"):
        raise ConfigError(f"LAPSEWATCH_PACE={settings.pace!r}: expected server or source")
    if settings.pace == "source":
        async with open_sources(settings) as sources:
            limited = limit_sources(sources, settings)
            yield Checker(
                limited,
                in_flight=settings.concurrency * 2,
                deadline=settings.domain_deadline,
                policy=Policy.from_settings(settings),
            )
        return
    # A long Retry-After is the schedule's to wait, not a domain's (it would hold its slot).
    settings = replace(
        settings, max_retry_after=min(settings.max_retry_after, settings.pace_max_wait)
    )
    async with (
        open_sources(settings) as sources,
        open_pacer(settings, store, save=save_rates) as pacer,
    ):
        limited = limit_sources(sources, settings, pacer)
        in_flight = max(settings.concurrency * 2, settings.pace_window)
        yield Checker(
            limited,
            in_flight=in_flight,
            deadline=settings.domain_deadline,
            policy=Policy.from_settings(settings),
            pacer=pacer,
        )


def source_counts(checker: Checker) -> dict[str, dict[str, int]]:
    """Requests let through and "too many requests" answers, per source."""
    return {
        s.name: {"requests": s.requests, "rate_limited": s.rate_limited} for s in checker.sources
    }


_FINISHED: Final = object()


def _registered_again(checks: Iterable[MailHostCheck]) -> bool:
    return any(c.decision.verdict is Verdict.REREGISTERED for c in checks)


async def _aiter(items: Iterable[DueDomain] | AsyncIterable[DueDomain]) -> AsyncIterator[DueDomain]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
