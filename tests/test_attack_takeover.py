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

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.accounts.domaincheck import CycleDomainChecker
from lapsewatch.accounts.errors import AccountError, InvalidSecondFactor, RateLimited
from lapsewatch.accounts.service import AccountService
from lapsewatch.cycle import run_cycle
from lapsewatch.store import Email, Event, make_sessionmaker
from lapsewatch.store.models import AddressHistory, Domain
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cycle_support import settings_for
from tests.mail_support import (
    Clock,
    MailServer,
    account_settings,
    created,
    make_service,
    token_from,
)
from tests.web_support import WebClient, make_web_app

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
def svc(
    engine: Engine, smtp: MailServer, world: World, clock: Clock, domains: None
) -> AccountService:
    smtp.clear()
    checker = CycleDomainChecker(settings_for(world))
    return make_service(engine, account_settings(smtp.url), clock=clock, checker=checker)


@pytest.fixture
def app(engine: Engine, svc: AccountService, world: World) -> Iterator[TestClient]:
    checks = settings_for(world)
    web = make_web_app(engine, svc, settings=checks, checker=CycleDomainChecker(checks))
    with TestClient(web) as client:
        yield client


def owner_years_ago(svc: AccountService, smtp: MailServer, username: str, address: str) -> int:
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


def attacker_redeems(app: TestClient, smtp: MailServer, address: str) -> None:
    """Whoever now reads the domain's mail posts the newest link, with no session."""
    attacker = WebClient(TestClient(app.app))
    token = token_from(smtp.inbox(address)[-1])
    attacker.get(f"/account/verify-email?token={token}")
    attacker.post("/account/verify-email", {"token": token})


def test_takeover_by_removing_and_re_adding_a_lapsed_address_fails(
    app: TestClient,
    svc: AccountService,
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
    # 4. The link lands in the attacker's mailbox; posting it without a session fails.
    attacker_redeems(app, smtp, VICTIM)
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
    svc: AccountService,
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
    attacker_redeems(app, smtp, "new@victimcorp.test")
    row = email_row(engine, "new@victimcorp.test")
    assert row is not None
    assert not row.verified


def test_resurrection_between_checks_is_refused_at_verification(
    svc: AccountService, smtp: MailServer, world: World, engine: Engine, clock: Clock
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
    svc: AccountService,
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


def _enable_totp(svc: AccountService, account_id: int, clock: Clock) -> tuple[str, ...]:
    import pyotp

    setup = svc.begin_totp_setup(account_id)
    return svc.confirm_totp(account_id, pyotp.TOTP(setup.secret).at(clock())).codes


def test_attack_one_recovery_code_logs_in_once_under_concurrency(
    svc: AccountService, smtp: MailServer, clock: Clock
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
    svc: AccountService, smtp: MailServer, clock: Clock, engine: Engine
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
    svc: AccountService, smtp: MailServer, clock: Clock
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
    svc: AccountService, smtp: MailServer, world: World, engine: Engine, clock: Clock
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
    svc: AccountService, smtp: MailServer, clock: Clock
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
    svc: AccountService, smtp: MailServer, clock: Clock, world: World, engine: Engine
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
    svc: AccountService, smtp: MailServer, clock: Clock, engine: Engine
) -> None:
    """Someone adds another person's address and never verifies it: once the link has
    expired, the real owner can add it (first to verify wins)."""
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
    svc: AccountService,
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
