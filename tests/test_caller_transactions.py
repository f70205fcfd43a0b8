"""The caller owns the transaction: API keys, webhooks and the account services change
nothing the caller does not commit, and a refused change leaves the caller's
transaction to roll back (or, for the account services, to commit the refusal's
record when the caller keeps refusals: the web app's ``context.run``)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from lapsewatch.accounts.core import KEEP
from lapsewatch.accounts.errors import InvalidCredentials, TokenInvalid
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.service import AccountService, LoginStatus
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.due import DueDomain
from lapsewatch.mail.links import link_mail
from lapsewatch.smtp import Mail, SmtpMailer
from lapsewatch.store import Account, Email, Event, Notice, make_sessionmaker
from lapsewatch.store.models import RateLimitHit
from lapsewatch.store.work import after_commit, savepoint, transaction
from lapsewatch.web.apikeys import (
    KeyNameTaken,
    authenticate,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from lapsewatch.web.webhooks import add_webhook, list_webhooks, remove_webhook
from tests.mail_support import MailServer, account_settings, deliver_at_once, token_from
from tests.web_support import LOOPBACK

NOW = datetime(2026, 12, 1, tzinfo=UTC)
HOOK = "http://127.0.0.1:9/hook"
PASSWORD = "correct horse battery"


@contextmanager
def rolled_back(engine: Engine) -> Iterator[Session]:
    """A caller's transaction that ends in a rollback."""
    with make_sessionmaker(engine)() as session:
        session.begin()
        yield session
        session.rollback()


def committed(engine: Engine, work: Callable[[Session], object]) -> object:
    """``work`` in a caller's transaction, committed if it returns, rolled back if it raises."""
    with make_sessionmaker(engine).begin() as session:
        return work(session)


def test_an_api_key_made_in_a_rolled_back_transaction_does_not_exist(engine: Engine) -> None:
    with rolled_back(engine) as session:
        key = create_api_key(session, "registry", now=NOW)
        assert authenticate(session, key) is not None  # seen inside the transaction
    with make_sessionmaker(engine)() as session:
        assert list_api_keys(session) == []
        assert authenticate(session, key) is None


def test_a_revoke_rolled_back_leaves_the_key_live(engine: Engine) -> None:
    key = committed(engine, lambda session: create_api_key(session, "registry", now=NOW))
    assert isinstance(key, str)
    with rolled_back(engine) as session:
        assert revoke_api_key(session, "registry", now=NOW)
    with make_sessionmaker(engine)() as session:
        assert authenticate(session, key) is not None


def test_a_taken_name_rolls_the_callers_transaction_back(engine: Engine) -> None:
    committed(engine, lambda session: create_api_key(session, "registry", now=NOW))

    def hook_then_same_name(session: Session) -> None:
        add_webhook(session, HOOK, now=NOW, allow=LOOPBACK.webhook_allow)
        create_api_key(session, "registry", now=NOW)

    with pytest.raises(KeyNameTaken):
        committed(engine, hook_then_same_name)
    with make_sessionmaker(engine)() as session:
        assert [k.name for k in list_api_keys(session)] == ["registry"]
        assert list_webhooks(session) == []  # the webhook went with the transaction


def test_webhooks_change_only_when_the_caller_commits(engine: Engine) -> None:
    with rolled_back(engine) as session:
        add_webhook(session, HOOK, now=NOW, allow=LOOPBACK.webhook_allow)
    with make_sessionmaker(engine)() as session:
        assert list_webhooks(session) == []
    with make_sessionmaker(engine).begin() as session:
        hook = add_webhook(session, HOOK, now=NOW, allow=LOOPBACK.webhook_allow)
    with rolled_back(engine) as session:
        assert remove_webhook(session, hook.id)
    with make_sessionmaker(engine)() as session:
        assert [h.id for h in list_webhooks(session)] == [hook.id]


# ---------------------------------------------------------------- the account services


def services(engine: Engine, smtp: MailServer, sent: list[list[int]]) -> AccountService:
    """The services with a ``deliver`` that records what it was handed, then sends it."""
    settings = account_settings(smtp.url)
    send = deliver_at_once(engine, settings, SmtpMailer.from_settings(settings))

    def deliver(ids: Sequence[int]) -> bool:
        sent.append(list(ids))
        return send(ids)

    return AccountService(engine, settings, deliver=deliver, passwords=Passwords.cheapest())


def test_a_sign_up_rolled_back_leaves_nothing_and_mails_nothing(engine: Engine) -> None:
    sent: list[list[int]] = []
    with MailServer() as smtp:
        svc = services(engine, smtp, sent)
        with rolled_back(engine) as session:
            signed = svc.sign_up(session, "alice", PASSWORD, "alice@gmail.com")
            assert signed.account_id is not None  # seen inside the transaction
            assert session.scalars(select(Notice)).all() != []
        assert sent == []  # never handed to the sender: the notice is not there
        assert smtp.everything() == []
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Account)).all() == []
        assert session.scalars(select(Notice)).all() == []
        assert session.scalars(select(Event)).all() == []


