"""The ctx attack, end to end: a maintainer's domain lapses, someone else gets its mail,
and asks for a password reset. Nothing may reach them.

Everything is real and local: the world's RDAP, DNS and Fastly servers, the
check cycle, the account services, and an SMTP server where every address has
its own inbox. Once the domain lapses, the inbox of ``m@lapsed.test`` is read
by the attacker (whoever registers a domain receives its mail).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from lapsewatch.accounts.errors import (
    InvalidCredentials,
    LoginRequired,
    TokenInvalid,
)
from lapsewatch.accounts.service import RESET_REQUESTED, AddressStatus
from lapsewatch.config import Settings
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.mail.jobs import run_mail_jobs
from lapsewatch.mail.links import Links
from lapsewatch.schedule import Policy
from lapsewatch.smtp import SmtpMailer
from lapsewatch.store import Email, Event, make_sessionmaker
from lapsewatch.world import DomainScenario, World, demo_scenario
from lapsewatch.world.scenario import State
from tests.mail_support import (
    Accounts,
    Clock,
    MailServer,
    account_settings,
    created,
    make_service,
    token_from,
)

NOW = datetime.now(UTC).replace(microsecond=0)
YEARS_AGO = NOW - timedelta(days=3 * 365)
LAPSED = "m@lapsed.test"
"""The maintainer's old address: after the lapse, the attacker's mailbox."""
SECOND = "m@gmail.com"
"""The maintainer's second verified address, at a well-known provider."""
PASSWORD = "maintainer's old passphrase"
ATTACKER = "203.0.113.66"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def lapsed_domain(world: World) -> Iterator[None]:
    world.set_domain(DomainScenario.make("lapsed.test", "registered", now=NOW))
    yield
    world.remove_domain("lapsed.test")


@pytest.fixture
def clock() -> Clock:
    return Clock(YEARS_AGO)


