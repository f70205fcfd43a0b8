"""A mail-host domain's safe verdict kept between cycle runs (``mail_host_verdicts``):
used until that domain would be due itself, never outliving a newer danger."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from lapsewatch.cycle import run_cycle
from lapsewatch.mail_hosts import MailHostChecks, load_kept, save_kept
from lapsewatch.store import make_sessionmaker
from lapsewatch.store.models import MailHostVerdict
from lapsewatch.verdict import Decision, Verdict
from lapsewatch.world import DomainScenario, World, parse_scenario
from tests.cycle_support import add_verified, settings_for

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(parse_scenario("", now=NOW, source="kept"), hang_seconds=1.0) as running:
        yield running


@pytest.fixture
def mailed(world: World, engine: Engine) -> Iterator[World]:
    """Two watched domains whose mail goes to ``shared-mail.test`` (healthy)."""
    for user, name in (("kep", "keeps.test"), ("kip", "keeps2.test")):
        add_verified(engine, user, f"{user}@{name}")
    world.set_domain(DomainScenario.make("shared-mail.test", "registered", now=NOW))
    for name in ("keeps.test", "keeps2.test"):
        world.set_domain(
            DomainScenario.make(name, "registered", now=NOW, mx=["mx.shared-mail.test"])
        )
    try:
        yield world
    finally:
        for name in ("keeps.test", "keeps2.test", "shared-mail.test"):
            world.remove_domain(name)


def kept_row(engine: Engine) -> MailHostVerdict | None:
    with make_sessionmaker(engine)() as session:
        return session.get(MailHostVerdict, "shared-mail.test")


def test_a_safe_verdict_is_kept_for_a_week(mailed: World, engine: Engine) -> None:
    """Hourly runs used to ask about a shared mail-host domain at each run; its
    ``registered`` verdict now stands for 7 days (sooner when that domain would be due
    itself), and a dry run keeps nothing."""
    world = mailed
    first = NOW - timedelta(days=8)
    world.rdap_requests.reset()
    run_cycle(settings_for(world), engine, now=first, dry_run=True)
    assert world.rdap_requests["shared-mail.test"] == 1  # once for both domains
    assert kept_row(engine) is None  # dry run
    run_cycle(settings_for(world), engine, now=first)
    assert world.rdap_requests["shared-mail.test"] == 2
    kept = kept_row(engine)
    assert kept is not None
    assert kept.verdict == "registered"
    assert kept.good_until == first + timedelta(days=7)
    world.rdap_requests.reset()
    later = first + timedelta(days=6, hours=23)
    summary = run_cycle(settings_for(world), engine, now=later, everything=True)
    assert summary.unverified == 0
    assert world.rdap_requests["shared-mail.test"] == 0  # the kept verdict stood
    assert world.rdap_requests["keeps.test"] == 1
    # A week on, it is asked again, and a lapse is seen.
    world.set_domain(DomainScenario.make("shared-mail.test", "available", now=NOW))
    next_week = first + timedelta(days=7, hours=1)
    summary = run_cycle(settings_for(world), engine, now=next_week, everything=True)
    assert world.rdap_requests["shared-mail.test"] == 1
    assert summary.unverified == 2
    kept = kept_row(engine)
    assert kept is not None
    assert kept.verdict == "available"
    assert kept.good_until == next_week  # danger is never kept: it replaced the safe one


def test_a_watched_domain_found_dangerous_overrules_its_kept_verdict(
    mailed: World, engine: Engine
) -> None:
    """``shared-mail.test`` is also somebody's own domain. Its own check finds it
    lapsed: the kept ``registered`` verdict stops standing, in that run already, so
    the domains behind it are judged on a fresh check."""
    world = mailed
    run_cycle(settings_for(world), engine, now=NOW - timedelta(hours=6))
    kept = kept_row(engine)
    assert kept is not None
    assert kept.good_until > NOW  # it would still stand at NOW
    add_verified(engine, "own", "own@shared-mail.test")
    world.set_domain(DomainScenario.make("shared-mail.test", "available", now=NOW))
    first = run_cycle(settings_for(world), engine, now=NOW, everything=True)
    kept = kept_row(engine)
    assert kept is not None
    assert kept.verdict == "available"
    assert kept.good_until == NOW
    later = NOW + timedelta(hours=1)
    second = run_cycle(settings_for(world), engine, now=later, everything=True)
    # Its own address, and the two behind it (asked afresh in that run if checked after
    # it, else in the next one, where the kept verdict no longer loads).
    assert first.unverified + second.unverified == 3


def test_an_older_save_never_replaces_a_newer_verdict(engine: Engine) -> None:
    """Several workers save at the end of their chunks: newest check wins."""
    danger = Decision("shared-mail.test", Verdict.AVAILABLE, "RDAP: 404", "rdap")
    safe = Decision("shared-mail.test", Verdict.REGISTERED, "RDAP: active", "rdap")
    save_kept(engine, {"shared-mail.test": (danger, NOW, NOW)}, NOW)
    earlier = NOW - timedelta(minutes=5)
    save_kept(engine, {"shared-mail.test": (safe, earlier, NOW + timedelta(days=30))}, NOW)
    kept = kept_row(engine)
    assert kept is not None
    assert kept.verdict == "available"
    assert load_kept(engine, NOW) == {}
    later = NOW + timedelta(minutes=5)
    save_kept(engine, {"shared-mail.test": (safe, later, NOW + timedelta(days=30))}, later)
    assert set(load_kept(engine, later)) == {"shared-mail.test"}
    # Rows that stopped standing more than a day ago are dropped when saving.
    save_kept(engine, {}, NOW + timedelta(days=32))
    assert kept_row(engine) is None


def test_a_kept_verdict_keeps_its_registration_date(engine: Engine) -> None:
    """A domain behind a kept verdict compares the mail-host domain's registration date
    with when its own MX was read (``mail_hosts.registered_since_read``)."""
    registered = datetime(2012, 3, 4, 5, 6, tzinfo=UTC)
    safe = Decision("shared-mail.test", Verdict.REGISTERED, "RDAP: active", "rdap", registered)
    save_kept(engine, {"shared-mail.test": (safe, NOW, NOW + timedelta(days=7))}, NOW)
    (kept, _until) = load_kept(engine, NOW)["shared-mail.test"]
    assert kept.registered_at == registered


def test_without_the_table_the_run_goes_on(mailed: World, engine: Engine) -> None:
    """A worker running before migration 0007 (or a locked table): the kept verdicts
    are neither read nor saved, and every result is applied all the same."""
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE mail_host_verdicts"))
    mailed.set_domain(DomainScenario.make("shared-mail.test", "available", now=NOW))
    summary = run_cycle(settings_for(mailed), engine, now=NOW)
    assert summary.unverified == 2


def test_a_domain_found_dangerous_overrules_a_verdict_checked_earlier_in_the_run() -> None:
    """Checked first as a mail host (``registered``), then as a domain of its own
    (lapsed): the verdict saved is the newer, and the next domain behind it asks
    again; a verdict about its own mail host, or doubt, changes nothing."""
    checks = MailHostChecks([])
    safe = Decision("shared-mail.test", Verdict.REGISTERED, "RDAP: active", "rdap")
    checks.kept["shared-mail.test"] = (safe, NOW, NOW + timedelta(days=30))
    lapsed = Decision("shared-mail.test", Verdict.MAIL_HOST_LAPSED, "its MX's domain", "rdap")
    checks.overruled("shared-mail.test", lapsed, NOW + timedelta(minutes=10))
    unknown = Decision("shared-mail.test", Verdict.UNKNOWN, "timeout")
    checks.overruled("shared-mail.test", unknown, NOW + timedelta(minutes=15))
    assert checks.kept["shared-mail.test"][0] is safe
    gone = Decision("shared-mail.test", Verdict.PENDING_DELETE, "RDAP: pending delete", "rdap")
    checks.overruled("shared-mail.test", gone, NOW + timedelta(minutes=20))
    after = NOW + timedelta(minutes=20)
    assert checks.kept["shared-mail.test"] == (gone, after, after)
    # A remembered verdict from an earlier run stops standing too.
    checks.remember({"other-mail.test": (safe, NOW + timedelta(days=30))})
    checks.overruled("other-mail.test", gone, after)
    assert checks.kept["other-mail.test"] == (gone, after, after)
