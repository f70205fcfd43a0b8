"""Issue #11: one deadline for a domain's whole check, not one per source or per step.

``LAPSEWATCH_TIMEOUT`` bounds one request; ``LAPSEWATCH_DOMAIN_DEADLINE`` bounds
everything done for one domain: whether each source applies, each source's
requests and retries, and the check of its mail hosts' domains. Here every
request is well within its own deadline, and only their sum runs past the
domain's: the domain is cut at its deadline, ends ``unknown`` with a reason
naming the domain deadline, and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.checker import CHECKER, Checker
from lapsewatch.cycle.due import DueDomain
from lapsewatch.pace.limited import Limited
from lapsewatch.sources.interface import Observation, Outcome, Source
from lapsewatch.store import Account, Domain, Email, ObservationRow, make_sessionmaker
from lapsewatch.verdict import Verdict
from lapsewatch.world import DomainScenario, Scenario, World
from tests.cycle_support import settings_for

DEADLINE = 0.5
SLACK = 0.3
"""Seconds past the deadline a cut check may take to end (a loaded machine)."""
MISSED = f"no answer within the domain deadline of {DEADLINE:g} s"


class Slow(Source):
    """Answers "registered" (RDAP) or "delegated" (DNS, with mail hosts) after ``answer``
    seconds, having taken ``ask`` seconds to tell whether it applies."""

    def __init__(
        self, *, ask: float = 0.0, answer: float = 0.0, mail_hosts: tuple[str, ...] = ()
    ) -> None:
        self.ask = ask
        self.answer = answer
        self.mail_hosts = mail_hosts

    async def relevant(self, domain: str) -> bool:
        await asyncio.sleep(self.ask)
        return True

    async def observe(self, domain: str) -> Observation:
        await asyncio.sleep(self.answer)
        if self.name == "dns":
            return Observation(
                "dns",
                domain,
                Outcome.ANSWERED,
                "delegated",
                found=True,
                status=("delegated",),
                mail_hosts=self.mail_hosts if domain == "x.test" else (),
            )
        return Observation(
            self.name,
            domain,
            Outcome.ANSWERED,
            "registered",
            found=True,
            status=("active",),
            registered_at=datetime(2010, 6, 1, tzinfo=UTC),
            expires_at=datetime(2099, 6, 1, tzinfo=UTC),
        )


class SlowRdap(Slow):
    name = "rdap"


class SlowDns(Slow):
    name = "dns"


async def check(*sources: Slow) -> tuple[float, Observation | None, Verdict, str, list[str]]:
    """x.test checked under :data:`DEADLINE`: seconds, the first error observation,
    the verdict, its reason, and the sources of every observation."""
    checker = Checker(
        [Limited(s, rate=1000.0, concurrency=4) for s in sources], in_flight=1, deadline=DEADLINE
    )
    started = time.monotonic()
    result = await checker.check_one(DueDomain("x.test", None))
    took = time.monotonic() - started
    await checker.mail_hosts.aclose()
    errors = [o for o in result.observations if o.outcome is Outcome.ERROR]
    decision = result.decision
    return (
        took,
        errors[0] if errors else None,
        decision.verdict,
        decision.reason,
        [o.source for o in result.observations],
    )


def test_healthy_work_within_the_deadline_is_not_cut() -> None:
    took, error, verdict, _reason, _ = asyncio.run(
        check(SlowRdap(ask=0.1, answer=0.1), SlowDns(answer=0.2))
    )
    assert error is None
    assert verdict is Verdict.REGISTERED
    assert took < DEADLINE


def test_asking_whether_a_source_applies_counts_against_the_domain_deadline() -> None:
    # 0.3 s to tell, 0.3 s to answer: each under the deadline, together past it.
    took, error, verdict, reason, sources = asyncio.run(
        check(SlowRdap(ask=0.3, answer=0.3), SlowDns(answer=0.05))
    )
    assert took < DEADLINE + SLACK
    assert error is not None
    assert (error.source, error.detail) == ("rdap", MISSED)
    assert sources == ["rdap", "dns"]  # the source that did answer is kept
    assert verdict is Verdict.UNKNOWN  # no registry record: retried with backoff
    assert MISSED in reason


def test_the_mail_host_check_counts_against_the_domain_deadline() -> None:
    # The domain's own sources answer in 0.3 s, its mail host's domain in 0.3 s more.
    took, error, verdict, reason, _ = asyncio.run(
        check(SlowRdap(answer=0.3), SlowDns(answer=0.3, mail_hosts=("mx.hoster.test",)))
    )
    assert took < DEADLINE + SLACK
    assert error is not None
    assert error.source == CHECKER
    why = f"mail host domain hoster.test: {MISSED}"
    assert error.detail == why
    # Not "registered" on a check that did not finish: unknown, retried with backoff.
    assert verdict is Verdict.UNKNOWN
    assert reason == why


# ------------------------------------------------------------------ a whole cycle

LATENCY = 1.0
"""Seconds every server of the world takes to answer each request."""
REQUEST_TIMEOUT = 2.5
"""``LAPSEWATCH_TIMEOUT``: each request (1 s) is well within it."""
DOMAIN_DEADLINE = 3.0
"""A domain's own sources take 2 s (DNS asks NS, then MX); its mail host's domain 2 s
more: only the domain deadline can cut that at 3 s."""
LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def slow_world() -> Iterator[World]:
    scenario = Scenario({}, ("test",))
    for domain in (
        DomainScenario.make("plain.test", registered="2010-06-01"),
        DomainScenario.make("mailed.test", registered="2010-06-01", mx=["mx.hoster.test"]),
        DomainScenario.make("hoster.test", registered="2010-06-01"),
    ):
        scenario = scenario.with_domain(domain)
    with World(scenario, latency=LATENCY) as running:
        yield running


def test_slow_requests_each_in_time_are_cut_by_the_domain_deadline(
    slow_world: World, engine: Engine
) -> None:
    with make_sessionmaker(engine).begin() as session:
        for index, name in enumerate(("plain.test", "mailed.test")):
            account = Account(username=f"user{index}", created_at=LONG_AGO, projects=[])
            account.emails.append(
                Email(
                    address=f"u@{name}",
                    domain=name,
                    free_provider=False,
                    primary=True,
                    verified=True,
                    verified_at=LONG_AGO,
                )
            )
            session.add(account)
    settings = settings_for(
        slow_world,
        LAPSEWATCH_SOURCES="rdap,dns",
        LAPSEWATCH_TIMEOUT=str(REQUEST_TIMEOUT),
        LAPSEWATCH_DOMAIN_DEADLINE=str(DOMAIN_DEADLINE),
        LAPSEWATCH_PACE="source",
    )
    summary = run_cycle(settings, engine)
    assert (summary.checked, summary.errors, summary.unverified) == (2, 1, 0)
    with make_sessionmaker(engine)() as session:
        rows = {d.name: d for d in session.scalars(select(Domain))}
        seen = {
            (o.source, o.outcome, o.detail)
            for o in session.scalars(
                select(ObservationRow).where(ObservationRow.domain == "mailed.test")
            )
        }
    assert rows["plain.test"].last_verdict == "registered"  # 2 s of work: in time
    mailed = rows["mailed.test"]
    missed = f"no answer within the domain deadline of {DOMAIN_DEADLINE:g} s"
    why = f"mail host domain hoster.test: {missed}"
    assert mailed.last_verdict == "unknown"
    assert mailed.last_reason == why
    assert "whole request" not in (mailed.last_reason or "")  # not a request's deadline
    assert (CHECKER, "error", why) in seen
    assert mailed.consecutive_failures == 1  # retried with backoff
