"""The check cycle against the local world, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from lapsewatch.cycle import run_cycle
from lapsewatch.notices import recipients
from lapsewatch.store import Domain, Email, Event, Notice, make_sessionmaker
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import ACCOUNTS, EXPECTED_UNVERIFIED, NOW, seed, settings_for, state


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=2.0) as running:
        yield running


def test_every_address_ends_in_the_right_state(world: World, engine: Engine) -> None:
    seed(engine)
    summary = run_cycle(settings_for(world), engine, now=NOW)
    custom = {a.split("@")[1] for emails in ACCOUNTS.values() for a, v in emails if v}
    custom -= {"gmail.com", "proton.me"}
    assert summary.checked == len(custom)
    assert summary.verdicts["unknown"] == summary.errors == 1  # rdap-broken.test

    with make_sessionmaker(engine)() as session:
        for email in session.scalars(select(Email)):
            expected = EXPECTED_UNVERIFIED.get(email.address)
            if expected:
                assert not email.verified, email.address
                assert email.unverify_reason == expected, email.address
                assert email.unverify_detail
                assert email.unverified_at == NOW
            else:
                assert email.unverify_reason is None, email.address
        assert summary.unverified == len(EXPECTED_UNVERIFIED)

        events = session.scalars(select(Event).where(Event.kind == "email.unverified")).all()
        assert sorted(e.reason is not None for e in events) == [True] * len(EXPECTED_UNVERIFIED)
        assert {e.after["verdict"] for e in events if e.after} == set(EXPECTED_UNVERIFIED.values())

        notices = session.scalars(select(Notice)).all()
        about = {n.subject.split()[2] for n in notices}
        assert about == set(EXPECTED_UNVERIFIED)
        assert all(n.to_address is None and n.event_id for n in notices)
        bob = next(n for n in notices if "bob@" in n.subject)
        assert recipients(session, bob) == ["bob@proton.me"]  # the other verified address
        dave = [n for n in notices if "dave@" in n.subject]
        assert [recipients(session, n) for n in dave] == [[], []]  # none left to tell

        caught = session.get(Domain, "caught.test")
        assert caught is not None
        assert caught.last_verdict == "reregistered"
        assert caught.registered_at is not None
        broken = session.get(Domain, "rdap-broken.test")
        assert broken is not None
        assert broken.consecutive_failures == 1
        assert broken.next_due_at == NOW + timedelta(hours=1)
        lapsing = session.get(Domain, "lapsing.test")
        assert lapsing is not None
        assert lapsing.next_due_at == NOW + timedelta(days=1)  # near its expiration date
        alive = session.get(Domain, "alive.test")
        assert alive is not None
        assert alive.next_due_at == NOW + timedelta(days=30)


def test_recently_verified_address_survives_reregistration(world: World, engine: Engine) -> None:
    seed(engine)
    run_cycle(settings_for(world), engine, now=NOW)
    with make_sessionmaker(engine)() as session:
        carl = session.scalars(select(Email).where(Email.address == "carl@caught.test")).one()
        assert carl.verified


def test_second_run_changes_nothing(world: World, engine: Engine) -> None:
    seed(engine)
    settings = settings_for(world)
    run_cycle(settings, engine, now=NOW)
    before = state(engine)
    again = run_cycle(settings, engine, now=NOW)
    assert again.checked == 0  # nothing is due
    everything = run_cycle(settings, engine, now=NOW, everything=True)
    assert everything.unverified == 0
    after = state(engine)
    assert after["emails"] == before["emails"]
    assert after["notices"] == before["notices"]
    assert [e for e in after["events"] if e[0] == "email.unverified"] == [
        e for e in before["events"] if e[0] == "email.unverified"
    ]


def test_a_domain_that_comes_back_does_not_reverify(world: World, engine: Engine) -> None:
    from lapsewatch.world import DomainScenario

    seed(engine)
    world.set_domain(DomainScenario.make("comeback.test", "redemption", now=NOW))
    with make_sessionmaker(engine).begin() as session:
        session.add(Domain(name="comeback.test", consecutive_failures=0))
        alice = session.scalars(select(Email).where(Email.address == "alice@alive.test")).one()
        session.add(
            Email(
                account_id=alice.account_id,
                address="alice@comeback.test",
                domain="comeback.test",
                verified=True,
                verified_at=NOW - timedelta(days=900),
            )
        )
    try:
        run_cycle(settings_for(world), engine, now=NOW, everything=True)
        world.set_domain(DomainScenario.make("comeback.test", "registered", now=NOW))
        run_cycle(settings_for(world), engine, now=NOW, everything=True)
    finally:
        world.remove_domain("comeback.test")
    with make_sessionmaker(engine)() as session:
        email = session.scalars(select(Email).where(Email.address == "alice@comeback.test")).one()
        assert not email.verified
        assert email.unverify_reason == "redemption"


def test_dry_run_changes_nothing(world: World, engine: Engine) -> None:
    seed(engine)
    before = state(engine)
    summary = run_cycle(settings_for(world), engine, now=NOW, dry_run=True)
    assert summary.unverified == len(EXPECTED_UNVERIFIED)
    assert state(engine) == before


def test_limit_bounds_the_batch(world: World, engine: Engine) -> None:
    seed(engine)
    first = run_cycle(settings_for(world), engine, now=NOW, limit=3)
    assert first.checked == 3
    rest = run_cycle(settings_for(world), engine, now=NOW)
    assert first.checked + rest.checked == len(state(engine)["verdicts"])


def test_flaky_sources_never_unverify_wrongly(world: World, engine: Engine) -> None:
    """30% of RDAP and Fastly answers fail; time passes; everything is checked in the end."""
    seed(engine)
    settings = settings_for(world)
    world.flaky = 0.3
    world.hang_seconds = 0.6
    try:
        clock = NOW
        for _ in range(8):
            run_cycle(settings, engine, now=clock)
            for address, (verified, reason) in state(engine)["emails"].items():
                if not verified and reason:
                    assert address in EXPECTED_UNVERIFIED, (address, reason)
            clock += timedelta(hours=200)  # past any backoff
    finally:
        world.flaky = 0.0
        world.hang_seconds = 2.0
    final = state(engine)
    for address in EXPECTED_UNVERIFIED:
        assert final["emails"][address][0] is False, address
    assert all(v is not None for v in final["verdicts"].values())
