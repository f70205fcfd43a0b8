"""Issue #13: slow domains do not hold the cycle, at its end either.

Once a run has nothing left to start, a request still out ten times longer than its
server usually takes (at least a second) is cut: its domain gets an ``error``
observation, is retried with backoff and is never unverified for it. A request still
waiting for its server's slot, or to a server with no usual time yet, is not cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from types import SimpleNamespace
from typing import ClassVar

import pytest
from sqlalchemy import Engine, select

from lapsewatch import metrics
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.checker import Checker
from lapsewatch.cycle.due import DueDomain
from lapsewatch.pace import Learned, Policy, ServerPacer
from lapsewatch.pace import stragglers as stragglers_module
from lapsewatch.pace.limited import Limited
from lapsewatch.pace.pacer import Trace
from lapsewatch.pace.shared import LocalBuckets
from lapsewatch.sources.interface import Observation, Outcome, Source
from lapsewatch.store import Domain, Email, ObservationRow, make_sessionmaker
from lapsewatch.verdict import Verdict
from lapsewatch.world import DomainScenario, Scenario, World
from tests.cycle_support import add_verified, settings_for

SERVER = "slow:443"
CUT = "not waited for at the run's end"


class Stuck(Source):
    """Asks ``SERVER`` ``requests`` times in a row, then waits until ``release`` is set."""

    name = "rdap"
    paces_requests: ClassVar[bool] = True

    def __init__(self, requests: int = 1) -> None:
        self.requests = requests
        self.sent = 0
        self.release = asyncio.Event()

    async def observe(self, domain: str) -> Observation:
        assert self.pacer is not None
        for _ in range(self.requests):
            await self.pacer.request(SERVER)
            self.sent += 1
        await self.release.wait()
        return Observation(self.name, domain, Outcome.ANSWERED, "registered", found=True)


@pytest.fixture
def short_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fifth of a second at least, instead of a second: the unit tests run faster (not
    the cycle's test, whose healthy answers share the interpreter with the world)."""
    monkeypatch.setattr(stragglers_module, "TAIL_MIN", 0.2)


def _pacer(rate: float = 100.0, usual: float | None = 0.01) -> ServerPacer:
    policy = Policy(burst=0.0)
    pacer = ServerPacer(LocalBuckets(policy), policy=policy, known={SERVER: Learned(rate)})
    if usual is not None:
        pacer._baseline[SERVER] = usual  # as learned from this run's answers
    return pacer


async def _sent(source: Stuck, count: int = 1) -> None:
    while source.sent < count:
        await asyncio.sleep(0.01)


@pytest.mark.usefixtures("short_tail")
def test_a_straggler_is_cut_once_the_run_drains() -> None:
    pacer = _pacer()
    source = Stuck()
    limited = Limited(source, concurrency=4, pacer=pacer)

    async def scenario() -> tuple[Observation, float]:
        task = asyncio.create_task(limited.observe("late.example"))
        await _sent(source)
        started = time.monotonic()
        pacer.stragglers.drain()
        observation = await task
        await pacer.aclose()
        return observation, time.monotonic() - started

    observation, took = asyncio.run(scenario())
    assert observation.outcome is Outcome.ERROR
    assert CUT in observation.detail
    assert SERVER in observation.detail
    assert took < 2.0  # cut, not waited for (it would wait forever)
    assert pacer.stragglers.cut == 1
    epoch = pacer._epochs.get(SERVER)
    assert epoch is None or (epoch.answers, epoch.timeouts) == (0, 0)  # no signal learned


@pytest.mark.usefixtures("short_tail")
def test_a_cut_observation_is_timed_like_a_timed_out_one() -> None:
    """The metrics count every observation's time, a cut one's too (up to the cut), so
    ``lapsewatch_source_latency_seconds_count`` matches the observations counted."""
    pacer = _pacer()
    source = Stuck()
    limited = Limited(source, concurrency=4, pacer=pacer)
    metrics.instrument(SimpleNamespace(sources=[limited]))
    sample = ("lapsewatch_source_latency_seconds_count", {"source": "rdap"})
    before = metrics.PROCESS.get_sample_value(*sample) or 0.0

    async def scenario() -> Observation:
        task = asyncio.create_task(limited.observe("late.example"))
        await _sent(source)
        pacer.stragglers.drain()
        observation = await task
        await pacer.aclose()
        return observation

    assert CUT in asyncio.run(scenario()).detail
    assert (metrics.PROCESS.get_sample_value(*sample) or 0.0) == before + 1


