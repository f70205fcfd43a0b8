"""The account services on SQLite and PostgreSQL, with a real SMTP server on loopback."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from sqlalchemy import Engine, select

from lapsewatch.accounts import addresses as addresses_module
from lapsewatch.accounts.errors import (
    AccountError,
    AddressInUse,
    AlreadyVerified,
    EmailNotFound,
    InvalidAddress,
    InvalidCredentials,
    InvalidSecondFactor,
    InvalidUsername,
    LastVerifiedAddress,
    LoginRequired,
    NotVerified,
    PrimaryAddress,
    RateLimited,
    TokenExpired,
    TokenInvalid,
    TokenUsed,
    TooManyAddresses,
    TotpAlreadyEnabled,
    UsernameTaken,
    WeakPassword,
)
from lapsewatch.accounts.passwords import Passwords
from lapsewatch.accounts.service import (
    RESET_REQUESTED,
    AccountService,
    AddressStatus,
    LoginStatus,
)
from lapsewatch.accounts.settings import AccountSettings, Limit, RateLimits
from lapsewatch.config import Settings
from lapsewatch.cycle.apply import CheckResult
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.cycle.due import DueDomain
from lapsewatch.mail.links import Links
from lapsewatch.mail.sender import OutboxSender
from lapsewatch.smtp import SmtpMailer
from lapsewatch.store import Account, Domain, Email, Event, make_sessionmaker
from lapsewatch.store.models import RateLimitHit, Token
from lapsewatch.world import World, demo_scenario
from tests.mail_support import (
    PASSWORD,
    Accounts,
    Clock,
    MailServer,
    account_settings,
    created,
    make_service,
    sign_up_verified,
    token_from,
)

NOW = datetime.now(UTC).replace(microsecond=0)
NEW_PASSWORD = "another long passphrase"


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


@pytest.fixture(autouse=True)
def _empty_inboxes(smtp: MailServer) -> None:
    smtp.clear()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def settings(smtp: MailServer) -> AccountSettings:
    return account_settings(smtp.url)


@pytest.fixture
def svc(engine: Engine, settings: AccountSettings, clock: Clock) -> Accounts:
    return make_service(engine, settings, clock=clock)


def check_settings(world: World) -> Settings:
    return Settings.from_env(
        {
            **world.env(),
            "LAPSEWATCH_TIMEOUT": "0.5",
            "LAPSEWATCH_ATTEMPTS": "1",
            "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        }
    )


def events(engine: Engine, kind: str) -> list[Event]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def email_row(engine: Engine, address: str) -> Email:
    with make_sessionmaker(engine)() as session:
        return session.scalars(select(Email).where(Email.address == address)).one()


def unverify(engine: Engine, address: str, when: datetime, verdict: str = "redemption") -> None:
    """What the cycle does to an address whose domain lapsed."""
    with make_sessionmaker(engine).begin() as session:
        email = session.scalars(select(Email).where(Email.address == address)).one()
        email.verified = False
        email.unverified_at = when
        email.unverify_reason = verdict
        email.unverify_detail = "RDAP: status 'redemption period': the registration has lapsed"


# ------------------------------------------------------------------------------ sign-up


def test_sign_up_mails_a_single_use_link_and_stores_only_its_hash(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    signed = svc.sign_up("maintainer", PASSWORD, "M@Own.Test", client="198.51.100.7")
    assert signed.address == "M@own.test"
    (mail,) = smtp.inbox("m@own.test")
    assert mail.kind == "verify_email"
    assert "http://registry.test/account/verify-email?token=" in mail.body
    token = token_from(mail)
    with make_sessionmaker(engine)() as session:
        account = session.get(Account, signed.account_id)
        assert account is not None
        assert account.password_hash is not None
        assert account.password_hash.startswith("$argon2id$")
        (email,) = account.emails
        assert email.primary
        assert not email.verified
        (row,) = session.scalars(select(Token)).all()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() != token
        assert row.expires_at == NOW + timedelta(hours=24)
    assert [e.actor for e in events(engine, "account.created")] == ["user:maintainer"]

    clock.advance(hours=2)
    verified = svc.verify_email(token)
    assert verified.verified
    assert not verified.checked
    assert email_row(engine, "M@own.test").verified_at == NOW + timedelta(hours=2)
    with pytest.raises(TokenUsed):
        svc.verify_email(token)
    (event,) = events(engine, "email.verified")
    assert event.actor == "user:maintainer"
    assert event.after
    assert event.after["verified"]


def test_verification_links_expire(svc: Accounts, smtp: MailServer, clock: Clock) -> None:
    svc.sign_up("late", PASSWORD, "late@own.test")
    clock.advance(hours=24, seconds=1)
    with pytest.raises(TokenExpired):
        svc.verify_email(token_from(smtp.inbox("late@own.test")[0]))
    for garbage in ("", "x" * 5000, "not-a-token", "\udcff"):
        with pytest.raises(TokenInvalid):
            svc.verify_email(garbage)


@pytest.mark.parametrize(
    ("username", "password", "address", "error"),
    [
        ("", PASSWORD, "a@own.test", InvalidUsername),
        ("-bad", PASSWORD, "a@own.test", InvalidUsername),
        ("has space", PASSWORD, "a@own.test", InvalidUsername),
        ("alice", "short", "a@own.test", WeakPassword),
        ("alice-the-maintainer", "Alice-The-Maintainer", "a@own.test", WeakPassword),
        ("alice", "a@own.test", "a@own.test", WeakPassword),
        ("alice", "aaaaaaaaaaaaaaaa", "a@own.test", WeakPassword),
        ("alice", "x" * 1025, "a@own.test", WeakPassword),
        ("alice", PASSWORD, "not an address", InvalidAddress),
        ("alice", PASSWORD, "own.test", InvalidAddress),
    ],
)
def test_sign_up_refuses(
    svc: Accounts, username: str, password: str, address: str, error: type[AccountError]
) -> None:
    with pytest.raises(error):
        svc.sign_up(username, password, address)


def test_usernames_and_addresses_are_unique_ignoring_case(svc: Accounts, smtp: MailServer) -> None:
    svc.sign_up("alice", PASSWORD, "alice@own.test")
    with pytest.raises(UsernameTaken):
        svc.sign_up("ALICE", PASSWORD, "other@own.test")
    taken = svc.sign_up("alice2", PASSWORD, "Alice@own.test")  # no account, no error
    assert taken.account_id is None
    assert smtp.inbox("Alice@own.test")[-1].kind == "address_taken"


# ------------------------------------------------------------ verification checks domain


def test_verification_checks_the_domain_at_once(
    engine: Engine, settings: AccountSettings, clock: Clock, smtp: MailServer, world: World
) -> None:
    svc = make_service(
        engine, settings, clock=clock, checker=CycleDomainChecker(check_settings(world))
    )
    svc.sign_up("alice", PASSWORD, "alice@alive.test")
    alive = svc.verify_email(token_from(smtp.inbox("alice@alive.test")[0]))
    assert alive.verified
    assert alive.checked
    assert alive.verdict == "registered"
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "alive.test")
        assert domain is not None
        assert domain.registered_at is not None
        assert domain.registered_at < NOW
        assert domain.last_checked_at == NOW

    # A domain that has already lapsed is caught before a reset can ever go there.
    svc.sign_up("bob", PASSWORD, "bob@redeeming.test")
    lapsed = svc.verify_email(token_from(smtp.inbox("bob@redeeming.test")[0]))
    assert not lapsed.verified
    assert lapsed.checked
    assert lapsed.verdict == "redemption"
    email = email_row(engine, "bob@redeeming.test")
    assert not email.verified
    assert email.unverify_reason == "redemption"
    assert [e.domain for e in events(engine, "email.unverified")] == ["redeeming.test"]

    # A free provider is not checked at all.
    svc.sign_up("carol", PASSWORD, "carol@gmail.com")
    free = svc.verify_email(token_from(smtp.inbox("carol@gmail.com")[0]))
    assert free.verified
    assert not free.checked
    assert free.free_provider


def test_verification_stands_when_sources_are_unreachable(
    engine: Engine,
    settings: AccountSettings,
    clock: Clock,
    smtp: MailServer,
    closed_port: Callable[[], int],
) -> None:
    unreachable = Settings(
        sources=("rdap", "dns"),
        rdap_bootstrap_url=f"http://127.0.0.1:{closed_port()}/dns.json",
        dns_nameservers=(("127.0.0.1", closed_port()),),
        timeout=0.3,
        attempts=1,
    )
    svc = make_service(engine, settings, clock=clock, checker=CycleDomainChecker(unreachable))
    svc.sign_up("alice", PASSWORD, "alice@alive.test")
    result = svc.verify_email(token_from(smtp.inbox("alice@alive.test")[0]))
    assert result.verified
    assert result.verdict in (None, "unknown")
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "alive.test")
        assert domain is not None
        assert domain.next_due_at is not None
        assert domain.next_due_at <= NOW + timedelta(hours=1)  # retried soon by the cycle


def test_verification_stands_when_the_checker_crashes(
    engine: Engine, settings: AccountSettings, clock: Clock, smtp: MailServer
) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls: list[DueDomain] = []

        def check(self, due: DueDomain, *, now: datetime) -> CheckResult:
            self.calls.append(due)
            raise RuntimeError("boom")

    broken = Broken()
    svc = make_service(engine, settings, clock=clock, checker=broken)
    svc.sign_up("alice", PASSWORD, "alice@own.test")
    result = svc.verify_email(token_from(smtp.inbox("alice@own.test")[0]))
    assert result.verified
    assert not result.checked
    assert [d.name for d in broken.calls] == ["own.test"]
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "own.test")
        assert domain is not None
        assert domain.next_due_at == NOW


# --------------------------------------------------------------------------------- login


def test_login_and_the_same_error_for_unknown_user_and_wrong_password(
    svc: Accounts, smtp: MailServer, engine: Engine
) -> None:
    svc.sign_up("alice", PASSWORD, "alice@own.test")
    ok = svc.login("alice", PASSWORD, client="192.0.2.1")
    assert ok.complete
    assert ok.username == "alice"
    assert not ok.is_admin
    assert svc.login("ALICE", PASSWORD).complete  # usernames ignore case at login
    messages = set()
    for username, password in (("alice", "wrong password!"), ("nobody", PASSWORD)):
        with pytest.raises(InvalidCredentials) as caught:
            svc.login(username, password)
        messages.add(str(caught.value))
    assert messages == {"wrong username or password"}
    assert [e.actor for e in events(engine, "login.failed")] == ["user:alice"]


def test_failed_logins_are_limited_per_username_and_per_client(
    svc: Accounts, smtp: MailServer, clock: Clock, engine: Engine
) -> None:
    svc.sign_up("alice", PASSWORD, "alice@own.test")
    for attempt in range(10):
        with pytest.raises(InvalidCredentials):
            svc.login("alice", f"guess number {attempt}", client=f"203.0.113.{attempt}")
    with pytest.raises(RateLimited) as limited:
        svc.login("alice", PASSWORD, client="192.0.2.99")  # even the right password waits
    assert limited.value.retry_after == NOW + timedelta(minutes=15)
    with pytest.raises(RateLimited):
        svc.login("Alice", PASSWORD)
    assert len(events(engine, "login.rate_limited")) == 1  # once per window, not per attempt
    clock.advance(minutes=15, seconds=1)
    assert svc.login("alice", PASSWORD).complete

    # Password spraying: one client, many usernames.
    for number in range(50):
        with pytest.raises(InvalidCredentials):
            svc.login(f"user{number}", "some password", client="198.51.100.66")
    with pytest.raises(RateLimited):
        svc.login("alice", PASSWORD, client="198.51.100.66")
    assert svc.login("alice", PASSWORD, client="198.51.100.67").complete
    with make_sessionmaker(engine)() as session:  # nothing readable about who tried
        keys = session.scalars(select(RateLimitHit.key)).all()
        assert keys
        assert not any("198.51" in k or "user1" in k for k in keys)


# ---------------------------------------------------------------------------------- TOTP


def test_totp_setup_login_replay_and_recovery_codes(
    svc: Accounts, smtp: MailServer, clock: Clock, engine: Engine
) -> None:
    account_id = created(svc.sign_up("alice", PASSWORD, "alice@own.test"))
    setup = svc.begin_totp_setup(account_id)
    assert setup.provisioning_uri.startswith("otpauth://totp/lapsewatch:alice?secret=")
    totp = pyotp.TOTP(setup.secret)
    with pytest.raises(InvalidSecondFactor):
        svc.confirm_totp(account_id, "000000" if totp.at(NOW) != "000000" else "1")
    confirmed = svc.confirm_totp(account_id, totp.at(NOW))
    codes = confirmed.codes
    assert confirmed.session_generation == 1  # turning 2FA on ended the other sessions
    assert len(codes) == 10
    assert len(set(codes)) == 10
    with pytest.raises(TotpAlreadyEnabled):
        svc.begin_totp_setup(account_id)
    with make_sessionmaker(engine)() as session:
        account = session.get(Account, account_id)
        assert account is not None
        assert account.totp_enabled
        assert account.totp_pending_secret is None
        stored = [c.code_hash for c in account.unused_recovery_codes]
        assert len(stored) == 10
        assert all(h.startswith("$argon2id$") for h in stored)
        assert not any(c in str(stored) for c in codes)

    first = svc.login("alice", PASSWORD)
    assert first.status is LoginStatus.SECOND_FACTOR_REQUIRED
    assert not first.complete
    clock.advance(seconds=60)
    code = totp.at(clock())
    done = svc.complete_login(account_id, totp_code=code)
    assert done.complete
    assert done.recovery_codes_left == 10
    with pytest.raises(InvalidSecondFactor):  # the same code never logs in twice
        svc.complete_login(account_id, totp_code=code)
    clock.advance(seconds=30)
    assert svc.login("alice", PASSWORD, totp_code=totp.at(clock())).complete  # one step

    used = svc.complete_login(account_id, recovery_code=codes[3].upper().replace("-", " "))
    assert used.used_recovery_code
    assert used.recovery_codes_left == 9
    with pytest.raises(InvalidSecondFactor):
        svc.complete_login(account_id, recovery_code=codes[3])
    assert len(events(engine, "totp.recovery_code_used")) == 1

    for _ in range(3):  # 2 failures above + 3 = 5: the limit
        with pytest.raises(InvalidSecondFactor):
            svc.complete_login(account_id, totp_code="123456" if code != "123456" else "654321")
    with pytest.raises(RateLimited):
        svc.complete_login(account_id, totp_code=totp.at(clock()))

    clock.advance(minutes=16)
    with pytest.raises(InvalidCredentials):
        svc.disable_totp(account_id, "not my password")
    new_codes = svc.regenerate_recovery_codes(account_id, PASSWORD).codes
    assert svc.complete_login(account_id, recovery_code=new_codes[0]).recovery_codes_left == 9
    with pytest.raises(InvalidSecondFactor):
        svc.complete_login(account_id, recovery_code=codes[0])  # the old set is gone
    svc.disable_totp(account_id, PASSWORD)
    assert svc.login("alice", PASSWORD).complete
    kinds = [e.kind for e in events(engine, "totp.enabled") + events(engine, "totp.disabled")]
    assert kinds == ["totp.enabled", "totp.disabled"]


# ----------------------------------------------------------------------------- addresses


def test_adding_removing_and_choosing_the_primary_address(
    svc: Accounts, smtp: MailServer, engine: Engine
) -> None:
    alice = sign_up_verified(svc, smtp, "alice", "alice@own.test")
    bob = sign_up_verified(svc, smtp, "bob", "bob@own.test")
    with pytest.raises(AddressInUse):
        svc.add_email(alice, "BOB@own.test")
    added = svc.add_email(alice, "alice@gmail.com")
    assert added.address == "alice@gmail.com"
    assert len(smtp.inbox("alice@gmail.com")) == 1
    with pytest.raises(NotVerified):
        svc.set_primary(alice, added.email_id)
    own = email_row(engine, "alice@own.test")
    with pytest.raises(PrimaryAddress):
        svc.remove_email(alice, own.id)
    svc.verify_email(token_from(smtp.inbox("alice@gmail.com")[0]))
    unverify(engine, "alice@own.test", NOW)  # its domain lapsed
    with pytest.raises(LastVerifiedAddress):  # gmail is now the only way back
        svc.remove_email(alice, added.email_id)
    svc.set_primary(alice, added.email_id)
    svc.remove_email(alice, own.id)
    overview = svc.security_overview(alice)
    assert [(a.address, a.primary) for a in overview.addresses] == [("alice@gmail.com", True)]
    with pytest.raises(EmailNotFound):  # someone else's address is not yours to touch
        svc.remove_email(alice, email_row(engine, "bob@own.test").id)
    with pytest.raises(EmailNotFound):
        svc.request_reverification(alice, email_row(engine, "bob@own.test").id)
    assert bob != alice
    kinds = [e.kind for e in events(engine, "email.removed")]
    assert kinds == ["email.removed"]
    (changed,) = events(engine, "email.primary_changed")
    assert changed.before == {"primary": "alice@own.test"}
    assert changed.after == {"primary": "alice@gmail.com"}


def test_a_lost_race_for_a_name_or_address_is_a_clean_refusal(
    svc: Accounts, smtp: MailServer, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests may pass the "is it free?" check together; the database decides."""
    alice = created(svc.sign_up("alice", PASSWORD, "alice@own.test"))
    bob = created(svc.sign_up("bob", PASSWORD, "bob@own.test"))
    monkeypatch.setattr(addresses_module, "_account_by_username", lambda *_: None)
    monkeypatch.setattr(addresses_module, "_email_by_address", lambda *_: None)
    with pytest.raises(UsernameTaken):
        svc.sign_up("alice", PASSWORD, "alice2@own.test")
    with pytest.raises(AddressInUse):
        svc.add_email(bob, "alice@own.test")
    assert [a.address for a in svc.security_overview(bob).addresses] == ["bob@own.test"]
    assert svc.add_email(alice, "alice@gmail.com").email_id  # the session is fine
    with make_sessionmaker(engine)() as session:
        assert len(session.scalars(select(Account)).all()) == 2