def test_the_caller_composes_calls_into_one_transaction_and_mail_waits_for_its_commit(
    engine: Engine,
) -> None:
    """Two calls in one transaction; nothing is visible to another connection, and no
    mail is handed over, before the caller commits."""
    sent: list[list[int]] = []
    with MailServer() as smtp:
        svc = services(engine, smtp, sent)
        with make_sessionmaker(engine).begin() as session:
            account_id = svc.sign_up(session, "alice", PASSWORD, "alice@gmail.com").account_id
            assert account_id is not None
            svc.add_email(session, account_id, "alice@own.test")
            with make_sessionmaker(engine)() as other:
                assert other.scalars(select(Account)).all() == []
            assert sent == []
        assert len(sent) == 2  # each link handed over once committed
        assert {m.mailbox for m in smtp.everything()} == {"alice@gmail.com", "alice@own.test"}


def test_a_refused_login_is_recorded_when_the_caller_keeps_refusals(engine: Engine) -> None:
    """``transaction(keep=KEEP)`` (what the web app's ``context.run`` does) commits the
    record of a refusal; the limiter counts the attempt whatever the caller does."""
    sessions = make_sessionmaker(engine)
    with MailServer() as smtp:
        svc = services(engine, smtp, [])
        with transaction(sessions, keep=KEEP) as session:
            svc.sign_up(session, "alice", PASSWORD, "alice@gmail.com")
        with pytest.raises(InvalidCredentials), transaction(sessions, keep=KEEP) as session:
            svc.login(session, "alice", "a wrong guess")
        with pytest.raises(InvalidCredentials), transaction(sessions) as session:
            svc.login(session, "alice", "another wrong guess")  # this caller rolls back
    with sessions() as session:
        failed = session.scalars(select(Event).where(Event.kind == "login.failed")).all()
        assert len(failed) == 1  # only the kept one
        assert len(session.scalars(select(RateLimitHit)).all()) == 2  # both counted


