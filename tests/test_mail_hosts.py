"""Mail hosts (MX) on other registrable domains (issue #12): ``mail_host_lapsed``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from lapsewatch.confirm import settle
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.apply import CheckResult, _affected
from lapsewatch.domains import parse
from lapsewatch.mail_hosts import (
    REREGISTRATION_DOUBT,
    MailProviders,
    mail_host_domains,
    mail_providers,
    registered_since_read,
)
from lapsewatch.scan import checker as scan_checker
from lapsewatch.scan.addresses import extract
from lapsewatch.scan.findings import Status, findings_for_package
from lapsewatch.scan.packages import PackageMetadata
from lapsewatch.sources.interface import Observation, Outcome
from lapsewatch.store import Account, Domain, Email, Event, Notice, make_sessionmaker
from lapsewatch.verdict import DANGEROUS, Decision, MailHostCheck, Verdict, decide
from lapsewatch.world import DomainScenario, Scenario, World, parse_scenario
from tests.cli_support import SOURCE_LIMITS, Ran
from tests.cli_support import lapsewatch as run
from tests.cycle_support import add_verified, settings_for

NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)

SCENARIO = """
[[domains]]
name = "old-mail.test"          # the mail host's domain: nobody renewed it
state = "available"

[[domains]]
name = "mailed.test"
registered = "2010-06-01"
mx = ["mx1.old-mail.test", "mx2.old-mail.test"]

[[domains]]
name = "also-mailed.test"       # shares the lapsed mail host with mailed.test
registered = "2010-06-01"
mx = ["mx.old-mail.test"]

[[domains]]
name = "hosted.test"            # Google Workspace: a provider, never asked about
registered = "2010-06-01"
mx = ["aspmx.l.google.com", "alt1.aspmx.l.google.com"]

[[domains]]
name = "selfmail.test"          # its own mail host
registered = "2010-06-01"
mx = ["mail.selfmail.test"]

[[domains]]
name = "good-mail.test"
registered = "2010-06-01"

[[domains]]
name = "fine.test"              # mail hosted elsewhere, on a healthy domain
registered = "2010-06-01"
mx = ["mx.good-mail.test"]

[[domains]]
name = "shaky-mail.test"        # a mail host's domain with only thin evidence of danger
registered = "2010-06-01"
rdap = "500"
dns = "lie"

