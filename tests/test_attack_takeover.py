"""Takeover through a lapsed, then re-registered domain, against the running web app.

The world's domains change state while the test runs; mail goes to a real SMTP
server where every address has its own inbox. Once a domain lapses, the inbox of
an address on it belongs to the attacker, who holds no session of the victim.

* H2: the owner removes the unverified address and adds it again (or adds a new
  address on that domain): the link goes to the attacker's mailbox and must not
  verify anything without the owner's session.
* A domain re-registered between two checks (never seen lapsed by the store): a
  registration date newer than the one the store saw is refused at verification.
* M1: a case variant of an unverified address is the same address.
* M4 / M5: concurrency buys no extra recovery-code logins and no extra guesses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.accounts.errors import AccountError, InvalidSecondFactor, RateLimited
from lapsewatch.accounts.tokens import TokenKind
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.apply import apply_result
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.cycle.due import DueDomain
from lapsewatch.schedule import Policy
from lapsewatch.store import Email, Event, make_sessionmaker
from lapsewatch.store.models import AddressHistory, Domain, Token
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cycle_support import settings_for
from tests.mail_support import (
    Accounts,
    Clock,
    MailServer,
    account_settings,
    created,
    make_service,
    token_from,
)
from tests.web_support import LiveServer, WebClient, csrf_of, make_web_app

NOW = datetime.now(UTC).replace(microsecond=0)
YEARS_AGO = NOW - timedelta(days=3 * 365)
PASSWORD = "the owner's long passphrase"
VICTIM = "v2@victimcorp.test"
SPARE = "owner@gmail.com"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def domains(world: World) -> Iterator[None]:
    for name in ("victimcorp.test", "quietcorp.test"):
        world.set_domain(DomainScenario.make(name, "registered", now=NOW))
    yield
    for name in ("victimcorp.test", "quietcorp.test"):
        world.remove_domain(name)


@pytest.fixture
def clock() -> Clock:
    return Clock(YEARS_AGO)


@pytest.fixture
def svc(engine: Engine, smtp: MailServer, world: World, clock: Clock, domains: None) -> Accounts:
    smtp.clear()
    checker = CycleDomainChecker(settings_for(world))
    return make_service(engine, account_settings(smtp.url), clock=clock, checker=checker)


@pytest.fixture
def app(engine: Engine, svc: Accounts, world: World) -> Iterator[TestClient]:
    checks = settings_for(world)
    web = make_web_app(engine, svc, settings=checks, checker=CycleDomainChecker(checks))
    with TestClient(web) as client:
        yield client


def owner_years_ago(svc: Accounts, smtp: MailServer, username: str, address: str) -> int:
    """An owner with ``address`` (verified while the domain was theirs) and a spare address."""
    account_id = created(svc.sign_up(username, PASSWORD, address))
    assert svc.verify_email(token_from(smtp.inbox(address)[-1])).verified
    spare = SPARE if username == "victim" else f"{username}@gmail.com"
    added = svc.add_email(account_id, spare)
    assert svc.verify_email(token_from(smtp.inbox(spare)[-1])).verified
    svc.set_primary(account_id, added.email_id)  # the custom domain can then be removed
    return account_id


def email_row(engine: Engine, address: str) -> Email | None:
    with make_sessionmaker(engine)() as session:
        return session.scalars(select(Email).where(Email.address == address)).one_or_none()


def events(engine: Engine, kind: str) -> list[Event]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def resets_to(smtp: MailServer, address: str) -> int:
    return sum(m.kind == "password_reset" for m in smtp.inbox(address))


def logged_in(app: TestClient, username: str) -> WebClient:
    client = WebClient(app)
    response = client.log_in(username, PASSWORD)
    assert response.status_code in (200, 303), response.text
    assert client.get("/account/security").status_code == 200
    return client


def attacker_redeems(app: TestClient, smtp: MailServer, address: str) -> httpx.Response:
    """Whoever now reads the domain's mail posts the newest link, with no session."""
    attacker = WebClient(TestClient(app.app))
    token = token_from(smtp.inbox(address)[-1])
    attacker.get(f"/account/verify-email?token={token}")
    return attacker.post("/account/verify-email", {"token": token})