class _Meanwhile(Passwords):
    """Passwords whose first check lets another request commit a change to the account
    while it runs (as one would during a real Argon2 check)."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        hasher = PasswordHasher.from_parameters(dataclasses.replace(CHEAPEST, time_cost=2))
        super().__init__(hasher)  # raised cost: the stored cheap hash needs a rehash
        self._meanwhile: Callable[[], None] | None = meanwhile

    def verify(self, stored: str | None, password: str) -> bool:
        good = super().verify(stored, password)
        if self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
        return good


def test_a_password_changed_during_a_login_fails_it_and_stays(engine: Engine) -> None:
    """A login with the old password, whose check the owner's change overtakes, neither
    gets in nor writes the old password back (its rehash)."""
    sessions = make_sessionmaker(engine)
    settings = account_settings("smtp://127.0.0.1:9")
    cheap = AccountService(engine, settings, passwords=Passwords.cheapest())
    with transaction(sessions, keep=KEEP) as session:
        account_id = cheap.sign_up(session, "victim", PASSWORD, "victim@gmail.com").account_id
    new_hash = Passwords.cheapest().hash("the owner's new passphrase")

    held: list[int] = []

    def owner_changes_it() -> None:
        held.append(engine.pool.checkedout())  # type: ignore[attr-defined]
        with sessions.begin() as other:
            other.get_one(Account, account_id).password_hash = new_hash

    svc = AccountService(engine, settings, passwords=_Meanwhile(owner_changes_it))
    with pytest.raises(InvalidCredentials), transaction(sessions, keep=KEEP) as session:
        svc.login(session, "victim", PASSWORD)
    with sessions() as session:
        assert session.get_one(Account, account_id).password_hash == new_hash
    # Through Argon2 the login held no connection of the caller's pool (a flood of
    # logins would starve every other request of it).
    assert held == [0]


def test_two_factor_turned_on_during_a_login_is_asked_for(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    settings = account_settings("smtp://127.0.0.1:9")
    cheap = AccountService(engine, settings, passwords=Passwords.cheapest())
    with transaction(sessions, keep=KEEP) as session:
        account_id = cheap.sign_up(session, "victim", PASSWORD, "victim@gmail.com").account_id

    def owner_turns_2fa_on() -> None:
        with sessions.begin() as other:
            account = other.get_one(Account, account_id)
            account.totp_enabled, account.totp_secret = True, "JBSWY3DPEHPK3PXP"

    svc = AccountService(engine, settings, passwords=_Meanwhile(owner_turns_2fa_on))
    with transaction(sessions, keep=KEEP) as session:
        result = svc.login(session, "victim", PASSWORD)
    assert result.status is LoginStatus.SECOND_FACTOR_REQUIRED


def test_a_login_upgrades_an_old_hash(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    settings = account_settings("smtp://127.0.0.1:9")
    cheap = AccountService(engine, settings, passwords=Passwords.cheapest())
    with transaction(sessions, keep=KEEP) as session:
        account_id = cheap.sign_up(session, "alice", PASSWORD, "alice@gmail.com").account_id
    with sessions() as session:
        old = session.get_one(Account, account_id).password_hash
    raised = _Meanwhile(lambda: None)
    with transaction(sessions, keep=KEEP) as session:
        AccountService(engine, settings, passwords=raised).login(session, "alice", PASSWORD)
    with sessions() as session:
        new = session.get_one(Account, account_id).password_hash
    assert new is not None
    assert new != old
    assert not raised.needs_rehash(new)
    assert raised.verify(new, PASSWORD)


def test_after_commit_runs_once_after_the_outermost_commit_only(engine: Engine) -> None:
    """What rides on the caller's commit: not at a savepoint's release, never after a
    rollback (the caller's, or the savepoint's it was registered in)."""
    sessions = make_sessionmaker(engine)
    ran: list[str] = []
    with transaction(sessions) as session:
        after_commit(session, lambda: ran.append("outer"))
        with savepoint(session):
            after_commit(session, lambda: ran.append("released savepoint"))
        with suppress(LookupError), savepoint(session):
            after_commit(session, lambda: ran.append("rolled-back savepoint"))
            raise LookupError
        assert ran == []  # nothing before the commit
    assert ran == ["outer", "released savepoint"]
    with suppress(LookupError), transaction(sessions) as session:
        after_commit(session, lambda: ran.append("rolled back"))
        raise LookupError
    with sessions() as reused:  # one session, two transactions
        reused.begin()
        after_commit(reused, lambda: ran.append("first, rolled back"))
        reused.rollback()
        reused.begin()
        after_commit(reused, lambda: ran.append("second, committed"))
        reused.commit()
    assert ran == ["outer", "released savepoint", "second, committed"]


def test_a_verification_composes_after_a_write(engine: Engine) -> None:
    """A caller that wrote first (holding SQLite's write lock, or a row lock on
    PostgreSQL) and then verifies: the dry run goes in a savepoint of its transaction
    instead of a connection of its own, which would wait for those locks until the lock
    timeout."""
    sessions = make_sessionmaker(engine)
    with MailServer() as smtp:
        svc = services(engine, smtp, [])
        with transaction(sessions, keep=KEEP) as session:
            account_id = svc.sign_up(session, "alice", PASSWORD, "alice@gmail.com").account_id
        assert account_id is not None
        token = token_from(smtp.inbox("alice@gmail.com")[-1])
        started = time.monotonic()
        with transaction(sessions, keep=KEEP) as session:
            svc.end_sessions(session, account_id)  # a write, and the account's row locked
            assert svc.verify_email(session, token).verified
        assert time.monotonic() - started < 5
    with sessions() as session:
        email = session.scalars(select(Email).where(Email.address == "alice@gmail.com")).one()
        assert email.verified


def test_a_password_changed_during_a_password_change_wins(engine: Engine) -> None:
    """A stolen session with the old password changing it while the owner resets it: the
    owner's new password stays (the stale check does not overwrite it)."""
    sessions = make_sessionmaker(engine)
    settings = account_settings("smtp://127.0.0.1:9")
    cheap = AccountService(engine, settings, passwords=Passwords.cheapest())
    with transaction(sessions, keep=KEEP) as session:
        account_id = cheap.sign_up(session, "victim", PASSWORD, "victim@gmail.com").account_id
    assert account_id is not None
    owners = Passwords.cheapest().hash("the owner's new passphrase")

    def owner_resets_it() -> None:
        with sessions.begin() as other:
            other.get_one(Account, account_id).password_hash = owners

    svc = AccountService(engine, settings, passwords=_Meanwhile(owner_resets_it))
    with pytest.raises(InvalidCredentials), transaction(sessions, keep=KEEP) as session:
        svc.change_password(session, account_id, PASSWORD, "the attacker's passphrase")
    with sessions() as session:
        assert session.get_one(Account, account_id).password_hash == owners