[[domains]]
name = "thin.test"
registered = "2010-06-01"
mx = ["mx.shaky-mail.test"]
"""

ACCOUNTS = {
    "mia": ["mia@mailed.test", "mia@gmail.com"],
    "moe": ["moe@also-mailed.test"],
    "hal": ["hal@hosted.test"],
    "sam": ["sam@selfmail.test"],
    "fin": ["fin@fine.test"],
    "tim": ["tim@thin.test"],
}


def scenario() -> Scenario:
    return parse_scenario(SCENARIO, now=NOW, source="mail-hosts")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(scenario(), hang_seconds=3.0) as running:
        yield running


def seed(engine: Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        names: set[str] = set()
        for username, addresses in ACCOUNTS.items():
            account = Account(username=username, created_at=LONG_AGO, projects=[])
            for index, address in enumerate(addresses):
                parsed = parse(address)
                account.emails.append(
                    Email(
                        address=address,
                        domain=parsed.domain,
                        free_provider=parsed.free_provider,
                        primary=index == 0,
                        verified=True,
                        verified_at=LONG_AGO,
                    )
                )
                if not parsed.free_provider:
                    names.add(parsed.domain)
            session.add(account)
        session.add_all(Domain(name=n, consecutive_failures=0) for n in sorted(names))


# ------------------------------------------------------------------ pure parts


def dns_with(*hosts: str, domain: str = "x.test") -> Observation:
    return Observation(
        "dns", domain, Outcome.ANSWERED, "delegated", found=True, mail_hosts=tuple(hosts)
    )


def test_which_mail_hosts_are_checked() -> None:
    observed = [
        dns_with(
            "mx1.old-mail.test",
            "mx2.old-mail.test",  # the same registrable domain: once
            "mail.x.test",  # the domain itself
            "aspmx.l.google.com",
            "x-test.mail.protection.outlook.com",
            "in1-smtp.messagingengine.com",
            "mx01.mail.icloud.com",
            "mx.gmail.com",  # free providers count as providers
            "mx.other.co.uk",  # the Public Suffix List decides the registrable domain
            "127.0.0.1",
            "MX.Deep.X.Test.",  # under the domain itself, in any case
            "mx.x.test.evil.test",  # not under it: evil.test is its own domain
            "mx.notx.test",
        )
    ]
    assert mail_host_domains("x.test", observed) == [
        ("mx1.old-mail.test", "old-mail.test"),
        ("mx.other.co.uk", "other.co.uk"),
        ("mx.x.test.evil.test", "evil.test"),
        ("mx.notx.test", "notx.test"),
    ]
    assert mail_host_domains("x.test", observed, limit=1) == [
        ("mx1.old-mail.test", "old-mail.test")
    ]
    errors = [Observation.error("dns", "x.test", "timeout")]
    assert mail_host_domains("x.test", errors) == []
    # Under the domain, yet a registration of its own: os.hedmark.no is a public suffix.
    assert mail_host_domains("hedmark.no", [dns_with("mx.x.os.hedmark.no")]) == [
        ("mx.x.os.hedmark.no", "x.os.hedmark.no")
    ]
    assert MailProviders(["protection.outlook.com"]).covers("a.mail.protection.outlook.com")
    assert not MailProviders(["protection.outlook.com"]).covers("outlook.com.evil.test")
    assert {"google.com", "pphosted.com", "mimecast.com"} <= mail_providers().entries


def _decision(verdict: Verdict, doubt: str | None = None) -> Decision:
    return Decision("old-mail.test", verdict, f"{verdict.value} because", "rdap", doubt=doubt)


RECORD = Observation(
    "rdap",
    "x.test",
    Outcome.ANSWERED,
    "record",
    found=True,
    status=("active",),
    expires_at=NOW + timedelta(days=200),
)


def test_verdict_with_mail_hosts() -> None:
    assert Verdict.MAIL_HOST_LAPSED in DANGEROUS
    firm = MailHostCheck("mx1.old-mail.test", "old-mail.test", _decision(Verdict.AVAILABLE))
    decision = decide("x.test", [RECORD], now=NOW, mail_hosts=[firm])
    assert decision.verdict is Verdict.MAIL_HOST_LAPSED
    assert decision.firm
    assert decision.reason.startswith(
        "mail host mx1.old-mail.test is on old-mail.test, which is available: "
    )
    assert decision.mail_hosts == (firm,)

    thin = MailHostCheck("mx.shaky.test", "shaky.test", _decision(Verdict.AVAILABLE, "dns alone"))
    pending = decide("x.test", [RECORD], now=NOW, mail_hosts=[thin])
    assert pending.verdict is Verdict.MAIL_HOST_LAPSED
    assert not pending.firm
    assert "dns alone" in (pending.doubt or "")
    settled = settle(pending, None, now=NOW, confirm_after=timedelta(hours=1)).decision
    assert settled.verdict is Verdict.UNKNOWN
    assert settled.pending is Verdict.MAIL_HOST_LAPSED

    fine = MailHostCheck("mx.good.test", "good.test", _decision(Verdict.REGISTERED))
    unknown = MailHostCheck("mx.dark.test", "dark.test", _decision(Verdict.UNKNOWN))
    assert decide("x.test", [RECORD], now=NOW, mail_hosts=[fine, unknown]).verdict is (
        Verdict.REGISTERED
    )
    # The domain's own firm danger names the verdict.
    redemption = Observation(
        "rdap", "x.test", Outcome.ANSWERED, "r", found=True, status=("redemption period",)
    )
    assert decide("x.test", [redemption], now=NOW, mail_hosts=[firm]).verdict is (
        Verdict.REDEMPTION
    )
    # The mail host's danger stands even when the domain's own registry cannot be reached.
    down = Observation.error("rdap", "x.test", "HTTP 500")
    assert decide("x.test", [down], now=NOW, mail_hosts=[firm]).verdict is (
        Verdict.MAIL_HOST_LAPSED
    )


# ------------------------------------------------------------------ lapsewatch domain


def lapsewatch(*args: str, env: dict[str, str]) -> Ran:
    """The command in this process (tests/cli_support.py)."""
    given = {**SOURCE_LIMITS, "COLUMNS": "200", **env}
    return run(*args, env=given, timeout=60)


def test_domain_command(world: World) -> None:
    result = lapsewatch("domain", "mia@mailed.test", "--format", "json", env=world.env())
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "mail_host_lapsed"
    assert data["dangerous"]
    assert "mail host mx1.old-mail.test is on old-mail.test, which is available" in data["reason"]
    assert data["mail_hosts"][0]["domain"] == "old-mail.test"
    assert data["mail_hosts"][0]["verdict"] == "available"
    table = lapsewatch("domain", "mia@mailed.test", env=world.env())
    assert table.returncode == 1
    assert "mail_host_lapsed" in table.stdout
    assert "mail host mx1.old-mail.test" in table.stdout

    world.rdap_requests.reset()
    world.dns_requests.reset()
    hosted = lapsewatch("domain", "hal@hosted.test", "--format", "json", env=world.env())
    assert hosted.returncode == 0, hosted.stdout
    assert json.loads(hosted.stdout)["verdict"] == "registered"
    assert json.loads(hosted.stdout)["mail_hosts"] == []
    asked = {*world.rdap_requests.as_dict(), *world.dns_requests.as_dict()}
    assert not any("google" in name for name in asked), asked


# ------------------------------------------------------------------ the cycle


def test_cycle_unverifies_behind_a_lapsed_mail_host(world: World, engine: Engine) -> None:
    seed(engine)
    for counter in (world.rdap_requests, world.dns_requests, world.fastly_requests):
        counter.reset()
    summary = run_cycle(settings_for(world), engine, now=NOW)
    assert summary.verdicts["mail_host_lapsed"] == 2
    assert summary.unverified == 2
    with make_sessionmaker(engine)() as session:
        emails = {e.address: e for e in session.scalars(select(Email))}
        for address in ("mia@mailed.test", "moe@also-mailed.test"):
            assert not emails[address].verified
            assert emails[address].unverify_reason == "mail_host_lapsed"
            assert "old-mail.test" in (emails[address].unverify_detail or "")
        for address in ("hal@hosted.test", "sam@selfmail.test", "fin@fine.test", "tim@thin.test"):
            assert emails[address].verified, address
        assert emails["mia@gmail.com"].verified
        events = session.scalars(select(Event).where(Event.kind == "email.unverified")).all()
        assert {e.after["verdict"] for e in events if e.after} == {"mail_host_lapsed"}
        notices = session.scalars(select(Notice)).all()
        assert {n.subject.split()[2] for n in notices} == {
            "mia@mailed.test",
            "moe@also-mailed.test",
        }
        thin = session.get(Domain, "thin.test")
        assert thin is not None
        assert thin.last_verdict == "unknown"
        pending = session.scalars(
            select(Event).where(Event.kind == "domain.confirmation_pending")
        ).all()
        assert [e.domain for e in pending] == ["thin.test"]
    # Each mail-host domain was asked about once, however many domains share it;
    # a provider's domain never.
    assert world.rdap_requests["old-mail.test"] == 1
    assert world.fastly_requests["old-mail.test"] == 1
    assert world.rdap_requests["good-mail.test"] == 1
    asked = {*world.rdap_requests.as_dict(), *world.dns_requests.as_dict()}
    asked |= set(world.fastly_requests.as_dict())
    assert not any("google" in name for name in asked), asked


# ------------------------------------------------------------------ scan


def test_scan_shows_the_lapsed_mail_host(world: World) -> None:
    settings = settings_for(world)
    checks = asyncio.run(scan_checker.check_scan_domains(["mailed.test", "hosted.test"], settings))
    assert "old-mail.test" in checks.observations  # the mail host's domain, asked once
    assert checks.asked == 2
    assert not any("google" in d for d in checks.observations)
    package = PackageMetadata(
        "mail-lib", "1.0", author_email="a@mailed.test, b@hosted.test", published_at=LONG_AGO
    )
    found = findings_for_package(
        package,
        extract("Author-email", "a@mailed.test, b@hosted.test"),
        checks.observations,
        now=NOW,
    )
    by_address = {f.address: f for f in found}
    assert by_address["a@mailed.test"].status is Status.MAIL_HOST_LAPSED
    assert by_address["a@mailed.test"].status.dangerous
    assert "mx1.old-mail.test" in by_address["a@mailed.test"].reason
    assert by_address["b@hosted.test"].status is Status.REGISTERED


# ------------------------------------------------------------------ the world's DNS servers


@pytest.mark.parametrize("backend", ["builtin", pytest.param("nsd", marks=pytest.mark.nsd)])
def test_both_dns_servers_answer_mx(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "nsd":
        request.getfixturevalue("require_nsd")
    from lapsewatch.sources.dns import DnsSource

    with World(scenario(), dns=backend) as running:  # type: ignore[arg-type]
        source = DnsSource(((running.dns_host, running.dns_port),), timeout=2.0)

        async def observe() -> list[Observation]:
            names = ("mailed.test", "good-mail.test", "old-mail.test")
            return list(await asyncio.gather(*(source.observe(n) for n in names)))

        mailed, plain, gone = asyncio.run(observe())
    assert mailed.found
    assert mailed.nameservers == ("ns1.mailed.test", "ns2.mailed.test")
    assert mailed.mail_hosts == ("mx1.old-mail.test", "mx2.old-mail.test")
    assert plain.found
    assert plain.mail_hosts == ()
    assert gone.found is False
    assert gone.mail_hosts is None


# ------------------------------------------------------------------ MX read once per interval


def test_mx_is_read_once_per_interval_and_the_stored_hosts_still_catch_a_lapse(
    world: World, engine: Engine
) -> None:
    """The second check within the interval sends no MX query (counted at the world's
    DNS server: one query per check instead of two); the mail hosts stored at the
    first check stand in, so a mail-host domain that lapsed meanwhile is caught."""
    add_verified(engine, "rea", "rea@reads.test")
    # The mail host's domain expires 5 days after the first check: its verdict is kept
    # only until its own daily window opens, 4 days on (kept_until), and it is asked
    # again at NOW.
    world.set_domain(DomainScenario.make("later-mail.test", "registered", now=NOW, expires="-5d"))
    world.set_domain(
        DomainScenario.make("reads.test", "registered", now=NOW, mx=["mx.later-mail.test"])
    )
    first = NOW - timedelta(days=10)
    try:
        world.dns_requests.reset()
        assert run_cycle(settings_for(world), engine, now=first).unverified == 0
        assert world.dns_requests["reads.test"] == 2  # NS, then MX
        assert world.dns_requests["later-mail.test"] == 1  # a mail host's domain: no MX
        with make_sessionmaker(engine)() as session:
            row = session.get_one(Domain, "reads.test")
            assert row.mail_hosts == ["mx.later-mail.test"]
            assert row.mail_hosts_read_at == first
        world.set_domain(DomainScenario.make("later-mail.test", "available", now=NOW))
        world.dns_requests.reset()
        world.rdap_requests.reset()
        summary = run_cycle(settings_for(world), engine, now=NOW, everything=True)
        assert world.dns_requests["reads.test"] == 1  # NS only: read 10 days ago
        assert world.rdap_requests["later-mail.test"] == 1  # the stored mail host, checked
        assert summary.unverified == 1
        with make_sessionmaker(engine)() as session:
            email = session.scalars(select(Email).where(Email.domain == "reads.test")).one()
            assert not email.verified
            assert email.unverify_reason == "mail_host_lapsed"
            assert "mx.later-mail.test" in (email.unverify_detail or "")
            row = session.get_one(Domain, "reads.test")
            assert row.mail_hosts_read_at == first  # not read again
    finally:
        world.remove_domain("reads.test")
        world.remove_domain("later-mail.test")


def test_mx_is_read_again_after_the_interval(world: World, engine: Engine) -> None:
    add_verified(engine, "ren", "ren@renews.test")
    world.set_domain(
        DomainScenario.make("renews.test", "registered", now=NOW, mx=["aspmx.l.google.com"])
    )
    try:
        first = NOW - timedelta(days=90)
        run_cycle(settings_for(world), engine, now=first)
        world.set_domain(
            DomainScenario.make("renews.test", "registered", now=NOW, mx=["mx.fastmail.com"])
        )
        world.dns_requests.reset()
        run_cycle(settings_for(world), engine, now=first + timedelta(days=30), everything=True)
        assert world.dns_requests["renews.test"] == 1  # 30 days on: NS only
        with make_sessionmaker(engine)() as session:
            row = session.get_one(Domain, "renews.test")
            assert row.mail_hosts == ["aspmx.l.google.com"]
            assert row.mail_hosts_read_at == first
        world.dns_requests.reset()
        run_cycle(settings_for(world), engine, now=NOW, everything=True)
        assert world.dns_requests["renews.test"] == 2  # 90 days on: NS and MX
        with make_sessionmaker(engine)() as session:
            row = session.get_one(Domain, "renews.test")
            assert row.mail_hosts == ["mx.fastmail.com"]
            assert row.mail_hosts_read_at == NOW
    finally:
        world.remove_domain("renews.test")


# ------------------------------------------------------------------ registered again


READ = datetime(2026, 6, 1, tzinfo=UTC)
OLD_VERIFICATION = datetime(2025, 1, 1, tzinfo=UTC)
LATER = datetime(2026, 9, 1, tzinfo=UTC)
AGAIN = READ + timedelta(days=20)


def host_check(registered: datetime | None, verdict: Verdict = Verdict.REGISTERED) -> MailHostCheck:
    decision = Decision("host.test", verdict, "RDAP: registered", "rdap", registered)
    return MailHostCheck("mx.host.test", "host.test", decision)


def test_a_mail_host_domain_registered_after_the_mx_was_read_is_registered_again() -> None:
    """The MX named it on June 1st; a registration dated after that is not the domain
    the mail went to: it lapsed and somebody registered it again between two checks."""
    (check,) = registered_since_read(
        [host_check(AGAIN)], ["MX.Host.test."], READ, OLD_VERIFICATION, LATER
    )
    assert check.decision.verdict is Verdict.REREGISTERED
    assert check.decision.doubt == REREGISTRATION_DOUBT  # confirmed before it acts
    assert check.decision.registered_at == AGAIN
    assert "after the MX naming mx.host.test was read on 2026-06-01" in check.decision.reason
    mine = Observation(
        "rdap", "mine.test", Outcome.ANSWERED, "active", found=True, registered_at=LONG_AGO
    )
    decision = decide(
        "mine.test", [mine], now=LATER, verified_at=OLD_VERIFICATION, mail_hosts=[check]
    )
    assert decision.verdict is Verdict.MAIL_HOST_LAPSED
    assert not decision.firm
    # Only the addresses verified before the new registration fall to it.
    result = CheckResult("mine.test", OLD_VERIFICATION, (mine,), decision, LATER)
    before = Email(address="a@mine.test", domain="mine.test", verified_at=OLD_VERIFICATION)
    since = Email(address="b@mine.test", domain="mine.test", verified_at=AGAIN + timedelta(days=1))
    assert _affected(before, result)
    assert not _affected(since, result)


@pytest.mark.parametrize(
    ("registered", "known"),
    [
        (READ + timedelta(hours=20), ["mx.host.test"]),  # a full timestamp: no slack
        (AGAIN, ["mx2.host.test"]),  # another host on the same domain
    ],
    ids=["timestamp", "same-domain"],
)
def test_more_mail_host_domains_registered_again(registered: datetime, known: list[str]) -> None:
    (check,) = registered_since_read([host_check(registered)], known, READ, OLD_VERIFICATION, LATER)
    assert check.decision.verdict is Verdict.REREGISTERED
    assert check.decision.registered_at == registered


@pytest.mark.parametrize(
    ("check", "known", "read_at", "verified_at"),
    [
        (host_check(AGAIN), ["mx.host.test"], None, OLD_VERIFICATION),  # never read
        (host_check(AGAIN), ["mx.host.test"], READ, None),  # nobody verified
        (host_check(AGAIN), ["mx.host.test"], READ, AGAIN + timedelta(days=1)),  # verified since
        (host_check(AGAIN), ["mx.other.test"], READ, OLD_VERIFICATION),  # not the read MX
        (host_check(READ + timedelta(days=1)), ["mx.host.test"], READ, OLD_VERIFICATION),
        (host_check(LATER + timedelta(days=3)), ["mx.host.test"], READ, OLD_VERIFICATION),
        (host_check(LONG_AGO), ["mx.host.test"], READ, OLD_VERIFICATION),
        (host_check(None), ["mx.host.test"], READ, OLD_VERIFICATION),
        (host_check(AGAIN, Verdict.AVAILABLE), ["mx.host.test"], READ, OLD_VERIFICATION),
    ],
    ids=[
        "never-read",
        "nobody-verified",
        "verified-since",
        "not-named",
        "within-a-day",
        "in-the-future",
        "older",
        "no-date",
        "already-dangerous",
    ],
)
def test_what_is_not_a_mail_host_domain_registered_again(
    check: MailHostCheck, known: list[str], read_at: datetime | None, verified_at: datetime | None
) -> None:
    assert registered_since_read([check], known, read_at, verified_at, LATER) == (check,)


def behind_a_mail_host(world: World, domain: str, mail_domain: str) -> None:
    """``domain``'s mail goes to ``mx.<mail_domain>``, registered in 2012."""
    world.set_domain(
        DomainScenario.make(mail_domain, "registered", now=NOW, registered="2012-01-01")
    )
    world.set_domain(DomainScenario.make(domain, "registered", now=NOW, mx=[f"mx.{mail_domain}"]))