def check_settings(world: World) -> Settings:
    return Settings.from_env(
        {
            **world.env(),
            "LAPSEWATCH_TIMEOUT": "0.5",
            "LAPSEWATCH_ATTEMPTS": "2",
            "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        }
    )


@pytest.fixture
def svc(
    engine: Engine, smtp: MailServer, world: World, clock: Clock, lapsed_domain: None
) -> Accounts:
    smtp.clear()
    checks = check_settings(world)
    return make_service(
        engine,
        account_settings(smtp.url),
        clock=clock,
        checker=CycleDomainChecker(checks),
        policy=Policy.from_settings(checks),
    )


def maintainer_years_ago(svc: Accounts, smtp: MailServer) -> int:
    """Sign-up and both verifications, three years ago, when the maintainer owned the domain."""
    account_id = created(svc.sign_up("maintainer", PASSWORD, LAPSED))
    first = svc.verify_email(token_from(smtp.inbox(LAPSED)[-1]))
    assert first.verified
    assert first.verdict == "registered"  # checked at once; registration date recorded
    svc.add_email(account_id, SECOND)
    assert svc.verify_email(token_from(smtp.inbox(SECOND)[-1])).verified
    # Control: while the domain is the maintainer's, a reset does go to that mailbox,
    # so an empty inbox later is the defence working, not a broken test setup.
    svc.request_password_reset(LAPSED)
    assert links_to(smtp, LAPSED) == ["verify_email", "password_reset"]
    return account_id


def attacker_tries_everything(svc: Accounts, smtp: MailServer) -> None:
    """What the new owner of the domain can do without the maintainer's password."""
    assert svc.request_password_reset("maintainer", client=ATTACKER) is RESET_REQUESTED
    assert svc.request_password_reset(LAPSED, client=ATTACKER) is RESET_REQUESTED
    assert svc.request_password_reset(LAPSED.upper(), client=ATTACKER) is RESET_REQUESTED
    # Nor can the address be claimed for a new account (it is not even said that it is used).
    taken = svc.sign_up("attacker", "the attacker's passphrase", LAPSED, client=ATTACKER)
    assert taken.account_id is None
    with pytest.raises(InvalidCredentials):
        svc.login("maintainer", "a guess at the password", client=ATTACKER)


def maintainer_recovers(svc: Accounts, smtp: MailServer, engine: Engine) -> None:
    """The second address got the links; following one resets the password."""
    links = smtp.inbox(SECOND)
    resets = [m for m in links if m.kind == "password_reset"]
    assert len(resets) == 3
    assert all("maintainer" in m.body for m in resets)
    done = svc.reset_password(token_from(resets[0]), "the maintainer's new passphrase")
    assert done.username == "maintainer"
    with pytest.raises(TokenInvalid):  # the other links died with the reset
        svc.reset_password(token_from(resets[1]), "the attacker hoped for this one")
    assert svc.login("maintainer", "the maintainer's new passphrase").complete
    with pytest.raises(InvalidCredentials):
        svc.login("maintainer", PASSWORD)
    with make_sessionmaker(engine)() as session:
        outcomes = [
            (e.after or {}).get("outcome")
            for e in session.scalars(
                select(Event).where(Event.kind == "password_reset.requested").order_by(Event.id)
            )
        ]
    assert outcomes == ["sent", "sent", "sent", "sent"]  # the control, then the attacker's 3
    (reset,) = _events(engine, "password.reset")
    assert reset.after == {"via": SECOND}


def links_to(smtp: MailServer, address: str) -> list[str]:
    """The kinds of the mails with a link that opens something (verify, reset) sent there."""
    return [m.kind for m in smtp.inbox(address) if m.kind in ("verify_email", "password_reset")]


def _events(engine: Engine, kind: str) -> list[Event]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def _lapsed_email(engine: Engine) -> Email:
    with make_sessionmaker(engine)() as session:
        return session.scalars(select(Email).where(Email.address == LAPSED)).one()


@pytest.mark.parametrize("state", ["redemption", "pending_delete", "available"])
def test_expired_domain_gives_the_attacker_nothing(
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
    state: State,
) -> None:
    account_id = maintainer_years_ago(svc, smtp)

    # Years later the domain is not renewed; the next scheduled check sees it.
    clock.now = NOW
    world.set_domain(DomainScenario.make("lapsed.test", state, now=NOW))
    summary = run_cycle(check_settings(world), engine, now=NOW)
    assert summary.unverified == 1
    email = _lapsed_email(engine)
    assert not email.verified
    assert email.unverify_reason == state

    # From here on the mailbox of the lapsed address is the attacker's.
    smtp.clear()
    send_notices(engine, svc)
    (notice,) = smtp.inbox(SECOND)
    verdict = state.replace("_", " ")
    assert f"because its domain lapsed.test is {verdict}:" in notice.body
    assert LAPSED in notice.body

    attacker_tries_everything(svc, smtp)
    send_notices(engine, svc)
    assert links_to(smtp, LAPSED) == []

    maintainer_recovers(svc, smtp, engine)
    assert links_to(smtp, LAPSED) == []

    overview = svc.security_overview(account_id)
    lapsed = next(a for a in overview.addresses if a.address == LAPSED)
    assert lapsed.status is AddressStatus.UNVERIFIED
    assert lapsed.unverify_reason == state
    assert lapsed.domain_verdict == state
    assert overview.advice.enable_2fa


def test_drop_caught_domain_gives_the_attacker_nothing(
    svc: Accounts, smtp: MailServer, world: World, engine: Engine, clock: Clock
) -> None:
    maintainer_years_ago(svc, smtp)

    # A routine check 40 days ago: still the maintainer's, nothing to do.
    checks = check_settings(world)
    clock.now = NOW - timedelta(days=40)
    assert run_cycle(checks, engine, now=clock.now).unverified == 0
    assert _lapsed_email(engine).verified

    # Between two checks it expired, was deleted and was caught again 20 days ago:
    # active, delegated, healthy-looking, and somebody else's.
    world.set_domain(DomainScenario.make("lapsed.test", "reregistered", now=NOW))
    clock.now = NOW
    summary = run_cycle(checks, engine, now=NOW)
    assert summary.checked == 1
    assert summary.unverified == 1
    email = _lapsed_email(engine)
    assert not email.verified
    assert email.unverify_reason == "reregistered"
    assert email.unverify_detail is not None
    assert "after the address was verified" in email.unverify_detail
    (event,) = _events(engine, "email.unverified")
    assert event.after is not None
    assert event.after["decided_by"] == "rdap"  # by its registration date, not its status

    smtp.clear()
    attacker_tries_everything(svc, smtp)
    send_notices(engine, svc)
    assert links_to(smtp, LAPSED) == []
    maintainer_recovers(svc, smtp, engine)
    assert links_to(smtp, LAPSED) == []


def test_the_attacker_cannot_reverify_the_lapsed_address(
    svc: Accounts, smtp: MailServer, world: World, engine: Engine, clock: Clock
) -> None:
    """Even a re-verification link the maintainer asked for is useless without their session."""
    account_id = maintainer_years_ago(svc, smtp)
    clock.now = NOW
    world.set_domain(DomainScenario.make("lapsed.test", "reregistered", now=NOW))
    run_cycle(check_settings(world), engine, now=NOW)
    smtp.clear()
    # The maintainer, not knowing the domain is gone, asks to verify it again ...
    svc.request_reverification(account_id, _lapsed_email(engine).id)
    (link,) = smtp.inbox(LAPSED)  # ... and the link lands in the attacker's mailbox.
    with pytest.raises(LoginRequired):
        svc.verify_email(token_from(link))
    assert not _lapsed_email(engine).verified
    smtp.clear()
    svc.request_password_reset(LAPSED, client=ATTACKER)
    assert links_to(smtp, LAPSED) == []


def send_notices(engine: Engine, svc: Accounts) -> None:
    """The mail job, as ``lapsewatch notify`` runs it."""
    run_mail_jobs(
        engine, SmtpMailer.from_settings(svc.settings), Links.from_settings(svc.settings), now=NOW
    )