def test_too_many_addresses(engine: Engine, smtp: MailServer, clock: Clock) -> None:
    svc = make_service(engine, account_settings(smtp.url, max_addresses=2), clock=clock)
    alice = created(svc.sign_up("alice", PASSWORD, "a1@own.test"))
    svc.add_email(alice, "a2@own.test")
    with pytest.raises(TooManyAddresses):
        svc.add_email(alice, "a3@own.test")


# ------------------------------------------------------------------------ re-verification


def test_reverification_only_through_the_owners_new_link(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    alice = sign_up_verified(svc, smtp, "alice", "alice@own.test")
    mallory = sign_up_verified(svc, smtp, "mallory", "mallory@own2.test")
    svc.add_email(alice, "alice@side.test")  # its link sits unused in the mailbox ...
    stale_link = token_from(smtp.inbox("alice@side.test")[0])
    clock.advance(hours=1)
    unverify(engine, "alice@own.test", clock())
    own = email_row(engine, "alice@own.test")
    with make_sessionmaker(engine).begin() as session:  # ... while lapsewatch doubts side.test
        side = session.scalars(select(Email).where(Email.address == "alice@side.test")).one()
        side.unverified_at = clock()
    with pytest.raises(TokenInvalid, match="before the address was unverified"):
        svc.verify_email(stale_link)

    clock.advance(minutes=5)
    smtp.clear()
    sent = svc.request_reverification(alice, own.id)
    assert sent.address == "alice@own.test"
    (mail,) = smtp.inbox("alice@own.test")  # to that address, and only there
    assert len(smtp.everything()) == 1
    assert "verify" in mail.body.lower()
    first = token_from(mail)
    svc.request_reverification(alice, own.id)  # a newer link replaces the older one
    second = token_from(smtp.inbox("alice@own.test")[-1])
    with pytest.raises(LoginRequired):  # whoever reads the mailbox, without the session
        svc.verify_email(second)
    with pytest.raises(LoginRequired):
        svc.verify_email(second, session_account_id=mallory)
    with pytest.raises(TokenUsed):
        svc.verify_email(first, session_account_id=alice)
    result = svc.verify_email(second, session_account_id=alice)
    assert result.verified
    email = email_row(engine, "alice@own.test")
    assert email.verified
    assert email.verified_at == clock()
    assert email.unverified_at is None
    assert email.unverify_reason is None
    assert events(engine, "email.verified")[-1].after == {
        "verified": True,
        "verified_at": result_time(clock()),
        "via": "reverify_email",
    }
    with pytest.raises(AlreadyVerified):
        svc.request_reverification(alice, own.id)


def result_time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# -------------------------------------------------------------------------- password reset


def reset_outcomes(engine: Engine) -> list[str]:
    return [str(e.after["outcome"]) for e in events(engine, "password_reset.requested") if e.after]


def test_reset_answers_the_same_whatever_exists(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    sign_up_verified(svc, smtp, "alice", "alice@own.test", "alice@gmail.com")
    svc.sign_up("nora", PASSWORD, "nora@own.test")  # never verified
    smtp.clear()
    identifiers = [
        "alice",  # existing username
        "alice@gmail.com",  # verified address
        "nora@own.test",  # unverified address
        "nora",  # account with no verified address
        "nobody",  # unknown username
        "nobody@own.test",  # unknown address
        "not an address@",  # garbage
    ]
    answers = [
        svc.request_password_reset(i, client=f"192.0.2.{n}") for n, i in enumerate(identifiers)
    ]
    assert all(a is RESET_REQUESTED for a in answers)
    assert len({a.message for a in answers}) == 1
    assert reset_outcomes(engine) == [
        "sent",
        "sent",
        "no_verified_address",
        "no_verified_address",
        "unknown",
        "unknown",
        "unknown",
    ]
    # By username: every verified address; by a verified address: only that one.
    assert len(smtp.inbox("alice@own.test")) == 1
    assert len(smtp.inbox("alice@gmail.com")) == 2
    assert smtp.inbox("nora@own.test") == []
    assert smtp.inbox("nobody@own.test") == []
    assert all(r.kind == "password_reset" for r in smtp.everything())
    assert all(e.actor == "system" for e in events(engine, "password_reset.requested"))


def test_hostile_input_gets_the_ordinary_answers(
    svc: Accounts, smtp: MailServer, engine: Engine
) -> None:
    sign_up_verified(svc, smtp, "alice", "alice@gmail.com")
    smtp.clear()
    for identifier in ("ali\x00ce", "alice@gmail.com\x00", "\x00", "a" * 10_000, "@@@"):
        assert svc.request_password_reset(identifier, client="1.2.3.4\x00") is RESET_REQUESTED
        with pytest.raises(InvalidCredentials):
            svc.login(identifier, "not the password", client="\x00")
    # Control characters are dropped, not matched around: "ali\0ce" names alice.
    assert len(smtp.inbox("alice@gmail.com")) == 2
    bob = created(svc.sign_up("bob", PASSWORD, "bob@own.test"))
    svc.begin_totp_setup(bob)
    with pytest.raises(InvalidSecondFactor):
        svc.confirm_totp(bob, "\x00")


def test_reset_link_is_single_use_short_lived_and_revokes_the_others(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    sign_up_verified(svc, smtp, "alice", "alice@own.test", "alice@gmail.com")
    svc.request_password_reset("alice")
    own_token = token_from(smtp.inbox("alice@own.test")[-1])
    gmail_token = token_from(smtp.inbox("alice@gmail.com")[-1])
    assert svc.check_reset_token(own_token).username == "alice"
    with pytest.raises(WeakPassword):
        svc.reset_password(own_token, "alice")
    clock.advance(minutes=30)
    assert svc.reset_password(own_token, NEW_PASSWORD).username == "alice"  # still usable
    with pytest.raises(TokenUsed):
        svc.reset_password(own_token, "yet another passphrase")
    with pytest.raises(TokenInvalid):  # the other mail's link died with the reset
        svc.reset_password(gmail_token, "yet another passphrase")
    with pytest.raises(InvalidCredentials):
        svc.login("alice", PASSWORD)
    assert svc.login("alice", NEW_PASSWORD).complete
    (event,) = events(engine, "password.reset")
    assert event.actor == "user:alice"
    assert event.after == {"via": "alice@own.test"}

    svc.request_password_reset("alice@gmail.com")
    late = token_from(smtp.inbox("alice@gmail.com")[-1])
    clock.advance(hours=1, seconds=1)
    with pytest.raises(TokenExpired):
        svc.reset_password(late, "yet another passphrase")


def test_reset_link_dies_when_its_address_is_unverified(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    sign_up_verified(svc, smtp, "alice", "alice@lapsed.test", "alice@gmail.com")
    svc.request_password_reset("alice@lapsed.test")
    token = token_from(smtp.inbox("alice@lapsed.test")[-1])
    unverify(engine, "alice@lapsed.test", clock())  # the cycle got there first
    with pytest.raises(TokenInvalid, match="no longer verified"):
        svc.reset_password(token, NEW_PASSWORD)
    assert svc.login("alice", PASSWORD).complete


def test_reset_requests_are_rate_limited(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    sign_up_verified(svc, smtp, "alice", "alice@gmail.com")
    sign_up_verified(svc, smtp, "bob", "bob@gmail.com")
    smtp.clear()
    for _ in range(4):
        assert svc.request_password_reset("alice", client="192.0.2.1") is RESET_REQUESTED
    assert len(smtp.inbox("alice@gmail.com")) == 3
    assert reset_outcomes(engine) == ["sent", "sent", "sent", "rate_limited"]
    # Naming the account another way does not get around the per-account limit.
    svc.request_password_reset("alice@gmail.com", client="192.0.2.2")
    assert len(smtp.inbox("alice@gmail.com")) == 3
    assert reset_outcomes(engine)[-1] == "rate_limited"
    clock.advance(hours=1, seconds=1)
    svc.request_password_reset("alice", client="192.0.2.1")
    assert len(smtp.inbox("alice@gmail.com")) == 4

    # One client probing many identifiers.
    for number in range(20):
        svc.request_password_reset(f"nobody{number}", client="198.51.100.9")
    svc.request_password_reset("bob", client="198.51.100.9")  # the 21st from that client
    assert smtp.inbox("bob@gmail.com") == []
    assert reset_outcomes(engine)[-1] == "rate_limited"
    svc.request_password_reset("bob", client="198.51.100.10")
    assert len(smtp.inbox("bob@gmail.com")) == 1


def test_reset_takes_the_same_time_whether_or_not_mail_is_sent(
    engine: Engine, smtp: MailServer, clock: Clock
) -> None:
    relaxed = RateLimits(
        reset_per_identifier=Limit(1000, timedelta(hours=1)),
        reset_per_account=Limit(1000, timedelta(hours=1)),
        reset_per_client=Limit(1000, timedelta(hours=1)),
    )
    settings = account_settings(smtp.url, limits=relaxed)
    sender = OutboxSender(engine, SmtpMailer.from_settings(settings), Links.from_settings(settings))
    svc = Accounts(
        AccountService(
            engine, settings, deliver=sender, clock=clock, passwords=Passwords.cheapest()
        )
    )
    account_id = created(svc.sign_up("alice", PASSWORD, "alice@gmail.com"))
    sender.flush()
    svc.verify_email(token_from(smtp.inbox("alice@gmail.com")[0]))

    def timed(identifier: str) -> float:
        started = time.perf_counter()
        svc.request_password_reset(identifier, client="192.0.2.1")
        elapsed = time.perf_counter() - started
        # The mail goes out between requests, not during the next one: here the SMTP
        # server runs in this process, and its thread and the sender's took the GIL from
        # the next request (48 ms against 6 ms on a loaded machine), which production,
        # with its mail server elsewhere, does not see.
        sender.flush()
        return elapsed

    for identifier in ("alice", "nobody"):  # warm up both paths
        timed(identifier)
    known_times: list[float] = []
    unknown_times: list[float] = []
    for _ in range(9):  # in turns, so a busy moment of the machine falls on both
        known_times.append(timed("alice"))
        unknown_times.append(timed("nobody"))
    known, unknown = statistics.median(known_times), statistics.median(unknown_times)
    sender.close()
    assert len(smtp.inbox("alice@gmail.com")) == 1 + 10  # the link, and each reset
    assert known < unknown * 3 + 0.01, (known, unknown)
    assert unknown < known * 3 + 0.01, (known, unknown)
    assert account_id


# ------------------------------------------------------------------- what the pages show


def test_recovery_options_and_security_overview(
    svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    alice = sign_up_verified(svc, smtp, "alice", "alice@lapsed.test")
    overview = svc.security_overview(alice)
    assert overview.advice.enable_2fa
    assert overview.advice.add_well_known_address
    assert not overview.advice.verify_an_address
    assert len(overview.advice.notes) == 2
    assert overview.recovery.by_mail
    assert overview.recovery.verified_addresses == ("alice@lapsed.test",)

    with make_sessionmaker(engine).begin() as session:
        domain = session.get(Domain, "lapsed.test")  # left due by the verification
        assert domain is not None
        domain.last_verdict = "redemption"
        domain.last_reason = "RDAP: status 'redemption period': the registration has lapsed"
        domain.last_checked_at = clock()
    unverify(engine, "alice@lapsed.test", clock())
    overview = svc.security_overview(alice)
    (state,) = overview.addresses
    assert state.status is AddressStatus.UNVERIFIED
    assert state.primary
    assert state.unverify_reason == "redemption"
    assert state.unverify_detail
    assert state.domain_verdict == "redemption"
    assert state.domain_reason
    assert overview.advice.verify_an_address
    assert not overview.advice.add_well_known_address
    options = svc.recovery_options(alice)
    assert not options.by_mail
    assert options.contact_support
    assert "cannot be sent by mail" in options.steps[0]
    assert "contact support" in options.steps[-1]

    setup = svc.begin_totp_setup(alice)
    svc.confirm_totp(alice, pyotp.TOTP(setup.secret).at(clock()))
    options = svc.recovery_options(alice)
    assert options.totp_enabled
    assert options.recovery_codes_left == 10
    assert "recovery codes" in options.steps[1]
    assert not svc.security_overview(alice).advice.enable_2fa

    svc.add_email(alice, "alice@gmail.com")
    svc.verify_email(token_from(smtp.inbox("alice@gmail.com")[-1]))
    overview = svc.security_overview(alice)
    assert not overview.advice.any
    assert [a.status for a in overview.addresses] == [
        AddressStatus.UNVERIFIED,
        AddressStatus.VERIFIED,
    ]


def test_change_password(svc: Accounts, smtp: MailServer, engine: Engine) -> None:
    alice = sign_up_verified(svc, smtp, "alice", "alice@gmail.com")
    svc.request_password_reset("alice")
    pending = token_from(smtp.inbox("alice@gmail.com")[-1])
    with pytest.raises(InvalidCredentials):
        svc.change_password(alice, "wrong password", NEW_PASSWORD)
    with pytest.raises(WeakPassword):
        svc.change_password(alice, PASSWORD, "alice")
    svc.change_password(alice, PASSWORD, NEW_PASSWORD)
    assert svc.login("alice", NEW_PASSWORD).complete
    with pytest.raises(TokenInvalid):  # an open reset link dies with the old password
        svc.reset_password(pending, "yet another passphrase")
    assert [e.actor for e in events(engine, "password.changed")] == ["user:alice"]


def test_mail_failure_does_not_lose_the_account(
    engine: Engine, clock: Clock, smtp: MailServer, closed_port: Callable[[], int]
) -> None:
    down = account_settings(f"smtp://127.0.0.1:{closed_port()}")
    svc = make_service(engine, down, clock=clock)
    signed = svc.sign_up("alice", PASSWORD, "alice@own.test")
    assert smtp.inbox("alice@own.test") == []  # the server was down: the link waits
    up = make_service(engine, replace(down, smtp_url=smtp.url), clock=clock)
    assert signed.email_id is not None
    up.request_reverification(created(signed), signed.email_id)
    assert up.verify_email(token_from(smtp.inbox("alice@own.test")[0])).verified


def test_sign_ups_are_limited_per_client(engine: Engine, smtp: MailServer, clock: Clock) -> None:
    limits = RateLimits(sign_ups_per_client=Limit(2, timedelta(hours=1)))
    svc = make_service(engine, account_settings(smtp.url, limits=limits), clock=clock)
    svc.sign_up("a1", PASSWORD, "a1@own.test", client="192.0.2.1")
    svc.sign_up("a2", PASSWORD, "a2@own.test", client="192.0.2.1")
    with pytest.raises(RateLimited):
        svc.sign_up("a3", PASSWORD, "a3@own.test", client="192.0.2.1")
    svc.sign_up("a3", PASSWORD, "a3@own.test", client="192.0.2.2")
