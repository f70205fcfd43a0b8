"""Squatting on somebody else's address, against the running web app.

An address somebody added but never verified blocks everybody else from adding
it. A squatter who cannot read the mailbox must not be able to keep it: asking
for a new link again and again, or removing and adding it again, holds it no
longer than one link's lifetime from the first adding. After that the real owner
adds it and verifies it (whoever verifies first keeps it). The other way round, a
web user must not take an address away from an account the registry owns (an
import's or an API key's), whatever its state.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.store import Account, Email, Event, make_sessionmaker
from tests.mail_support import (
    Accounts,
    Clock,
    MailServer,
    account_settings,
    make_service,
    token_from,
)
from tests.web_support import WebClient, make_api_key, make_web_app

NOW = datetime.now(UTC).replace(microsecond=0)
TARGET = "real.owner@gmail.com"
IN_USE = "this address is already used by an account"


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def svc(engine: Engine, smtp: MailServer, clock: Clock) -> Accounts:
    smtp.clear()
    return make_service(engine, account_settings(smtp.url), clock=clock)


@pytest.fixture
def app(engine: Engine, svc: Accounts) -> Iterator[TestClient]:
    with TestClient(make_web_app(engine, svc)) as client:
        yield client


def member(app: TestClient, smtp: MailServer, username: str, address: str) -> WebClient:
    """Signed up over the web, verified by the mailed link, signed in: a browser of its own."""
    web = WebClient(TestClient(app.app))
    web.sign_up(username, address)
    token = token_from(smtp.inbox(address)[-1])
    web.get(f"/account/verify-email?token={token}")
    assert f"{address} is verified" in web.post("/account/verify-email", {"token": token}).text
    assert f"Security of {username}" in web.log_in(username).text
    return web


def add(web: WebClient, address: str) -> httpx.Response:
    web.get("/account/security")
    return web.post("/account/emails", {"address": address})


def row(engine: Engine, address: str) -> tuple[int, str, bool] | None:
    """The address's id, the username of the account that has it, and whether verified."""
    with make_sessionmaker(engine)() as session:
        email = session.scalars(select(Email).where(Email.address == address)).one_or_none()
        if email is None:
            return None
        return email.id, email.account.username, email.verified


def links_for(smtp: MailServer, address: str, username: str) -> list[str]:
    """The verification links mailed to ``address`` for ``username``'s account."""
    return [
        token_from(m)
        for m in smtp.inbox(address)
        if m.kind == "verify_email" and f"account {username!r}" in m.body
    ]


def redeem(web: WebClient, token: str) -> httpx.Response:
    web.get(f"/account/verify-email?token={token}")
    return web.post("/account/verify-email", {"token": token})


def the_owner_takes_it_after_the_hold(
    app: TestClient, smtp: MailServer, engine: Engine, owner: WebClient
) -> None:
    """The real owner adds the address and verifies it; the squatter's links are dead."""
    assert "We sent a verification link" in add(owner, TARGET).text
    held = row(engine, TARGET)
    assert held is not None
    assert held[1:] == ("realowner", False)
    (mine,) = links_for(smtp, TARGET, "realowner")
    assert f"{TARGET} is verified" in redeem(owner, mine).text
    assert row(engine, TARGET) == (held[0], "realowner", True)
    # The squatter's newest link died with its row, and the address is not free again.
    late = redeem(WebClient(TestClient(app.app)), links_for(smtp, TARGET, "squatter")[-1])
    assert late.status_code == 400
    assert "This link does not work" in late.text
    with make_sessionmaker(engine)() as session:
        expired = session.scalars(select(Event).where(Event.kind == "email.expired")).one()
        squatter = session.scalars(select(Account).where(Account.username == "squatter")).one()
        assert expired.account_id == squatter.id
        assert expired.before == {"address": TARGET, "verified": False}


def test_attack_squatter_who_keeps_asking_for_links_holds_the_address_one_day_only(
    app: TestClient, svc: Accounts, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    squatter = member(app, smtp, "squatter", "squatter@gmail.com")
    owner = member(app, smtp, "realowner", "realowner@gmail.com")
    assert "We sent a verification link" in add(squatter, TARGET).text
    added = row(engine, TARGET)
    assert added is not None
    assert added[1:] == ("squatter", False)
    ttl = svc.settings.verify_token_ttl
    assert ttl == timedelta(hours=24)
    # Every few hours the squatter asks for a new link; while the first day lasts, the
    # owner is refused (the squatter's link might still be the owner's own).
    for hours in (8, 8, 7):
        clock.advance(hours=hours)
        squatter.get("/account/security")
        asked = squatter.post(f"/account/emails/{added[0]}/verify")
        assert f"We sent a verification link to {TARGET}" in asked.text
        assert IN_USE in add(owner, TARGET).text
        assert row(engine, TARGET) == added
    # A day after the first adding, the newest link (23 hours old) is still open, but
    # asking for links did not extend the hold.
    clock.advance(hours=1, minutes=1)
    the_owner_takes_it_after_the_hold(app, smtp, engine, owner)
    assert IN_USE in add(squatter, TARGET).text


def test_attack_squatter_who_removes_and_adds_the_address_again_holds_it_one_day_only(
    app: TestClient, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    squatter = member(app, smtp, "squatter", "squatter@gmail.com")
    owner = member(app, smtp, "realowner", "realowner@gmail.com")
    assert "We sent a verification link" in add(squatter, TARGET).text
    for _ in range(2):
        clock.advance(hours=11)
        first = row(engine, TARGET)
        assert first is not None
        squatter.get("/account/security")
        assert "was removed" in squatter.post(f"/account/emails/{first[0]}/remove").text
        assert "We sent a verification link" in add(squatter, TARGET).text  # a new row
        assert IN_USE in add(owner, TARGET).text
    clock.advance(hours=2, minutes=1)  # 24 hours after the first adding; the row is 2 h old
    the_owner_takes_it_after_the_hold(app, smtp, engine, owner)


def test_attack_a_web_user_cannot_take_an_address_the_registry_owns(
    app: TestClient, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    """The registry pushed an account whose only address is not verified (yet). No link
    was ever sent for it and weeks pass: a web user still cannot add it (which used to
    delete the registry's row) nor sign up with it."""
    key = make_api_key(engine)
    pushed = app.post(
        "/api/v1/addresses",
        json={
            "addresses": [{"username": "regalice", "address": "alice@reg.test", "verified": False}]
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert pushed.status_code == 200, pushed.text
    assert pushed.json()["emails_added"] == 1
    registry_row = row(engine, "alice@reg.test")
    assert registry_row is not None
    assert registry_row[1:] == ("regalice", False)
    clock.advance(days=30)
    mallory = member(app, smtp, "mallory", "mallory@gmail.com")
    assert IN_USE in add(mallory, "alice@reg.test").text
    assert IN_USE in add(mallory, "ALICE@reg.test").text
    stranger = WebClient(TestClient(app.app))
    assert "Check your mail" in stranger.sign_up("regmallory", "alice@reg.test").text
    assert smtp.inbox("alice@reg.test")[-1].kind == "address_taken"
    assert row(engine, "alice@reg.test") == registry_row
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Account).where(Account.username == "regmallory")).all() == []
        regalice = session.scalars(select(Account).where(Account.username == "regalice")).one()
        assert regalice.owner == "api:registry"
        assert not session.scalars(select(Event).where(Event.kind == "email.expired")).all()