@pytest.mark.usefixtures("short_tail")
def test_nothing_is_cut_while_the_run_still_has_domains_to_start() -> None:
    pacer = _pacer()
    source = Stuck()
    limited = Limited(source, concurrency=4, pacer=pacer)

    async def scenario() -> Observation:
        task = asyncio.create_task(limited.observe("slow.example"))
        await _sent(source)
        await asyncio.sleep(0.6)  # three times the tail's limit: no drain, no cut
        source.release.set()
        return await task

    observation = asyncio.run(scenario())
    assert observation.outcome is Outcome.ANSWERED
    assert pacer.stragglers.cut == 0


@pytest.mark.usefixtures("short_tail")
def test_a_server_without_a_usual_time_is_waited_for() -> None:
    """A run of a domain or two has no usual time for its servers: no cut, the request's
    own timeout stands."""
    pacer = _pacer(usual=None)
    source = Stuck()
    limited = Limited(source, concurrency=4, pacer=pacer)

    async def scenario() -> Observation:
        task = asyncio.create_task(limited.observe("only.example"))
        await _sent(source)
        pacer.stragglers.drain()
        await asyncio.sleep(0.6)
        source.release.set()
        observation = await task
        await pacer.aclose()
        return observation

    assert asyncio.run(scenario()).outcome is Outcome.ANSWERED
    assert pacer.stragglers.cut == 0


