"""Issue #14: the account side's mail goes through the outbox.

A link (verification, password reset) is queued as an intent and made when the
outbox sends it, so: a link queued before a domain lapsed never reaches whoever
holds the domain now; no link is lost when the web process dies before it sent
it (the mail job, ``lapsewatch notify``, sends it); and no usable token rests in
the database. Everything is real and local: the world's servers, the cycle, the
command, and an SMTP server with an inbox per address.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from lapsewatch import notices
from lapsewatch.accounts.errors import LoginRequired
from lapsewatch.accounts.service import RESET_REQUESTED
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.accounts.tokens import TokenKind, revoke_sent_to
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.mail.jobs import run_mail_jobs
from lapsewatch.mail.links import Links
from lapsewatch.mail.outbox import send_pending
from lapsewatch.schedule import Policy
from lapsewatch.smtp import SmtpMailer
from lapsewatch.store import Domain, Email, Notice, make_sessionmaker
from lapsewatch.store.db import lock_for_writing
from lapsewatch.store.models import Token
from lapsewatch.web.app import create_app_from_env
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cli_support import lapsewatch
from tests.cycle_support import settings_for
from tests.mail_support import (
    Accounts,
    Clock,
    MailServer,
    account_settings,
    created,
    make_service,
    sign_up_verified,
    token_from,
)
from tests.web_support import LiveServer, WebClient

NOW = datetime.now(UTC).replace(microsecond=0)
YEARS_AGO = NOW - timedelta(days=3 * 365)
LAPSED = "m@lapsed.test"
SECOND = "m@gmail.com"
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
def lapsed_domain(world: World, smtp: MailServer) -> Iterator[None]:
    smtp.clear()
    world.set_domain(DomainScenario.make("lapsed.test", "registered", now=NOW))
    yield
    world.remove_domain("lapsed.test")


def queued_only(engine: Engine, settings: AccountSettings, clock: Clock) -> Accounts:
    """The account services of a web process that dies before its sender runs (or whose
    mail server is down): mail is only queued."""
    return make_service(engine, settings, clock=clock, deliver=False)


def link_kinds(smtp: MailServer, address: str) -> list[str]:
    return [m.kind for m in smtp.inbox(address) if m.kind in notices.LINK_KINDS]


def tokens_of(engine: Engine, kind: TokenKind) -> list[Token]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(Token).where(Token.kind == kind.value)))


@pytest.mark.usefixtures("lapsed_domain")
def test_a_reset_queued_before_the_lapse_never_reaches_the_domains_new_owner(
    engine: Engine, world: World, smtp: MailServer
) -> None:
    clock = Clock(YEARS_AGO)
    checks = settings_for(world)
    settings = account_settings(smtp.url)
    web = make_service(
        engine,
        settings,
        clock=clock,
        checker=CycleDomainChecker(checks),
        policy=Policy.from_settings(checks),
    )
    account_id = created(web.sign_up("maintainer", PASSWORD, LAPSED))
    assert web.verify_email(token_from(smtp.inbox(LAPSED)[-1])).verified
    web.add_email(account_id, SECOND)
    assert web.verify_email(token_from(smtp.inbox(SECOND)[-1])).verified

    # Today: whoever bought the lapsed domain asks for a reset before the cycle has seen
    # the lapse, and the web process dies before it sends (or the mail server is down).
    clock.now = NOW
    queued_only(engine, settings, clock).request_password_reset(LAPSED.upper(), client=ATTACKER)
    queued_only(engine, settings, clock).request_password_reset("maintainer", client=ATTACKER)
    with make_sessionmaker(engine)() as session:
        links = session.scalars(select(Notice).where(Notice.kind == notices.PASSWORD_RESET)).all()
        assert len(links) == 3  # LAPSED, then LAPSED and SECOND
        assert {(n.body, n.client) for n in links} == {("", ATTACKER)}  # an intent, no link
    assert tokens_of(engine, TokenKind.PASSWORD_RESET) == []  # no usable token at rest
    assert link_kinds(smtp, LAPSED) == ["verify_email"]

    # The cycle sees the lapse, then the mail job runs, through the command.
    world.set_domain(DomainScenario.make("lapsed.test", "redemption", now=NOW))
    assert run_cycle(checks, engine, now=NOW).unverified == 1
    sent = lapsewatch(
        "notify",
        "--format",
        "json",
        env={
            "LAPSEWATCH_DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "LAPSEWATCH_SMTP_URL": smtp.url,
            "LAPSEWATCH_BASE_URL": settings.base_url,
        },
    )
    assert sent.returncode == 0, sent.stderr
    counts = json.loads(sent.stdout)
    assert (counts["sent"], counts["dropped"]) == (2, 2)  # unverify notice, one reset
    assert link_kinds(smtp, LAPSED) == ["verify_email"]  # nothing new for the new owner
    (reset,) = [m for m in smtp.inbox(SECOND) if m.kind == notices.PASSWORD_RESET]
    assert ATTACKER in reset.body  # the owner learns who asked
    done = web.reset_password(token_from(reset), "the maintainer's new passphrase")
    assert done.via == SECOND
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Notice).where(Notice.sent_at.is_(None))).all() == []


def test_a_verification_link_is_made_as_it_is_sent(
    engine: Engine, smtp: MailServer, world: World
) -> None:
    """A link queued while the domain looked fine, sent after it was found dangerous, is
    login-bound: whoever reads that domain's mail now cannot verify the address."""
    smtp.clear()
    settings = account_settings(smtp.url)
    clock = Clock(NOW)
    svc = queued_only(engine, settings, clock)
    signed = svc.sign_up("newcomer", PASSWORD, "n@parked.test")
    assert signed.email_id is not None  # its link queued: the mail job sends it
    assert tokens_of(engine, TokenKind.VERIFY_EMAIL) == []
    with make_sessionmaker(engine).begin() as session:
        domain = session.get(Domain, "parked.test") or Domain(name="parked.test")
        domain.dangerous_at = NOW
        domain.consecutive_failures = 0
        session.add(domain)
    mailer = SmtpMailer.from_settings(settings)
    summary = run_mail_jobs(engine, mailer, Links.from_settings(settings), now=NOW)
    assert summary.outbox.sent == 1
    (mail,) = smtp.inbox("n@parked.test")
    assert [t.kind for t in tokens_of(engine, TokenKind.REVERIFY_EMAIL)] == ["reverify_email"]
    with pytest.raises(LoginRequired):
        svc.verify_email(token_from(mail))
    with make_sessionmaker(engine)() as session:
        email = session.scalars(select(Email).where(Email.address == "n@parked.test")).one()
        assert not email.verified


