"""An expired name sold at auction during the auto-renew grace: it never drops, its
registration date stays, the registry shows ``auto renew period`` and a new owner's
name servers. docs/window.md measured this as most of the exposure left; the cycle
checks every 3 days in the grace and judges a change of name servers there ``expiring``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from lapsewatch.config import Settings
from lapsewatch.cycle import run_cycle
from lapsewatch.store import Email, make_sessionmaker
from lapsewatch.store.models import Account, Domain
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cycle_support import settings_for

NOW = datetime.now(UTC).replace(microsecond=0)
OWNER_NS = ["ns1.owner-dns.test", "ns2.owner-dns.test"]


def settings(world: World) -> Settings:
    """The tests' settings, with a 2 s timeout: the MX is read in one try, and a
    read lost to a slow answer on a loaded machine would leave no mail hosts."""
    return settings_for(world, LAPSEWATCH_TIMEOUT="2")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


def seed(engine: Engine, address: str, domain: str) -> None:
    with make_sessionmaker(engine).begin() as session:
        account = Account(username=address.split("@")[0], created_at=NOW - timedelta(days=900))
        account.emails.append(
            Email(
                address=address,
                domain=domain,
                verified=True,
                verified_at=NOW - timedelta(days=800),
                primary=True,
            )
        )
        session.add(account)


def row(engine: Engine, domain: str) -> tuple[Domain, Email]:
    with make_sessionmaker(engine)() as session:
        return (
            session.get_one(Domain, domain),
            session.scalars(select(Email).where(Email.domain == domain)).one(),
        )


def grace(name: str, nameservers: list[str]) -> DomainScenario:
    return DomainScenario.make(
        name,
        "registered",
        now=NOW,
        expires="+340d",  # the registry auto-renewed: a year ahead
        statuses=["active", "auto renew period"],
        nameservers=nameservers,
    )


def test_takeover_by_auction_in_the_auto_renew_grace_is_caught(
    world: World, engine: Engine
) -> None:
    seed(engine, "m@sold.test", "sold.test")
    world.set_domain(DomainScenario.make("sold.test", "registered", now=NOW, nameservers=OWNER_NS))
    try:
        run_cycle(settings(world), engine, now=NOW - timedelta(days=40))
        domain, email = row(engine, "sold.test")
        assert domain.nameservers == OWNER_NS
        assert email.verified
        # Expired, auto-renewed by the registry, auctioned and pushed to a buyer.
        world.set_domain(grace("sold.test", ["ns1.buyer-parking.test"]))
        summary = run_cycle(settings(world), engine, now=NOW, everything=True)
        assert summary.unverified == 1
        domain, email = row(engine, "sold.test")
        assert not email.verified
        assert email.unverify_reason == "expiring"
        assert "name servers changed" in (email.unverify_detail or "")
        assert domain.nameservers == OWNER_NS  # the last healthy ones stay known
    finally:
        world.remove_domain("sold.test")


def test_a_paying_owner_in_the_grace_is_checked_every_three_days_and_left_alone(
    world: World, engine: Engine
) -> None:
    seed(engine, "m@late.test", "late.test")
    world.set_domain(DomainScenario.make("late.test", "registered", now=NOW, nameservers=OWNER_NS))
    try:
        run_cycle(settings(world), engine, now=NOW - timedelta(days=40))
        world.set_domain(grace("late.test", OWNER_NS))
        assert run_cycle(settings(world), engine, now=NOW, everything=True).unverified == 0
        domain, email = row(engine, "late.test")
        assert email.verified
        assert domain.next_due_at == NOW + timedelta(days=3)  # every 3 days in the grace
    finally:
        world.remove_domain("late.test")


# With mail hosts (MX) known from the last healthy check: the rule needs them changed too.

OWNER_MX = ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]  # a provider: never checked


def grace_with_mx(name: str, nameservers: list[str], mx: list[str]) -> DomainScenario:
    return DomainScenario.make(
        name,
        "registered",
        now=NOW,
        expires="+340d",
        statuses=["active", "auto renew period"],
        nameservers=nameservers,
        mx=mx,
    )


@pytest.mark.parametrize(
    ("mx", "unverified"),
    [(OWNER_MX, 0), (["in1-smtp.messagingengine.com"], 1), ([], 1)],
    ids=["owner-moved-dns", "buyer-mail", "buyer-parked"],
)
def test_name_servers_changed_in_the_grace_act_only_with_the_mail_hosts(
    world: World, engine: Engine, mx: list[str], unverified: int
) -> None:
    seed(engine, "m@moved.test", "moved.test")
    world.set_domain(
        DomainScenario.make("moved.test", "registered", now=NOW, nameservers=OWNER_NS, mx=OWNER_MX)
    )
    try:
        # Read five days ago: fresh, so the grace check reads the MX only because the
        # name servers changed (the DNS source asked again, with the MX).
        run_cycle(settings(world), engine, now=NOW - timedelta(days=5))
        domain, _ = row(engine, "moved.test")
        assert domain.mail_hosts == OWNER_MX
        assert domain.mail_hosts_read_at == NOW - timedelta(days=5)
        world.set_domain(grace_with_mx("moved.test", ["ns1.new-dns.test"], mx))
        world.dns_requests.reset()
        summary = run_cycle(settings(world), engine, now=NOW, everything=True)
        assert summary.unverified == unverified
        assert world.dns_requests["moved.test"] == 3  # NS; then NS and MX
        domain, email = row(engine, "moved.test")
        assert email.verified is (unverified == 0)
        if unverified:
            assert "name servers and mail hosts changed" in (email.unverify_detail or "")
        else:
            assert domain.last_verdict == "registered"
        # What is known stays that of the last healthy check outside the grace.
        assert domain.mail_hosts == OWNER_MX
        assert domain.nameservers == OWNER_NS
    finally:
        world.remove_domain("moved.test")