def assert_login_bound(smtp: MailServer, engine: Engine, address: str, username: str) -> None:
    """The newest link to ``address`` is the login-bound kind: its mail says so and
    the only open verification link of that address is a re-verification one."""
    mail = smtp.inbox(address)[-1]
    assert mail.kind == "verify_email"
    assert f"only while you are signed in as {username!r}" in mail.body
    with make_sessionmaker(engine)() as session:
        row = session.scalars(select(Email).where(Email.address == address)).one()
        kinds = session.scalars(
            select(Token.kind).where(Token.email_id == row.id, Token.used_at.is_(None))
        ).all()
    assert kinds == [TokenKind.REVERIFY_EMAIL.value]


def assert_sign_in_first(response: httpx.Response) -> None:
    """The app's refusal of a login-bound link posted without its owner's session."""
    assert response.status_code == 403, response.text
    assert "Sign in first" in response.text
    assert "sign in to the account this address belongs to" in response.text


def test_takeover_by_removing_and_re_adding_a_lapsed_address_fails(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    owner_years_ago(svc, smtp, "victim", VICTIM)
    clock.now = NOW
    # 1. The domain lapses and the cycle unverifies the address.
    world.set_domain(DomainScenario.make("victimcorp.test", "available", now=NOW))
    assert run_cycle(settings_for(world), engine, now=NOW).unverified == 1
    # 2. The attacker registers it again: healthy-looking, registered an hour ago.
    world.set_domain(
        DomainScenario.make("victimcorp.test", "registered", now=NOW, registered="-1h")
    )
    # 3. The owner, logged in, removes the unverified address and adds it again.
    owner = logged_in(app, "victim")
    old = email_row(engine, VICTIM)
    assert old is not None
    assert not old.verified
    owner.get("/account/security")
    owner.post(f"/account/emails/{old.id}/remove", {"password": PASSWORD})
    assert email_row(engine, VICTIM) is None
    owner.get("/account/security")
    owner.post("/account/emails", {"address": VICTIM, "password": PASSWORD})
    assert email_row(engine, VICTIM) is not None
    # 4. The link lands in the attacker's mailbox, but it is the login-bound kind:
    # posting it without the owner's session is refused before anything is checked.
    assert_login_bound(smtp, engine, VICTIM, "victim")
    assert_sign_in_first(attacker_redeems(app, smtp, VICTIM))
    again = email_row(engine, VICTIM)
    assert again is not None
    assert not again.verified
    # 5. So the reset never goes there.
    before = resets_to(smtp, VICTIM)
    app.get("/account/forgot-password")
    svc.request_password_reset("victim")
    assert resets_to(smtp, VICTIM) == before
    with make_sessionmaker(engine)() as session:
        assert session.get(AddressHistory, VICTIM) is not None  # kept across the removal


def test_a_never_verified_address_on_a_re_registered_domain_needs_the_session(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    owner_years_ago(svc, smtp, "victim", VICTIM)
    clock.now = NOW
    world.set_domain(DomainScenario.make("victimcorp.test", "pending_delete", now=NOW))
    run_cycle(settings_for(world), engine, now=NOW)
    world.set_domain(
        DomainScenario.make("victimcorp.test", "registered", now=NOW, registered="-1h")
    )
    owner = logged_in(app, "victim")
    owner.get("/account/security")
    owner.post("/account/emails", {"address": "new@victimcorp.test", "password": PASSWORD})
    assert email_row(engine, "new@victimcorp.test") is not None
    # A new address on a domain once found dangerous gets the login-bound link only.
    assert_login_bound(smtp, engine, "new@victimcorp.test", "victim")
    assert_sign_in_first(attacker_redeems(app, smtp, "new@victimcorp.test"))
    row = email_row(engine, "new@victimcorp.test")
    assert row is not None
    assert not row.verified


RACE_LATENCY = 1.5
"""Seconds each answer of the slow world takes: the check at verification then lasts
about two of them (RDAP and DNS together, then Fastly), the attacker's window."""


def _poll(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_attack_reset_asked_during_the_check_at_verification_reaches_nobody(
    engine: Engine, smtp: MailServer
) -> None:
    """H2, the race: whoever reads the re-registered domain's mail posts the plain link
    to the running app and, while the registry takes its time to answer the check that
    follows, asks that app for a password reset of the address. The address must stay
    unverified until the check's answer is in, so no reset reaches that mailbox (the
    owner's other, verified address hears of the request instead)."""
    smtp.clear()
    target = "me@quietcorp.test"
    with World(demo_scenario(now=NOW), latency=RACE_LATENCY) as slow:
        slow.set_domain(DomainScenario.make("quietcorp.test", "registered", now=NOW))
        checks = settings_for(slow, LAPSEWATCH_TIMEOUT="10")
        clock = Clock(NOW - timedelta(days=400))
        svc = make_service(
            engine, account_settings(smtp.url), clock=clock, checker=CycleDomainChecker(checks)
        )
        # The owner added the address while the domain was theirs and never verified it.
        account_id = created(svc.sign_up("fresh", PASSWORD, target))
        spare = svc.add_email(account_id, "fresh@gmail.com")
        assert svc.verify_email(token_from(smtp.inbox("fresh@gmail.com")[-1])).verified
        svc.set_primary(account_id, spare.email_id)
        # The domain lapses and the attacker registers it (an hour ago, while the test runs).
        clock.now = NOW
        slow.set_domain(
            DomainScenario.make("quietcorp.test", "registered", now=NOW, registered="-1h")
        )
        row = email_row(engine, target)
        assert row is not None
        svc.request_reverification(account_id, row.id)  # the owner asks for a new link
        link = smtp.inbox(target)[-1]
        assert "signed in" not in link.body  # a plain link: nothing was known to be wrong
        token = token_from(link)
        live = LiveServer()
        live.start(make_web_app(engine, svc, settings=checks, checker=CycleDomainChecker(checks)))
        try:
            with (
                httpx.Client(base_url=live.url, timeout=30) as verifier,
                httpx.Client(base_url=live.url, timeout=30) as resetter,
                ThreadPoolExecutor(1) as pool,
            ):
                page = verifier.get(f"/account/verify-email?token={token}")
                verifying = pool.submit(
                    verifier.post,
                    "/account/verify-email",
                    data={"token": token, "csrf_token": csrf_of(page.text)},
                )
                # The registry has been asked about the domain: the check is under way.
                _poll(
                    lambda: slow.rdap_requests["quietcorp.test"] or verifying.done(),
                    "the check at verification",
                )
                assert not verifying.done(), verifying.result().text
                page = resetter.get("/account/forgot-password")
                asked = resetter.post(
                    "/account/forgot-password",
                    data={"identifier": target, "csrf_token": csrf_of(page.text)},
                )
                assert asked.status_code == 200
                _poll(lambda: events(engine, "password_reset.requested"), "the reset request")
                assert not verifying.done(), "the check ended first: the race was not run"
                verified = verifying.result()
        finally:
            live.stop()
    assert verified.status_code == 200, verified.text
    (requested,) = events(engine, "password_reset.requested")
    assert requested.after is not None
    recipients = requested.after["recipients"]
    assert target not in recipients, "the reset went to the new owner of the domain"
    assert recipients == ["fresh@gmail.com"]
    _poll(lambda: resets_to(smtp, "fresh@gmail.com"), "the reset mail to the owner")
    assert resets_to(smtp, target) == 0
    after = email_row(engine, target)
    assert after is not None
    assert not after.verified
    assert after.unverify_reason == "reregistered"


def test_resurrection_between_checks_is_refused_at_verification(
    svc: Accounts, smtp: MailServer, world: World, engine: Engine, clock: Clock
) -> None:
    """The store saw the domain registered years ago; it lapsed and was bought again
    between two checks, so the store never saw it dangerous. A plain link then reaches
    the new owner, but the registration date newer than the one seen refuses it."""
    first = owner_years_ago(svc, smtp, "former", "boss@quietcorp.test")
    with make_sessionmaker(engine)() as session:
        seen = session.get(Domain, "quietcorp.test")
        assert seen is not None
        assert seen.registered_at is not None
        assert seen.dangerous_at is None
    # The former owner leaves the address (the domain row and its history stay).
    with make_sessionmaker(engine)() as session:
        old = session.scalars(select(Email).where(Email.address == "boss@quietcorp.test")).one()
        old_id = old.id
    svc.remove_email(first, old_id)
    clock.now = NOW
    world.set_domain(DomainScenario.make("quietcorp.test", "registered", now=NOW, registered="-1h"))
    second = created(svc.sign_up("newcomer", PASSWORD, "boss@quietcorp.test"))
    link = smtp.inbox("boss@quietcorp.test")[-1]
    assert "signed in" not in link.body  # a plain link: nothing was known to be wrong
    outcome = svc.verify_email(token_from(link))
    assert not outcome.verified
    row = email_row(engine, "boss@quietcorp.test")
    assert row is not None
    assert not row.verified
    assert row.unverify_reason == "reregistered"
    (refused,) = events(engine, "email.verification_refused")
    assert refused.account_id == second
    assert "registered again" in (refused.reason or "")


def test_attack_case_variant_of_an_unverified_address_is_the_same_address(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    owner_years_ago(svc, smtp, "victim", VICTIM)
    clock.now = NOW
    world.set_domain(DomainScenario.make("victimcorp.test", "redemption", now=NOW))
    assert run_cycle(settings_for(world), engine, now=NOW).unverified == 1
    smtp.clear()
    # Nobody can add the upper-case variant as a new, separate address ...
    other = created(svc.sign_up("someone", PASSWORD, "someone@gmail.com"))
    with pytest.raises(AccountError):
        svc.add_email(other, VICTIM.upper())
    # ... nor sign up with it; and a reset named by it goes nowhere on that domain.
    assert svc.sign_up("someone2", PASSWORD, VICTIM.upper()).account_id is None
    svc.request_password_reset(VICTIM.upper())
    assert resets_to(smtp, VICTIM) == 0
    assert resets_to(smtp, VICTIM.upper()) == 0


def _enable_totp(svc: Accounts, account_id: int, clock: Clock) -> tuple[str, ...]:
    import pyotp

    setup = svc.begin_totp_setup(account_id)
    return svc.confirm_totp(account_id, pyotp.TOTP(setup.secret).at(clock())).codes


def test_attack_one_recovery_code_logs_in_once_under_concurrency(
    svc: Accounts, smtp: MailServer, clock: Clock
) -> None:
    clock.now = NOW
    account_id = created(svc.sign_up("racer", PASSWORD, "racer@gmail.com"))
    codes = _enable_totp(svc, account_id, clock)

    def attempt(_: int) -> str:
        try:
            svc.complete_login(account_id, recovery_code=codes[0])
        except InvalidSecondFactor:
            return "refused"
        except RateLimited:
            return "limited"
        return "in"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    assert outcomes.count("in") == 1, outcomes


def test_attack_concurrent_guesses_stay_under_the_login_limit(
    svc: Accounts, smtp: MailServer, clock: Clock, engine: Engine
) -> None:
    clock.now = NOW
    created(svc.sign_up("target", PASSWORD, "target@gmail.com"))
    checked = 0

    def guess(n: int) -> str:
        try:
            svc.login("target", f"wrong guess number {n}")
        except RateLimited:
            return "limited"
        except AccountError:
            return "checked"
        return "in"

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(guess, range(30)))
    checked = outcomes.count("checked")
    limit = svc.settings.limits.login_per_username.count
    assert checked <= limit, outcomes
    assert outcomes.count("limited") >= 30 - limit


def test_attack_wrong_passwords_do_not_lock_out_an_account_with_2fa(
    svc: Accounts, smtp: MailServer, clock: Clock
) -> None:
    """A hard block on the name would lock its owner out; the second factor guards it."""
    clock.now = NOW
    account_id = created(svc.sign_up("guarded", PASSWORD, "guarded@gmail.com"))
    _enable_totp(svc, account_id, clock)
    for n in range(svc.settings.limits.login_per_username.count + 2):
        with pytest.raises(AccountError):
            svc.login("guarded", f"attacker guess {n}", client=f"198.51.100.{n}")
    assert not svc.login("guarded", PASSWORD, client="192.0.2.7").complete  # asks the code


def test_attack_reset_links_die_when_their_address_is_unverified(
    svc: Accounts, smtp: MailServer, world: World, engine: Engine, clock: Clock
) -> None:
    owner_years_ago(svc, smtp, "victim", VICTIM)
    clock.now = NOW
    svc.request_password_reset(VICTIM)
    link = token_from(smtp.inbox(VICTIM)[-1])
    assert svc.check_reset_token(link).username == "victim"
    world.set_domain(DomainScenario.make("victimcorp.test", "redemption", now=NOW))
    run_cycle(settings_for(world), engine, now=NOW)
    with pytest.raises(AccountError):
        svc.check_reset_token(link)
    with pytest.raises(AccountError):
        svc.reset_password(link, "the attacker's new passphrase")


def test_attack_the_code_that_confirms_2fa_cannot_log_in_again(
    svc: Accounts, smtp: MailServer, clock: Clock
) -> None:
    import pyotp

    clock.now = NOW
    account_id = created(svc.sign_up("shoulder", PASSWORD, "shoulder@gmail.com"))
    setup = svc.begin_totp_setup(account_id)
    code = pyotp.TOTP(setup.secret).at(clock())
    svc.confirm_totp(account_id, code)
    with pytest.raises(InvalidSecondFactor):  # seen over a shoulder at set-up, same step
        svc.login("shoulder", PASSWORD, totp_code=code)


def test_attack_a_stolen_session_cannot_change_things_silently(
    svc: Accounts, smtp: MailServer, clock: Clock, world: World, engine: Engine
) -> None:
    """Whatever a session changes that guards the account is mailed to every verified
    address, so the owner hears of an attacker holding their cookie."""
    account_id = owner_years_ago(svc, smtp, "victim", VICTIM)
    clock.now = NOW
    smtp.clear()
    added = svc.add_email(account_id, "mallory@gmail.com")
    svc.verify_email(token_from(smtp.inbox("mallory@gmail.com")[-1]))
    svc.set_primary(account_id, added.email_id)
    victim = email_row(engine, VICTIM)
    assert victim is not None
    svc.remove_email(account_id, victim.id)
    svc.begin_totp_setup(account_id)
    import pyotp

    with make_sessionmaker(engine)() as session:
        from lapsewatch.store.models import Account

        account = session.get(Account, account_id)
        assert account is not None
        secret = account.totp_pending_secret
    assert secret is not None
    svc.confirm_totp(account_id, pyotp.TOTP(secret).at(clock()))
    told = [m.subject for m in smtp.inbox(SPARE) if m.kind == "security_change"]
    assert any("mallory@gmail.com was added" in s for s in told)
    assert any("became the primary address" in s for s in told)
    assert any(f"{VICTIM} was removed" in s for s in told)
    assert any("two-factor authentication was turned on" in s for s in told)
    # The removed address hears of its own removal too.
    assert any(m.kind == "security_change" for m in smtp.inbox(VICTIM))


def test_attack_an_unverified_squat_on_an_address_expires(
    svc: Accounts, smtp: MailServer, clock: Clock, engine: Engine
) -> None:
    """Someone adds another person's address and never verifies it: a day (a link's
    lifetime) after that adding, the real owner can add it (first to verify wins).
    Over HTTP, and with links asked for again: tests/test_attack_squat.py."""
    clock.now = NOW
    squatter = created(svc.sign_up("squatter", PASSWORD, "squatter@gmail.com"))
    svc.add_email(squatter, "real.owner@gmail.com")
    owner = created(svc.sign_up("realowner", PASSWORD, "realowner@gmail.com"))
    with pytest.raises(AccountError):  # while the squatter's link still works
        svc.add_email(owner, "real.owner@gmail.com")
    clock.advance(hours=25)
    svc.add_email(owner, "real.owner@gmail.com")
    row = email_row(engine, "real.owner@gmail.com")
    assert row is not None
    assert row.account_id == owner
    assert events(engine, "email.expired")


def test_resurrection_after_an_address_was_added_but_never_verified_is_refused(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    """The owner added the address while the domain was theirs and never used the first
    link; the store never checked the domain (nothing verified on it). It lapsed and was
    registered again; a new plain link reaches the attacker, who redeems it without a
    session: the registration is newer than the moment the address was added."""
    clock.now = NOW - timedelta(days=400)
    account_id = created(svc.sign_up("fresh", PASSWORD, "me@quietcorp.test"))
    spare = svc.add_email(account_id, "fresh@gmail.com")
    svc.verify_email(token_from(smtp.inbox("fresh@gmail.com")[-1]))
    svc.set_primary(account_id, spare.email_id)
    clock.now = NOW
    world.set_domain(DomainScenario.make("quietcorp.test", "registered", now=NOW, registered="-1h"))
    row = email_row(engine, "me@quietcorp.test")
    assert row is not None
    svc.request_reverification(account_id, row.id)
    link = smtp.inbox("me@quietcorp.test")[-1]
    attacker_redeems(app, smtp, "me@quietcorp.test")
    assert "signed in" not in link.body  # a plain link: nothing was known to be wrong
    after = email_row(engine, "me@quietcorp.test")
    assert after is not None
    assert not after.verified
    assert after.unverify_reason == "reregistered"
    before = resets_to(smtp, "me@quietcorp.test")
    svc.request_password_reset("me@quietcorp.test")
    assert resets_to(smtp, "me@quietcorp.test") == before


def test_attack_plain_link_during_a_registry_outage_verifies_nothing(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    """The domain was re-registered between two checks, and its registry does not
    answer when the new owner posts a plain link: with a registration date known but
    none to compare it with, nothing is verified, and the link works once the
    registry answers again (and then it is refused as a re-registration)."""
    first = owner_years_ago(svc, smtp, "former", "boss@quietcorp.test")
    with make_sessionmaker(engine)() as session:
        old = session.scalars(select(Email).where(Email.address == "boss@quietcorp.test")).one()
        old_id = old.id
    svc.remove_email(first, old_id)
    clock.now = NOW
    world.set_domain(
        DomainScenario.make("quietcorp.test", "registered", now=NOW, registered="-1h", rdap="500")
    )
    created(svc.sign_up("newcomer", PASSWORD, "boss@quietcorp.test"))
    during = attacker_redeems(app, smtp, "boss@quietcorp.test")
    assert during.status_code == 503, during.text
    assert "did not answer" in during.text
    row = email_row(engine, "boss@quietcorp.test")
    assert row is not None
    assert not row.verified
    assert resets_to(smtp, "boss@quietcorp.test") == 0
    svc.request_password_reset("newcomer")
    assert resets_to(smtp, "boss@quietcorp.test") == 0
    # The registry is back: the same link is redeemed now, and refused for what it shows.
    world.set_domain(DomainScenario.make("quietcorp.test", "registered", now=NOW, registered="-1h"))
    after = attacker_redeems(app, smtp, "boss@quietcorp.test")
    assert after.status_code == 200, after.text
    row = email_row(engine, "boss@quietcorp.test")
    assert row is not None
    assert not row.verified
    assert row.unverify_reason == "reregistered"


def test_attack_plain_link_on_a_known_domain_that_lapsed_is_applied_not_deferred(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    """A dangerous verdict needs no registration date: the link is redeemed, the lapse
    applied in the same transaction, and the address ends unverified (no 503)."""
    first = owner_years_ago(svc, smtp, "former", "boss@quietcorp.test")
    with make_sessionmaker(engine)() as session:
        old = session.scalars(select(Email).where(Email.address == "boss@quietcorp.test")).one()
        old_id = old.id
    svc.remove_email(first, old_id)
    clock.now = NOW
    world.set_domain(DomainScenario.make("quietcorp.test", "available", now=NOW))
    created(svc.sign_up("newcomer", PASSWORD, "boss@quietcorp.test"))
    response = attacker_redeems(app, smtp, "boss@quietcorp.test")
    assert response.status_code == 200, response.text
    row = email_row(engine, "boss@quietcorp.test")
    assert row is not None
    assert not row.verified
    assert row.unverify_reason == "available"
    assert resets_to(smtp, "boss@quietcorp.test") == 0


def _plain_link_back_on_a_re_registered_domain(
    svc: Accounts, smtp: MailServer, world: World, engine: Engine, clock: Clock
) -> int:
    """'former' verified boss@ years ago and removed it while all was well (no history);
    the domain is registered again; former adds the address back and gets a plain link,
    which lands in the new owner's mailbox."""
    former = owner_years_ago(svc, smtp, "former", "boss@quietcorp.test")
    with make_sessionmaker(engine)() as session:
        old = session.scalars(select(Email).where(Email.address == "boss@quietcorp.test")).one()
        old_id = old.id
    svc.remove_email(former, old_id)
    clock.now = NOW
    world.set_domain(DomainScenario.make("quietcorp.test", "registered", now=NOW, registered="-1h"))
    svc.add_email(former, "boss@quietcorp.test")
    assert "signed in" not in smtp.inbox("boss@quietcorp.test")[-1].body  # a plain link
    return former


def _boss_stays_unverified(svc: Accounts, smtp: MailServer, engine: Engine) -> None:
    row = email_row(engine, "boss@quietcorp.test")
    assert row is not None
    assert not row.verified
    svc.request_password_reset("former")
    assert resets_to(smtp, "boss@quietcorp.test") == 0


def test_attack_a_decoy_verification_cannot_launder_the_registration_date(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    """The new owner signs up a decoy address on the domain and redeems its link: it is
    refused as a re-registration, and the check stores the new registration date. The
    victim's plain link, posted next, would then compare the new date with itself; the
    domain is marked as changed hands, so the plain link is refused instead."""
    _plain_link_back_on_a_re_registered_domain(svc, smtp, world, engine, clock)
    created(svc.sign_up("mallory", PASSWORD, "decoy@quietcorp.test"))
    attacker_redeems(app, smtp, "decoy@quietcorp.test")
    decoy = email_row(engine, "decoy@quietcorp.test")
    assert decoy is not None
    assert not decoy.verified
    refused = attacker_redeems(app, smtp, "boss@quietcorp.test")
    assert refused.status_code == 400, refused.text
    assert "changed hands" in refused.text
    _boss_stays_unverified(svc, smtp, engine)


def test_attack_a_cycle_run_cannot_launder_the_registration_date(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    """A colleague's verified address keeps the domain watched; the cycle runs between
    the plain link's sending and its redemption, catches the re-registration and stores
    the new date. The plain link must not verify boss@ afterwards."""
    owner_years_ago(svc, smtp, "colleague", "bob@quietcorp.test")
    _plain_link_back_on_a_re_registered_domain(svc, smtp, world, engine, clock)
    assert run_cycle(settings_for(world), engine, now=NOW).unverified == 1  # bob@
    refused = attacker_redeems(app, smtp, "boss@quietcorp.test")
    assert refused.status_code == 400, refused.text
    _boss_stays_unverified(svc, smtp, engine)


def test_attack_a_check_without_a_verified_address_still_marks_the_new_registration(
    app: TestClient,
    svc: Accounts,
    smtp: MailServer,
    world: World,
    engine: Engine,
    clock: Clock,
) -> None:
    """An admin's check-now of a domain with no verified address decides without a
    verification date to compare with (``registered``), but the registration date moved
    on from the one stored: the domain is marked, and the plain link dies."""
    _plain_link_back_on_a_re_registered_domain(svc, smtp, world, engine, clock)
    result = CycleDomainChecker(settings_for(world)).check(
        DueDomain("quietcorp.test", None), now=NOW
    )
    with make_sessionmaker(engine).begin() as session:
        apply_result(session, result, policy=Policy())
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "quietcorp.test")
        assert domain is not None
        assert domain.dangerous_at is not None
        assert domain.dangerous_verdict == "reregistered"
    refused = attacker_redeems(app, smtp, "boss@quietcorp.test")
    assert refused.status_code == 400, refused.text
    _boss_stays_unverified(svc, smtp, engine)