def test_the_web_app_as_deployed_sends_its_links_through_the_outbox(
    engine: Engine, smtp: MailServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``create_app_from_env`` (what ``lapsewatch serve`` runs), over HTTP: the sign-up's
    link and a reset link arrive from the sender's thread, each sent once, and nothing
    is left in the outbox; a reset for an unknown name queues nothing."""
    smtp.clear()
    for name, value in {
        "LAPSEWATCH_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "LAPSEWATCH_SMTP_URL": smtp.url,
        "LAPSEWATCH_BASE_URL": "http://registry.test",
        "LAPSEWATCH_SECRET_KEY": "a secret key for this test only",
    }.items():
        monkeypatch.setenv(name, value)
    server = LiveServer()
    server.start(create_app_from_env())
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            browser = WebClient(http)
            assert browser.sign_up("alice", "alice@gmail.com").status_code == 200
            (link,) = smtp.wait_for("alice@gmail.com", 1)
            assert link.kind == notices.VERIFY_EMAIL
            browser.get(f"/account/verify-email?token={token_from(link)}")
            verified = browser.post("/account/verify-email", {"token": token_from(link)})
            assert verified.status_code == 200, verified.text
            assert "verified" in verified.text
            browser.get("/account/forgot-password")
            for identifier in ("alice", "nobody-here"):
                answer = browser.post("/account/forgot-password", {"identifier": identifier})
                assert RESET_REQUESTED.message in answer.text
            received = smtp.wait_for("alice@gmail.com", 2)
    finally:
        server.stop()
    assert [m.kind for m in received] == [notices.VERIFY_EMAIL, notices.PASSWORD_RESET]
    with make_sessionmaker(engine)() as session:
        kinds = session.scalars(select(Notice.kind).order_by(Notice.id)).all()
        assert kinds == [notices.VERIFY_EMAIL, notices.PASSWORD_RESET]  # one per mail
        assert session.scalars(select(Notice).where(Notice.sent_at.is_(None))).all() == []


def unused_resets(engine: Engine) -> list[Token]:
    return [t for t in tokens_of(engine, TokenKind.PASSWORD_RESET) if t.used_at is None]


def test_the_outbox_waits_for_an_unverify_in_progress_and_then_sends_nothing(
    engine: Engine, smtp: MailServer
) -> None:
    """The cycle unverifies the address while the outbox is about to make its link: the
    outbox waits for the cycle's transaction (the address's row is locked), then finds
    the address unverified, sends nothing and makes no token the revocation missed."""
    smtp.clear()
    settings = account_settings(smtp.url)
    clock = Clock(NOW)
    web = make_service(engine, settings, clock=clock)
    sign_up_verified(web, smtp, "alice", "alice@gmail.com", password=PASSWORD)
    queued_only(engine, settings, clock).request_password_reset("alice@gmail.com")
    summaries: list[Any] = []
    with make_sessionmaker(engine).begin() as cycle:  # what the cycle's unverify holds
        lock_for_writing(cycle.connection())  # SQLite: the write lock, as the cycle takes it
        email = cycle.scalars(
            select(Email).where(Email.address == "alice@gmail.com").with_for_update()
        ).one()
        sender = threading.Thread(
            target=lambda: summaries.append(
                send_pending(
                    engine,
                    SmtpMailer.from_settings(settings),
                    links=Links.from_settings(settings),
                )
            )
        )
        sender.start()
        sender.join(1.0)
        assert sender.is_alive()  # waiting for the row (or, on SQLite, the write lock)
        email.verified, email.unverified_at = False, NOW
        revoke_sent_to(cycle, [email.id], now=NOW)
    sender.join(10)
    (summary,) = summaries
    assert (summary.sent, summary.dropped) == (0, 1)
    assert [m.kind for m in smtp.inbox("alice@gmail.com")] == ["verify_email"]
    assert unused_resets(engine) == []


def test_a_password_change_kills_the_reset_links_not_sent_yet(
    engine: Engine, smtp: MailServer
) -> None:
    smtp.clear()
    settings = account_settings(smtp.url)
    clock = Clock(NOW)
    web = make_service(engine, settings, clock=clock)
    alice = sign_up_verified(web, smtp, "alice", "alice@gmail.com", password=PASSWORD)
    queued_only(engine, settings, clock).request_password_reset("alice")
    web.change_password(alice, PASSWORD, "a brand new passphrase")
    mailer = SmtpMailer.from_settings(settings)
    summary = send_pending(engine, mailer, links=Links.from_settings(settings), clock=clock)
    assert summary.sent == 0
    assert link_kinds(smtp, "alice@gmail.com") == ["verify_email"]
    assert tokens_of(engine, TokenKind.PASSWORD_RESET) == []


def test_a_link_older_than_its_life_is_never_made(engine: Engine, smtp: MailServer) -> None:
    """A reset asked for before a long mail outage does not come back when it ends."""
    smtp.clear()
    settings = account_settings(smtp.url)
    clock = Clock(NOW)
    sign_up_verified(
        make_service(engine, settings, clock=clock),
        smtp,
        "alice",
        "alice@gmail.com",
        password=PASSWORD,
    )
    queued_only(engine, settings, clock).request_password_reset("alice")
    clock.advance(seconds=settings.reset_token_ttl.total_seconds())
    mailer = SmtpMailer.from_settings(settings)
    summary = send_pending(engine, mailer, links=Links.from_settings(settings), clock=clock)
    assert (summary.sent, summary.dropped) == (0, 1)
    assert tokens_of(engine, TokenKind.PASSWORD_RESET) == []


def test_a_link_the_server_refuses_for_good_is_dropped_and_its_token_retired(
    engine: Engine, smtp: MailServer
) -> None:
    smtp.clear()
    settings = account_settings(smtp.url)
    clock = Clock(NOW)
    sign_up_verified(
        make_service(engine, settings, clock=clock), smtp, "bob", "bob@gmail.com", password=PASSWORD
    )
    queued_only(engine, settings, clock).request_password_reset("bob")
    smtp.refuse.add("bob@gmail.com")
    try:
        mailer = SmtpMailer.from_settings(settings)
        refused = send_pending(engine, mailer, links=Links.from_settings(settings), clock=clock)
    finally:
        smtp.refuse.discard("bob@gmail.com")
    assert (refused.sent, refused.failed) == (0, 1)
    (token,) = tokens_of(engine, TokenKind.PASSWORD_RESET)
    assert token.used_at is not None  # the link that never left is dead
    again = send_pending(engine, mailer, links=Links.from_settings(settings), clock=clock)
    assert (again.sent, again.failed) == (0, 0)  # not tried, and a token made, at every run
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Notice).where(Notice.sent_at.is_(None))).all() == []


def test_removing_a_lapsed_address_does_not_mail_it(engine: Engine, smtp: MailServer) -> None:
    smtp.clear()
    settings = account_settings(smtp.url)
    web = make_service(engine, settings, clock=Clock(NOW))
    alice = sign_up_verified(
        web, smtp, "alice", "alice@gmail.com", "alice@lapsed.test", password=PASSWORD
    )
    with make_sessionmaker(engine).begin() as session:  # the cycle unverified it
        email = session.scalars(select(Email).where(Email.address == "alice@lapsed.test")).one()
        email.verified, email.unverified_at, email_id = False, NOW, email.id
    before = len(smtp.inbox("alice@lapsed.test"))
    web.remove_email(alice, email_id)
    assert len(smtp.inbox("alice@lapsed.test")) == before  # nothing to whoever reads it now
    assert "alice@lapsed.test" in smtp.inbox("alice@gmail.com")[-1].body  # the owner hears