def test_a_request_waiting_for_its_slot_is_not_a_straggler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The second request (an MX after the NS) waits 1 s for its server's next slot, past
    the tail's limit (0.5 s) since the first went out: waiting is the run's work, not
    cut."""
    monkeypatch.setattr(stragglers_module, "TAIL_MIN", 0.5)
    pacer = _pacer(rate=1.0)
    source = Stuck(requests=2)
    limited = Limited(source, concurrency=4, pacer=pacer)

    async def scenario() -> Observation:
        pacer.stragglers.drain()
        task = asyncio.create_task(limited.observe("two.example"))
        await _sent(source, 2)
        source.release.set()
        observation = await task
        await pacer.aclose()
        return observation

    assert asyncio.run(scenario()).outcome is Outcome.ANSWERED
    assert pacer.stragglers.cut == 0


class Instant(Source):
    """Answers at once with ``answer`` (for ``x.test``)."""

    def __init__(self, answer: Observation) -> None:
        self.name = answer.source  # type: ignore[misc]
        self.answer = answer

    async def observe(self, domain: str) -> Observation:
        return self.answer


NXDOMAIN = Observation(
    "dns", "x.test", Outcome.ANSWERED, "NXDOMAIN", found=False, status=("undelegated",)
)
UNDELEGATED = Observation(
    "fastly", "x.test", Outcome.ANSWERED, "undelegated inactive", status=("undelegated", "inactive")
)


@pytest.mark.usefixtures("short_tail")
def test_the_drain_starts_when_the_input_ends_and_a_cut_is_never_firm() -> None:
    """Through the checker: while its input may still bring domains nothing is cut; once
    it ends, the registry's hanging answer is cut. The resolver and Fastly both say the
    domain is gone, which two sources agreeing would make firm; but the registry's record,
    not waited for, might have said it is on hold: the verdict must be confirmed later."""
    pacer = _pacer()
    stuck = Stuck()
    sources = [
        Limited(stuck, concurrency=4, pacer=pacer),
        Limited(Instant(NXDOMAIN), concurrency=4, pacer=pacer),
        Limited(Instant(UNDELEGATED), concurrency=4, pacer=pacer),
    ]
    checker = Checker(sources, in_flight=4, pacer=pacer)
    more = asyncio.Event()

    async def due() -> AsyncIterator[DueDomain]:
        yield DueDomain("x.test", None)
        await more.wait()  # the input stays open: more domains may come

    async def scenario() -> tuple[int, CheckResult]:
        async with aclosing(checker.check_many(due())) as results:
            pending = asyncio.ensure_future(anext(results))
            await _sent(stuck)
            await asyncio.sleep(0.6)  # three times the tail's limit
            cut_before = pacer.stragglers.cut
            assert not pending.done()
            more.set()  # the input ends: the run drains
            async with asyncio.timeout(5):  # not cut: it would wait forever
                result = await pending
        await pacer.aclose()
        await checker.mail_hosts.aclose()
        return cut_before, result

    cut_before, result = asyncio.run(scenario())
    assert cut_before == 0
    assert pacer.stragglers.cut == 1
    rdap = next(o for o in result.observations if o.source == "rdap")
    assert rdap.outcome is Outcome.ERROR
    assert CUT in rdap.detail
    assert result.decision.verdict is Verdict.AVAILABLE
    assert result.decision.doubt is not None
    assert not result.decision.firm  # never unverified on this check alone


def test_a_stragglers_time_counts_from_its_first_request_to_the_server_asked_last() -> None:
    """A DNS check that moves to the next resolver starts afresh there; time waiting for
    a slot after the first request to it is not time out on the wire."""
    trace = Trace()
    assert trace.out(10.0) is None  # nothing sent yet
    trace.sent.append(("a:53", 0.0))
    assert trace.out(1.0) == ("a:53", 1.0)
    trace.wait_for_slot(2.0, 0.5)
    trace.sent.append(("b:53", 2.5))
    assert trace.out(3.0) == ("b:53", 0.5)
    trace.wait_for_slot(3.0, 1.0)
    trace.sent.append(("a:53", 4.0))
    assert trace.out(5.0) == ("a:53", 3.5)  # back at a: from 0.0, both waits left out
    trace.waiting = True
    assert trace.out(5.0) is None  # waiting for a slot: not on the wire


# -- a cycle against the local world ------------------------------------------------------------

REQUEST_TIMEOUT = 8.0
HEALTHY = [f"fine{index:02d}.test" for index in range(30)]
HANGING = "hangs.test"


@pytest.fixture
def hanging_world() -> Iterator[World]:
    scenario = Scenario(domains={}, tlds=("test",))
    for name in HEALTHY:
        scenario = scenario.with_domain(DomainScenario.make(name, registered="2010-06-01"))
    scenario = scenario.with_domain(
        DomainScenario.make(HANGING, registered="2010-06-01", rdap="timeout")
    )
    with World(scenario, latency=0.02, hang_seconds=30.0) as running:
        yield running


def test_a_cycle_ends_when_its_healthy_answers_are_in(hanging_world: World, engine: Engine) -> None:
    """One domain's RDAP server never answers. The cycle does not wait out the request
    timeout for it: the domain is an error, retried later, and stays verified."""
    for index, name in enumerate([*HEALTHY, HANGING]):
        add_verified(engine, f"user{index}", f"u@{name}")
    settings = settings_for(
        hanging_world,
        LAPSEWATCH_SOURCES="rdap,dns",
        LAPSEWATCH_TIMEOUT=str(REQUEST_TIMEOUT),
        LAPSEWATCH_PACE_REDIS="off",
    )
    started = time.monotonic()
    summary = run_cycle(settings, engine)
    took = time.monotonic() - started
    assert (summary.checked, summary.unverified) == (31, 0)
    with make_sessionmaker(engine)() as session:
        domains = {d.name: d for d in session.scalars(select(Domain))}
        details = [
            o.detail
            for o in session.scalars(
                select(ObservationRow).where(
                    ObservationRow.domain == HANGING, ObservationRow.source == "rdap"
                )
            )
        ]
        verified = session.scalars(select(Email.verified).where(Email.domain == HANGING)).all()
    assert all(domains[name].last_verdict == "registered" for name in HEALTHY)
    assert len(details) == 1, details
    assert CUT in details[0]
    assert domains[HANGING].last_verdict == "unknown"
    assert domains[HANGING].consecutive_failures == 1  # retried with backoff
    assert verified == [True]
    assert took < REQUEST_TIMEOUT, took  # it did not wait for the hanging request