def registered_again(world: World, mail_domain: str) -> None:
    """``mail_domain`` dropped and registered again 5 days ago."""
    world.set_domain(DomainScenario.make(mail_domain, "registered", now=NOW, registered="-5d"))


def test_a_cycle_unverifies_behind_a_mail_host_domain_registered_again(
    world: World, engine: Engine
) -> None:
    """A mail host's domain dropped and registered again by somebody, both between two
    checks of the domain behind it (bench/window.py found it at halved durations): the
    address verified before goes, one verified since stays."""
    add_verified(engine, "ray", "ray@behind.test")
    add_verified(engine, "rey", "rey@behind.test", verified_at=NOW - timedelta(days=2))
    behind_a_mail_host(world, "behind.test", "rehost-mail.test")
    first = NOW - timedelta(days=40)
    try:
        assert run_cycle(settings_for(world), engine, now=first).unverified == 0
        registered_again(world, "rehost-mail.test")
        # Thin (one registry's date): confirmed by the check an hour later, then acted on.
        assert run_cycle(settings_for(world), engine, now=NOW, everything=True).unverified == 0
        later = NOW + timedelta(hours=1)
        summary = run_cycle(settings_for(world), engine, now=later, everything=True)
        assert summary.unverified == 1
        with make_sessionmaker(engine)() as session:
            emails = {
                e.address: e
                for e in session.scalars(select(Email).where(Email.domain == "behind.test"))
            }
            assert not emails["ray@behind.test"].verified
            assert emails["ray@behind.test"].unverify_reason == "mail_host_lapsed"
            detail = emails["ray@behind.test"].unverify_detail or ""
            assert "rehost-mail.test" in detail
            assert "registered on" in detail
            assert emails["rey@behind.test"].verified
            # Acted on once: later checks compare with the new registration.
            row = session.get_one(Domain, "behind.test")
            assert row.mail_hosts_read_at is not None
            assert first + timedelta(days=30) < row.mail_hosts_read_at <= NOW
    finally:
        world.remove_domain("behind.test")
        world.remove_domain("rehost-mail.test")