def test_a_login_passes_while_another_upgrades_the_hash(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    settings = account_settings("smtp://127.0.0.1:9")
    cheap = AccountService(engine, settings, passwords=Passwords.cheapest())
    with transaction(sessions, keep=KEEP) as session:
        cheap.sign_up(session, "alice", PASSWORD, "alice@gmail.com")

    def another_device_logs_in() -> None:
        with transaction(sessions, keep=KEEP) as other:
            raised = _Meanwhile(lambda: None)
            AccountService(engine, settings, passwords=raised).login(other, "alice", PASSWORD)

    svc = AccountService(engine, settings, passwords=_Meanwhile(another_device_logs_in))
    with transaction(sessions, keep=KEEP) as session:
        assert svc.login(session, "alice", PASSWORD).status is LoginStatus.OK


def test_after_commit_is_forgotten_when_the_transaction_ends_otherwise(engine: Engine) -> None:
    """Closed without a commit, or a commit whose flush failed: the session's next commit
    does not run what was queued."""
    sessions = make_sessionmaker(engine)
    ran: list[str] = []
    with sessions() as session:
        session.begin()
        after_commit(session, lambda: ran.append("closed"))
        session.close()
        session.begin()
        session.commit()
    with sessions() as session:
        session.begin()
        after_commit(session, lambda: ran.append("failed commit"))
        session.add(Account(username="x", created_at=None, projects=[]))  # NOT NULL
        with suppress(SQLAlchemyError):
            session.commit()
        session.close()
        session.begin()
        session.commit()
    assert ran == []


@pytest.mark.parametrize("how", ["reset", "change"])
def test_a_reset_link_made_during_a_password_change_dies_with_it(
    engine: Engine, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox is making a reset link while the owner resets (or changes) the
    password: that link is dead afterwards, and neither side fails."""
    sessions = make_sessionmaker(engine)
    with MailServer() as smtp:
        svc = services(engine, smtp, [])
        with transaction(sessions, keep=KEEP) as session:
            account_id = svc.sign_up(session, "victim", PASSWORD, "victim@gmail.com").account_id
        assert account_id is not None
        with transaction(sessions, keep=KEEP) as session:
            svc.verify_email(session, token_from(smtp.inbox("victim@gmail.com")[-1]))
        with transaction(sessions, keep=KEEP) as session:
            svc.request_password_reset(session, "victim")
        first = token_from(smtp.inbox("victim@gmail.com")[-1])
        errors: list[BaseException] = []

        def owner() -> None:
            try:
                with transaction(sessions, keep=KEEP) as session:
                    if how == "reset":
                        svc.reset_password(session, first, "the owner's new passphrase")
                    else:
                        svc.change_password(
                            session, account_id, PASSWORD, "the owner's new passphrase"
                        )
            except BaseException as exc:
                errors.append(exc)

        real = link_mail
        started: list[threading.Thread] = []

        def while_the_owner_acts(*args: Any, **kwargs: Any) -> tuple[Mail, str]:
            made = real(*args, **kwargs)
            if not started:  # the claim's transaction is open, its token not committed
                started.append(threading.Thread(target=owner))
                started[0].start()
                time.sleep(1.0)
            return made

        monkeypatch.setattr("lapsewatch.mail.outbox.link_mail", while_the_owner_acts)
        with transaction(sessions, keep=KEEP) as session:
            svc.request_password_reset(session, "victim")
        started[0].join(20)
        assert errors == []
        resets = [m for m in smtp.inbox("victim@gmail.com") if m.kind == "password_reset"]
        second = token_from(resets[-1])
        assert second != first
        with pytest.raises(TokenInvalid), sessions() as session:
            svc.check_reset_token(session, second)


def test_a_caller_that_only_read_holds_no_lock_through_the_domain_check(engine: Engine) -> None:
    """A verification whose caller read first: the dry run still goes on a connection of
    its own (a savepoint of the caller's would keep SQLite's write lock through the
    check, over the network)."""
    sessions = make_sessionmaker(engine)
    seen: list[str] = []

    class Probing:
        def check(self, due: DueDomain, *, now: datetime) -> CheckResult:
            if engine.dialect.name == "sqlite":  # can another connection write now?
                assert engine.url.database is not None
                other = sqlite3.connect(engine.url.database, timeout=0.3)
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                    seen.append("free")
                except sqlite3.OperationalError as exc:
                    seen.append(str(exc))
                finally:
                    other.close()
            else:  # PostgreSQL locks rows, not the database: the verification must work
                seen.append("free")
            raise RuntimeError("the registry does not answer")

    with MailServer() as smtp:
        settings = account_settings(smtp.url)
        send = deliver_at_once(engine, settings, SmtpMailer.from_settings(settings))
        svc = AccountService(
            engine, settings, deliver=send, checker=Probing(), passwords=Passwords.cheapest()
        )
        with transaction(sessions, keep=KEEP) as session:
            svc.sign_up(session, "alice", PASSWORD, "alice@own.test")
        token = token_from(smtp.inbox("alice@own.test")[-1])
        with transaction(sessions, keep=KEEP) as session:
            session.scalars(select(Account)).all()  # the caller reads first
            assert svc.verify_email(session, token).verified
    assert seen == ["free"]
