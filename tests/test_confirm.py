"""The confirmation rule (issue #11): never unverify on thin evidence without a second look."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from lapsewatch.confirm import Pending, settle
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.apply import CONFIRMATION_PENDING, CONFIRMATION_RESOLVED
from lapsewatch.schedule import Policy, next_check
from lapsewatch.sources.interface import Observation, Outcome
from lapsewatch.store import Account, Domain, Email, Event, make_sessionmaker
from lapsewatch.verdict import Decision, Verdict, decide
from lapsewatch.world import DomainScenario, Scenario, World
from tests.cycle_support import settings_for

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def rdap_record(*status: str, expires: datetime = NOW + timedelta(days=200)) -> Observation:
    return Observation(
        "rdap", "x.test", Outcome.ANSWERED, "record", found=True, status=status, expires_at=expires
    )


RDAP_404 = Observation("rdap", "x.test", Outcome.ANSWERED, "404", found=False)
RDAP_DOWN = Observation.error("rdap", "x.test", "HTTP 500")
NXDOMAIN = Observation(
    "dns", "x.test", Outcome.ANSWERED, "NXDOMAIN", found=False, status=("undelegated",)
)
DELEGATED = Observation(
    "dns", "x.test", Outcome.ANSWERED, "delegated", found=True, status=("delegated",)
)
PARKED = Observation(
    "dns", "x.test", Outcome.ANSWERED, "parked", found=True, status=("delegated", "parked")
)


def fastly(tokens: str) -> Observation:
    return Observation(
        "fastly", "x.test", Outcome.ANSWERED, tokens, found=None, status=tuple(tokens.split())
    )


# ------------------------------------------------------------------ verdict.decide


@pytest.mark.parametrize(
    ("observations", "verdict"),
    [
        ([rdap_record("redemption period"), NXDOMAIN], Verdict.REDEMPTION),  # registry record
        ([rdap_record("pending delete"), DELEGATED], Verdict.PENDING_DELETE),
        ([RDAP_404, NXDOMAIN], Verdict.AVAILABLE),  # two sources agree
        ([RDAP_DOWN, NXDOMAIN, fastly("undelegated inactive")], Verdict.AVAILABLE),
        ([rdap_record("active"), PARKED, fastly("active parked")], Verdict.FOR_SALE),
    ],
)
def test_firm_danger_acts_at_once(observations: list[Observation], verdict: Verdict) -> None:
    decision = decide("x.test", observations, now=NOW)
    assert decision.verdict is verdict
    assert decision.doubt is None
    assert decision.firm


@pytest.mark.parametrize(
    ("observations", "verdict", "why"),
    [
        ([RDAP_DOWN, NXDOMAIN], Verdict.AVAILABLE, "rests on dns alone"),
        ([RDAP_404, DELEGATED], Verdict.AVAILABLE, "dns says it is registered"),
        ([RDAP_404, NXDOMAIN, fastly("active")], Verdict.AVAILABLE, "fastly says it is"),
        ([RDAP_DOWN, NXDOMAIN, fastly("active")], Verdict.AVAILABLE, "dns alone; fastly"),
        ([rdap_record("active"), fastly("expiring")], Verdict.EXPIRING, "rdap says"),
        ([RDAP_DOWN, PARKED], Verdict.FOR_SALE, "rests on dns alone"),
    ],
)
def test_thin_danger_is_marked_for_confirmation(
    observations: list[Observation], verdict: Verdict, why: str
) -> None:
    decision = decide("x.test", observations, now=NOW)
    assert decision.verdict is verdict  # still named: the verdict itself does not change
    assert decision.doubt is not None
    assert why in decision.doubt
    assert not decision.firm


# ------------------------------------------------------------------ confirm.settle


def thin(verdict: Verdict = Verdict.AVAILABLE) -> Decision:
    return Decision("x.test", verdict, "DNS: NXDOMAIN", "dns", doubt="rests on dns alone")


def test_thin_danger_becomes_a_pending_confirmation() -> None:
    settled = settle(thin(), None, now=NOW, confirm_after=HOUR)
    assert settled.record == "pending"
    decision = settled.decision
    assert decision.verdict is Verdict.UNKNOWN  # unverifies nobody
    assert decision.pending is Verdict.AVAILABLE
    assert decision.confirm_at == NOW + HOUR
    assert "thin evidence" in decision.reason
    assert "confirming check" in decision.reason


def test_the_same_answer_at_the_confirming_check_acts() -> None:
    pending = Pending(Verdict.AVAILABLE, NOW)
    settled = settle(thin(), pending, now=NOW + HOUR, confirm_after=HOUR)
    assert settled.record == "confirmed"
    assert settled.decision.verdict is Verdict.AVAILABLE
    assert settled.decision.firm
    assert "confirmed" in settled.decision.reason


def test_the_same_answer_too_early_still_waits_for_the_first_due_time() -> None:
    pending = Pending(Verdict.AVAILABLE, NOW)
    settled = settle(thin(), pending, now=NOW + HOUR / 2, confirm_after=HOUR)
    assert settled.record is None  # nothing new to record
    assert settled.decision.verdict is Verdict.UNKNOWN
    assert settled.decision.confirm_at == NOW + HOUR  # not pushed back


def test_a_flip_ends_unknown_never_dangerous() -> None:
    pending = Pending(Verdict.AVAILABLE, NOW)
    registered = Decision("x.test", Verdict.REGISTERED, "RDAP: registered", "rdap")
    settled = settle(registered, pending, now=NOW + HOUR, confirm_after=HOUR)
    assert settled.record == "contradicted"
    assert settled.decision.verdict is Verdict.UNKNOWN
    assert "answers flip" in settled.decision.reason
    assert settled.decision.pending is None  # retried with backoff, not a confirmation


def test_a_different_thin_danger_starts_over() -> None:
    pending = Pending(Verdict.FOR_SALE, NOW)
    settled = settle(thin(Verdict.AVAILABLE), pending, now=NOW + HOUR, confirm_after=HOUR)
    assert settled.record == "pending"
    assert settled.decision.pending is Verdict.AVAILABLE
    assert settled.decision.confirm_at == NOW + 2 * HOUR


def test_errors_keep_the_pending_confirmation_open() -> None:
    unknown = Decision("x.test", Verdict.UNKNOWN, "no source could say")
    settled = settle(unknown, Pending(Verdict.AVAILABLE, NOW), now=NOW + HOUR, confirm_after=HOUR)
    assert settled.record is None
    assert settled.decision.verdict is Verdict.UNKNOWN
    assert settled.decision.pending is None


def test_firm_danger_resolves_a_pending_one_and_settling_twice_is_a_no_op() -> None:
    firm = Decision("x.test", Verdict.REDEMPTION, "RDAP: redemption", "rdap")
    settled = settle(firm, Pending(Verdict.AVAILABLE, NOW), now=NOW, confirm_after=HOUR)
    assert settled.record == "superseded"
    assert settled.decision.verdict is Verdict.REDEMPTION
    again = settle(settled.decision, None, now=NOW, confirm_after=HOUR)
    assert again.decision is settled.decision
    assert again.record is None


# ------------------------------------------------------------------ schedule


def test_a_pending_confirmation_is_checked_at_its_due_time() -> None:
    policy = Policy(confirm=timedelta(minutes=60))
    due = next_check(
        policy,
        now=NOW,
        verdict=Verdict.UNKNOWN,
        expires_at=None,
        failures=3,  # the confirming check does not wait for the error backoff
        confirm_at=NOW + HOUR,
    )
    assert due == NOW + HOUR
    late = next_check(
        policy, now=NOW, verdict=Verdict.UNKNOWN, expires_at=None, failures=1, confirm_at=NOW
    )
    assert late == NOW


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # lost.test: gone from the DNS, and its registry's RDAP server is down.
    lost = DomainScenario.make("lost.test", "available", rdap="500")
    scenario = Scenario({}, ("test",)).with_domain(lost)
    with World(scenario) as running:
        yield running


def events(engine: Engine, kind: str) -> list[Event]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def add_lou(engine: Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        account = Account(username="lou", created_at=NOW - timedelta(days=900), projects=[])
        account.emails.append(
            Email(
                address="lou@lost.test",
                domain="lost.test",
                free_provider=False,
                primary=True,
                verified=True,
                verified_at=NOW - timedelta(days=800),
            )
        )
        session.add(account)


def test_one_source_alone_unverifies_only_on_the_confirming_run(
    world: World, engine: Engine
) -> None:
    add_lou(engine)
    # DNS is the only source that answers: its NXDOMAIN alone is thin evidence.
    # A roomy timeout: on a loaded machine a DNS answer late by 0.5 s would make the
    # run's one answering source an error (not retried at once: lapsewatch.pace).
    settings = settings_for(
        world,
        LAPSEWATCH_SOURCES="rdap,dns",
        LAPSEWATCH_CONFIRM_MINUTES="60",
        LAPSEWATCH_TIMEOUT="3",
    )

    first = run_cycle(settings, engine, now=NOW)
    assert (first.checked, first.unverified, first.pending, first.errors) == (1, 0, 1, 0)
    with make_sessionmaker(engine)() as session:
        email = session.scalars(select(Email)).one()
        assert email.verified
        domain = session.get(Domain, "lost.test")
        assert domain is not None
        assert domain.last_verdict == "unknown"
        assert domain.next_due_at == NOW + HOUR
        assert domain.dangerous_at is None
    [pending] = events(engine, CONFIRMATION_PENDING)
    assert pending.after is not None
    assert pending.after["verdict"] == "available"

    early = run_cycle(settings, engine, now=NOW + HOUR / 2)
    assert early.checked == 0  # not due before its confirming check

    confirming = run_cycle(settings, engine, now=NOW + HOUR)
    assert (confirming.checked, confirming.unverified) == (1, 1)
    with make_sessionmaker(engine)() as session:
        email = session.scalars(select(Email)).one()
        assert not email.verified
        assert email.unverify_reason == "available"
        assert email.unverify_detail is not None
        assert "confirmed" in email.unverify_detail
    [resolved] = events(engine, CONFIRMATION_RESOLVED)
    assert resolved.after == {"outcome": "confirmed", "verdict": "available"}
    assert len(events(engine, "email.unverified")) == 1


def test_the_confirming_check_is_due_confirm_minutes_later(world: World, engine: Engine) -> None:
    """``LAPSEWATCH_CONFIRM_MINUTES`` other than the default: 5 minutes, not 60."""
    add_lou(engine)
    settings = settings_for(
        world, LAPSEWATCH_SOURCES="rdap,dns", LAPSEWATCH_CONFIRM_MINUTES="5", LAPSEWATCH_TIMEOUT="3"
    )
    five = timedelta(minutes=5)

    first = run_cycle(settings, engine, now=NOW)
    assert (first.checked, first.unverified, first.pending) == (1, 0, 1)
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "lost.test")
        assert domain is not None
        assert domain.next_due_at == NOW + five

    early = run_cycle(settings, engine, now=NOW + five - timedelta(seconds=1))
    assert early.checked == 0  # not due before its confirming check

    confirming = run_cycle(settings, engine, now=NOW + five)  # long before the default 60
    assert (confirming.checked, confirming.unverified) == (1, 1)
    [resolved] = events(engine, CONFIRMATION_RESOLVED)
    assert resolved.after == {"outcome": "confirmed", "verdict": "available"}