def test_a_mail_host_domain_let_go_after_the_mail_moved_away_unverifies_nobody(
    world: World, engine: Engine
) -> None:
    """The owner moved the mail to a provider and let the old mail host's domain go;
    a drop-catcher registered it. The stored mail hosts still name it, so the MX is
    read again before anything acts: it no longer does."""
    add_verified(engine, "mov", "mov@moved.test")
    behind_a_mail_host(world, "moved.test", "left-mail.test")
    first = NOW - timedelta(days=40)
    try:
        run_cycle(settings_for(world), engine, now=first)
        world.set_domain(
            DomainScenario.make("moved.test", "registered", now=NOW, mx=["aspmx.l.google.com"])
        )
        registered_again(world, "left-mail.test")
        for at in (NOW, NOW + timedelta(hours=1)):
            world.dns_requests.reset()
            assert run_cycle(settings_for(world), engine, now=at, everything=True).unverified == 0
        assert world.dns_requests["moved.test"] == 1  # NS only: the MX was read at NOW
        with make_sessionmaker(engine)() as session:
            email = session.scalars(select(Email).where(Email.domain == "moved.test")).one()
            assert email.verified
            row = session.get_one(Domain, "moved.test")
            assert row.mail_hosts == ["aspmx.l.google.com"]
            assert row.last_verdict == "registered"
    finally:
        world.remove_domain("moved.test")
        world.remove_domain("left-mail.test")


def test_a_failed_mail_host_check_keeps_the_mx_read_time(world: World, engine: Engine) -> None:
    """The MX read again unchanged while the mail host's registry fails: the old read
    time stays, so a re-registration of that domain is still told from it later."""
    add_verified(engine, "fai", "fai@kept-read.test")
    world.set_domain(DomainScenario.make("failing-mail.test", "registered", now=NOW))
    world.set_domain(
        DomainScenario.make("kept-read.test", "registered", now=NOW, mx=["mx.failing-mail.test"])
    )
    first = NOW - timedelta(days=100)
    try:
        run_cycle(settings_for(world), engine, now=first)
        world.set_domain(
            DomainScenario.make("failing-mail.test", "registered", now=NOW, rdap="500", dns="lie")
        )
        run_cycle(settings_for(world), engine, now=NOW, everything=True)
        with make_sessionmaker(engine)() as session:
            row = session.get_one(Domain, "kept-read.test")
            assert row.mail_hosts == ["mx.failing-mail.test"]
            assert row.mail_hosts_read_at == first
    finally:
        world.remove_domain("kept-read.test")
        world.remove_domain("failing-mail.test")
