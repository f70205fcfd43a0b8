"""Mail: SMTP against a real local server, the outbox, expiry warnings and advice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from lapsewatch import messages
from lapsewatch.accounts.settings import AccountSettings
from lapsewatch.config import ConfigError
from lapsewatch.mail.advice import queue_security_advice
from lapsewatch.mail.expiry import queue_expiry_warnings
from lapsewatch.mail.jobs import run_mail_jobs
from lapsewatch.mail.links import Links
from lapsewatch.mail.outbox import send_pending
from lapsewatch.mail.sender import OutboxSender
from lapsewatch.smtp import Mail, MailError, SmtpConfig, SmtpMailer
from lapsewatch.store import Account, Domain, Email, Event, Notice, make_sessionmaker
from tests.mail_support import HangingServer, MailServer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LINKS = Links("http://registry.test", timedelta(hours=24), timedelta(hours=1))


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _empty_inboxes(smtp: MailServer) -> None:
    smtp.clear()


def mailer_for(url: str, timeout: float = 2.0) -> SmtpMailer:
    return SmtpMailer(SmtpConfig.from_url(url), sender="lapsewatch@registry.test", timeout=timeout)


# ------------------------------------------------------------------------ configuration


def test_smtp_urls() -> None:
    plain = SmtpConfig.from_url("smtp://127.0.0.1:8025")
    assert (plain.host, plain.port, plain.security, plain.username) == (
        "127.0.0.1",
        8025,
        "plain",
        None,
    )
    tls = SmtpConfig.from_url("smtps://user%40x:p%3Ass@mail.example")
    assert (tls.port, tls.security, tls.username, tls.password) == (465, "tls", "user@x", "p:ss")
    starttls = SmtpConfig.from_url("smtp+starttls://u:p@mail.example")
    assert (starttls.port, starttls.security) == (587, "starttls")
    assert "p:ss" not in repr(tls)  # the password never reaches a log line
    for bad in ("http://mail.example", "smtp://", "smtp://host:notaport"):
        with pytest.raises(ValueError, match="SMTP URL"):
            SmtpConfig.from_url(bad)


def test_the_ca_certificates_are_loaded_once_a_mailer_and_never_for_plain_smtp(
    smtp: MailServer, monkeypatch: pytest.MonkeyPatch, closed_port: Callable[[], int]
) -> None:
    """Loading them took ~45 ms of CPU, and every mail paid it, TLS or not."""
    import ssl

    made: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counted() -> ssl.SSLContext:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(ssl, "create_default_context", counted)
    plain = mailer_for(smtp.url)
    for number in range(3):
        plain.send(Mail(to=(f"a{number}@example.org",), subject="s", body="b"))
    assert len(smtp.inbox("a2@example.org")) == 1
    assert made == []
    tls = mailer_for(f"smtps://127.0.0.1:{closed_port()}", timeout=0.5)
    for _ in range(2):  # refused, after the context was made
        with pytest.raises(MailError):
            tls.send(Mail(to=("a@example.org",), subject="s", body="b"))
    assert len(made) == 1


def test_account_settings_from_env() -> None:
    default = AccountSettings.from_env({})
    assert default.smtp_url == "smtp://127.0.0.1:25"
    assert default.mail_from == "lapsewatch@localhost"
    assert default.base_url == "http://127.0.0.1:8000"
    assert default.secret_key_generated
    assert len(default.secret_key) >= 32
    assert "secret_key=" not in repr(default)
    given = AccountSettings.from_env(
        {
            "LAPSEWATCH_SMTP_URL": "smtps://u:p@mail.example:465",
            "LAPSEWATCH_MAIL_FROM": "registry@example.org",
            "LAPSEWATCH_SECRET_KEY": "s3cret",
            "LAPSEWATCH_BASE_URL": "https://registry.example.org/",
        }
    )
    assert given.smtp_url == "smtps://u:p@mail.example:465"
    assert given.mail_from == "registry@example.org"
    assert given.secret_key == "s3cret"
    assert not given.secret_key_generated
    assert given.base_url == "https://registry.example.org"
    with pytest.raises(ConfigError, match="LAPSEWATCH_SMTP_URL"):
        AccountSettings.from_env({"LAPSEWATCH_SMTP_URL": "mail.example:25"})
    with pytest.raises(ConfigError, match="LAPSEWATCH_MAIL_FROM"):
        AccountSettings.from_env({"LAPSEWATCH_MAIL_FROM": "nobody"})
    with pytest.raises(ConfigError, match="LAPSEWATCH_BASE_URL"):
        AccountSettings.from_env({"LAPSEWATCH_BASE_URL": "ftp://x"})


# ------------------------------------------------------------------------------- SMTP


def test_plain_text_mail_reaches_every_recipient(smtp: MailServer) -> None:
    mail = Mail(("a@one.test", "a@gmail.com"), "Hello ✓", "line one\nhttp://x.test/?token=abc\n")
    mailer_for(smtp.url).send(mail)
    for box in ("a@one.test", "a@gmail.com"):
        (received,) = smtp.inbox(box)
        assert received.subject == "Hello ✓"
        assert received.body == "line one\nhttp://x.test/?token=abc\n"
        assert received.message.get_content_type() == "text/plain"
        assert received.message["From"] == "lapsewatch@registry.test"
        assert received.message["Auto-Submitted"] == "auto-generated"
        assert received.kind == "notice"
    assert smtp.inbox("nobody@one.test") == []


def test_login_with_credentials_from_the_url() -> None:
    with MailServer(credentials=("mailer", "p@ss word")) as server:
        url = f"smtp://mailer:p%40ss%20word@127.0.0.1:{server.port}"
        mailer_for(url).send(Mail(("x@one.test",), "s", "b"))
        assert server.logins == ["mailer"]
        assert len(server.inbox("x@one.test")) == 1
        with pytest.raises(MailError, match="535"):
            mailer_for(f"smtp://mailer:wrong@127.0.0.1:{server.port}").send(
                Mail(("x@one.test",), "s", "b")
            )


def test_a_hanging_server_times_out() -> None:
    with HangingServer() as server:
        started = time.monotonic()
        with pytest.raises(MailError, match="cannot reach") as caught:
            mailer_for(server.url, timeout=0.5).send(Mail(("x@one.test",), "s", "b"))
        assert time.monotonic() - started < 3
        assert not caught.value.permanent


def test_refused_connection_is_a_temporary_error(closed_port: Callable[[], int]) -> None:
    with pytest.raises(MailError) as caught:
        mailer_for(f"smtp://127.0.0.1:{closed_port()}").send(Mail(("x@one.test",), "s", "b"))
    assert not caught.value.permanent


def test_server_answers_become_mail_errors(smtp: MailServer) -> None:
    smtp.fail_with = "451 4.3.0 try again later"
    with pytest.raises(MailError, match="451") as temporary:
        mailer_for(smtp.url).send(Mail(("x@one.test",), "s", "b"))
    assert not temporary.value.permanent
    smtp.fail_with = None
    smtp.refuse.add("gone@one.test")
    with pytest.raises(MailError, match="refused") as permanent:
        mailer_for(smtp.url).send(Mail(("gone@one.test",), "s", "b"))
    assert permanent.value.permanent
    # One good recipient among refused ones: delivered there, and not an error.
    mailer_for(smtp.url).send(Mail(("gone@one.test", "here@one.test"), "s", "b"))
    assert len(smtp.inbox("here@one.test")) == 1


def test_texts() -> None:
    url = messages.link("https://r.test/", messages.RESET_PASSWORD_PATH, "a+b/c")
    assert url == "https://r.test/account/reset-password?token=a%2Bb%2Fc"
    subject, body = messages.unverified_notice(
        "m@lapsed.test", "lapsed.test", "pending_delete", "RDAP: status 'pending delete'"
    )
    assert subject == "Your address m@lapsed.test was unverified"
    assert body.startswith(
        "Your address m@lapsed.test was unverified because its domain lapsed.test is "
        "pending delete: RDAP: status 'pending delete'"
    )
    _, advice = messages.security_advice_notice(address="m@own.test", totp_enabled=True)
    assert "two-factor" not in advice
    assert "well-known mail provider" in advice
    _, advice = messages.security_advice_notice(address="m@own.test", totp_enabled=False)
    assert "two-factor" in advice


# ----------------------------------------------------------------------------- outbox


def add_account(
    engine: Engine, username: str, emails: list[tuple[str, bool]], *, totp: bool = False
) -> int:
    """An account with (address, verified) pairs; custom domains get a domains row."""
    from lapsewatch.domains import parse

    with make_sessionmaker(engine).begin() as session:
        account = Account(username=username, created_at=NOW, projects=[], totp_enabled=totp)
        for index, (address, verified) in enumerate(emails):
            parsed = parse(address)
            account.emails.append(
                Email(
                    address=address,
                    domain=parsed.domain,
                    free_provider=parsed.free_provider,
                    primary=index == 0,
                    verified=verified,
                    verified_at=NOW - timedelta(days=900) if verified else None,
                )
            )
            if not parsed.free_provider and session.get(Domain, parsed.domain) is None:
                session.add(Domain(name=parsed.domain, consecutive_failures=0))
                session.flush()
        session.add(account)
        session.flush()
        return account.id


def queue_notice(engine: Engine, account_id: int, subject: str, to: str | None = None) -> int:
    with make_sessionmaker(engine).begin() as session:
        notice = Notice(
            account_id=account_id,
            to_address=to,
            kind="test",
            subject=subject,
            body=f"body of {subject}",
            created_at=NOW,
        )
        session.add(notice)
        session.flush()
        return notice.id


def unsent(engine: Engine) -> list[str]:
    with make_sessionmaker(engine)() as session:
        query = select(Notice.subject).where(Notice.sent_at.is_(None)).order_by(Notice.id)
        return list(session.scalars(query))


def test_outbox_sends_to_addresses_verified_at_send_time(engine: Engine, smtp: MailServer) -> None:
    bob = add_account(
        engine, "bob", [("bob@lapsed.test", True), ("bob@gmail.com", True), ("bob@new.test", False)]
    )
    queue_notice(engine, bob, "first")
    with make_sessionmaker(engine).begin() as session:  # unverified after queueing
        lapsed = session.scalars(select(Email).where(Email.address == "bob@lapsed.test")).one()
        lapsed.verified = False
    summary = send_pending(engine, mailer_for(smtp.url), now=NOW)
    assert (summary.sent, summary.failed, summary.waiting, summary.stopped) == (1, 0, 0, False)
    assert [r.subject for r in smtp.inbox("bob@gmail.com")] == ["first"]
    assert smtp.inbox("bob@lapsed.test") == []
    assert smtp.inbox("bob@new.test") == []
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Notice.sent_at)).one() == NOW
    again = send_pending(engine, mailer_for(smtp.url), now=NOW)
    assert again.sent == 0
    assert len(smtp.everything()) == 1


def test_sender_returns_at_once_and_a_failed_send_stays_queued(
    engine: Engine, smtp: MailServer
) -> None:
    """The web process's sender: the request never waits for SMTP, and a mail the server
    did not take is still in the outbox for the mail job (nothing lives only in memory)."""
    links = Links("http://registry.test", timedelta(hours=24), timedelta(hours=1))
    alice = add_account(engine, "alice", [("alice@gmail.com", True)])
    lost = queue_notice(engine, alice, "server hangs")
    with HangingServer() as hanging:
        slow = OutboxSender(engine, mailer_for(hanging.url, timeout=0.5), links)
        started = time.monotonic()
        assert slow([lost])
        assert time.monotonic() - started < 0.1
        slow.close()
    assert unsent(engine) == ["server hangs"]
    assert smtp.inbox("alice@gmail.com") == []
    fine = OutboxSender(engine, mailer_for(smtp.url), links)
    kept = queue_notice(engine, alice, "server answers")
    fine([kept])  # only what it was handed: the first notice is the mail job's
    fine.flush()
    assert [r.subject for r in smtp.inbox("alice@gmail.com")] == ["server answers"]
    assert unsent(engine) == ["server hangs"]
    fine.close()
    assert fine([lost])  # closed: left queued, still true (the job sends it)
    summary = run_mail_jobs(engine, mailer_for(smtp.url), links, now=NOW)
    assert summary.outbox.sent == 1
    assert unsent(engine) == []


def test_outbox_holds_no_lock_while_it_talks_smtp(engine: Engine, smtp: MailServer) -> None:
    """While the mail server is talked to, another connection can lock the notice's row
    (PostgreSQL) or take the write lock (SQLite) at once, and another outbox run does
    not send the notice again (it is leased)."""
    alice = add_account(engine, "alice", [("alice@gmail.com", True)])
    notice_id = queue_notice(engine, alice, "slow server")
    real = mailer_for(smtp.url)
    seen: list[int] = []

    class Probing:
        def send(self, mail: Mail) -> None:
            with engine.connect() as other:
                if engine.dialect.name == "postgresql":
                    other.exec_driver_sql(
                        f"SELECT id FROM notices WHERE id = {notice_id} FOR UPDATE NOWAIT"
                    )
                else:
                    other.exec_driver_sql("PRAGMA busy_timeout = 0")
                    other.exec_driver_sql("BEGIN IMMEDIATE")
                other.rollback()
            # A second run meanwhile, on the real clock: the first run's ``now`` (its
            # start, here long past) must not shorten the lease.
            seen.append(send_pending(engine, real).sent)
            real.send(mail)

    summary = send_pending(engine, Probing(), now=NOW)
    assert summary.sent == 1
    assert seen == [0]
    assert [r.subject for r in smtp.inbox("alice@gmail.com")] == ["slow server"]
    assert unsent(engine) == []


def test_outbox_keeps_notices_while_smtp_is_down(
    engine: Engine, smtp: MailServer, closed_port: Callable[[], int]
) -> None:
    alice = add_account(engine, "alice", [("alice@gmail.com", True)])
    for subject in ("one", "two", "three"):
        queue_notice(engine, alice, subject)
    down = send_pending(engine, mailer_for(f"smtp://127.0.0.1:{closed_port()}"), now=NOW)
    assert down.stopped
    assert down.sent == 0
    assert down.failed == 1
    assert unsent(engine) == ["one", "two", "three"]
    smtp.fail_with = "451 4.3.0 try again later"
    refused = send_pending(engine, mailer_for(smtp.url), now=NOW)
    assert refused.stopped
    assert unsent(engine) == ["one", "two", "three"]
    smtp.fail_with = None
    up = send_pending(engine, mailer_for(smtp.url), now=NOW + timedelta(hours=1))
    assert up.sent == 3
    assert unsent(engine) == []
    assert [r.subject for r in smtp.inbox("alice@gmail.com")] == ["one", "two", "three"]


def test_outbox_skips_a_refused_notice_and_goes_on(engine: Engine, smtp: MailServer) -> None:
    alice = add_account(engine, "alice", [("alice@gmail.com", True)])
    queue_notice(engine, alice, "to a dead mailbox", to="dead@gone.test")
    queue_notice(engine, alice, "fine")
    smtp.refuse.add("dead@gone.test")
    summary = send_pending(engine, mailer_for(smtp.url), now=NOW)
    assert (summary.sent, summary.failed, summary.stopped) == (1, 1, False)
    assert unsent(engine) == ["to a dead mailbox"]  # kept for a later run, never dropped


def test_outbox_waits_for_an_account_with_no_verified_address(
    engine: Engine, smtp: MailServer
) -> None:
    dave = add_account(engine, "dave", [("dave@vacant.test", False)])
    queue_notice(engine, dave, "nobody to tell")
    summary = send_pending(engine, mailer_for(smtp.url), now=NOW)
    assert summary.waiting == 1
    assert summary.sent == 0
    assert unsent(engine) == ["nobody to tell"]
    assert smtp.everything() == []


# ----------------------------------------------------------------- expiry and advice


def set_domain(engine: Engine, name: str, expires_at: datetime | None, verdict: str) -> None:
    with make_sessionmaker(engine).begin() as session:
        domain = session.get(Domain, name)
        assert domain is not None
        domain.expires_at = expires_at
        domain.last_verdict = verdict


def notices(engine: Engine, kind: str) -> list[tuple[int, str]]:
    with make_sessionmaker(engine)() as session:
        return [
            (n.account_id, n.subject)
            for n in session.scalars(select(Notice).where(Notice.kind == kind).order_by(Notice.id))
        ]


def queue_warnings(engine: Engine, now: datetime) -> int:
    with make_sessionmaker(engine).begin() as session:
        return queue_expiry_warnings(session, now=now)


def test_expiry_warning_once_per_domain_expiry(engine: Engine, smtp: MailServer) -> None:
    carol = add_account(engine, "carol", [("carol@soon.test", True), ("carol@gmail.com", True)])
    erin = add_account(engine, "erin", [("erin@soon.test", True), ("erin@later.test", True)])
    add_account(engine, "pat", [("pat@soon.test", False)])  # unverified: nothing to warn about
    add_account(engine, "lou", [("lou@lapsing.test", True)])
    expires = NOW + timedelta(days=20)
    set_domain(engine, "soon.test", expires, "registered")
    set_domain(engine, "later.test", NOW + timedelta(days=40), "registered")
    set_domain(engine, "lapsing.test", NOW + timedelta(days=3), "expiring")  # already unverified
    assert queue_warnings(engine, NOW) == 2
    assert queue_warnings(engine, NOW) == 0
    assert queue_warnings(engine, NOW + timedelta(days=5)) == 0
    subject = f"Your domain soon.test expires on {expires.date().isoformat()}"
    assert notices(engine, "domain.expiry_warning") == [(carol, subject), (erin, subject)]

    run_mail_jobs(engine, mailer_for(smtp.url), LINKS, now=NOW)
    (mail,) = smtp.inbox("carol@gmail.com")
    assert mail.subject == subject
    assert "carol@soon.test" in mail.body
    assert "(in 20 days)" in mail.body
    assert len(smtp.inbox("carol@soon.test")) == 1  # still verified, still the owner's

    # Renewed for a year: the next expiry is warned about in its turn.
    renewed = expires + timedelta(days=365)
    set_domain(engine, "soon.test", renewed, "registered")
    assert queue_warnings(engine, NOW + timedelta(days=30)) == 1  # erin's later.test
    assert queue_warnings(engine, renewed - timedelta(days=27)) == 2
    with make_sessionmaker(engine)() as session:
        keys = session.scalars(
            select(Event.key).where(Event.kind == "domain.expiry_warning").order_by(Event.id)
        ).all()
    assert keys[0] == f"domain.expiry_warning:{carol}:soon.test:{expires.date().isoformat()}"
    assert len(keys) == 5


def test_security_advice_once_per_account(engine: Engine, smtp: MailServer) -> None:
    solo = add_account(engine, "solo", [("solo@own.test", True), ("solo@other.test", False)])
    guarded = add_account(engine, "guarded", [("g@own2.test", True)], totp=True)
    add_account(engine, "paired", [("p@own.test", True), ("p@gmail.com", True)])
    add_account(engine, "webmail", [("w@gmail.com", True)])
    add_account(engine, "none", [("n@own.test", False)])
    with make_sessionmaker(engine).begin() as session:
        assert queue_security_advice(session, now=NOW) == 2
    with make_sessionmaker(engine).begin() as session:
        assert queue_security_advice(session, now=NOW + timedelta(days=7)) == 0
    assert [a for a, _ in notices(engine, "account.security_advice")] == [solo, guarded]

    summary = run_mail_jobs(engine, mailer_for(smtp.url), LINKS, now=NOW + timedelta(days=8))
    assert summary.advice == 0
    assert summary.outbox.sent == 2
    (solo_mail,) = smtp.inbox("solo@own.test")
    assert "two-factor" in solo_mail.body
    assert "well-known mail provider" in solo_mail.body
    (guarded_mail,) = smtp.inbox("g@own2.test")
    assert "two-factor" not in guarded_mail.body
    assert smtp.inbox("solo@other.test") == []
