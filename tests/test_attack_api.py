"""Issue #10 through ``/api/v1``: what a registry's API key can do to other people's accounts.

The app runs (``uvicorn`` on loopback) and is driven over HTTP only: pushes and
webhooks with API keys, sign-up, forgot-password and reset links with a browser.
Mail goes to a real SMTP server (one inbox per address); the domains live in the
local world and lapse while the test runs; the check cycle is the real one. Once a
domain lapses, the inbox of an address on it is read by the attacker.

* Webhooks: a key's webhook hears only of the accounts that key owns (a payload
  names the account and its address: no key may learn which web account, root's
  included, holds a lapsed address).
* A push that unverifies an address revokes the links sent to it: verifying it
  again later does not revive an old reset link.
* H1: a push cannot unverify, re-verify or attach an address of a web account.
* M1: a case variant of an address lapsewatch unverified is that address.
* Usernames: sign-up's rule, through the API (the importer's tests run the CLI).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from lapsewatch.config import Settings
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.store import Account, Email, Event, make_sessionmaker
from lapsewatch.tls import client_context
from lapsewatch.web.webhooks import add_webhook, deliver_webhooks
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cycle_support import settings_for
from tests.mail_support import Accounts, MailServer, account_settings, token_from
from tests.web_support import (
    LOOPBACK,
    FakeDns,
    LiveServer,
    Receiver,
    WebClient,
    install_fake_dns,
    make_admin,
    make_api_key,
    make_service,
    make_web_app,
)

NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = "2021-03-01T00:00:00+00:00"
MALLORY = "mallory@attacker.test"
DOMAINS = ("weborg.test", "rega.test", "regb.test", "carolcorp.test", "lapsed2.test")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def checks(world: World) -> Iterator[Settings]:
    for name in DOMAINS:
        world.set_domain(DomainScenario.make(name, "registered", now=NOW))
    yield settings_for(world)
    for name in DOMAINS:
        world.remove_domain(name)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return install_fake_dns(monkeypatch)


@pytest.fixture
def live(engine: Engine, smtp: MailServer, checks: Settings, dns: FakeDns) -> Iterator[LiveServer]:
    """The app as served, checking domains against the world; its webhooks may reach
    the tests' loopback receivers (the operator's allow-list)."""
    smtp.clear()
    service: Accounts = make_service(
        engine, account_settings(smtp.url), checker=CycleDomainChecker(checks)
    )
    app = make_web_app(
        engine,
        service,
        settings=checks,
        checker=CycleDomainChecker(checks),
        web_settings=LOOPBACK,
    )
    server = LiveServer()
    server.start(app)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------ helpers


def registry(live: LiveServer, key: str) -> httpx.Client:
    """A registry's HTTP client, holding its API key."""
    return httpx.Client(
        base_url=live.url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        verify=client_context("httpcore"),
    )


def item(username: str, address: str, **fields: Any) -> dict[str, Any]:
    """One pushed address: verified long ago unless told otherwise."""
    return {"username": username, "address": address, "verified": True, **fields}


def push(api: httpx.Client, *items: dict[str, Any]) -> dict[str, Any]:
    answer = api.post("/api/v1/addresses", json={"addresses": list(items)})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def rejected(result: dict[str, Any]) -> dict[int, str]:
    return {problem["index"]: problem["message"] for problem in result["rejected"]}


def browser(live: LiveServer) -> WebClient:
    return WebClient(
        httpx.Client(
            base_url=live.url,
            timeout=30,
            follow_redirects=True,
            verify=client_context("httpcore"),
        )
    )


def web_member(live: LiveServer, smtp: MailServer, username: str, address: str) -> WebClient:
    """Signed up on the web app, verified by the mailed link, signed in."""
    web = browser(live)
    web.sign_up(username, address)
    token = token_from(smtp.wait_for(address, 1)[-1])
    web.get(f"/account/verify-email?token={token}")
    assert f"{address} is verified" in web.post("/account/verify-email", {"token": token}).text
    assert f"Security of {username}" in web.log_in(username).text
    return web


def forgot_password(live: LiveServer, identifier: str) -> None:
    web = browser(live)
    web.get("/account/forgot-password")
    assert web.post("/account/forgot-password", {"identifier": identifier}).status_code == 200


def reset_recipients(engine: Engine, count: int) -> set[str]:
    """Wait for ``count`` reset requests to be handled (after the answer, in the
    background): every address a reset was sent to."""
    deadline = time.monotonic() + 10
    while True:
        with make_sessionmaker(engine)() as session:
            done = session.scalars(select(Event).where(Event.kind == "password_reset.requested"))
            recipients = [(e.after or {}).get("recipients", []) for e in done]
        if len(recipients) >= count or time.monotonic() > deadline:
            assert len(recipients) == count, recipients
            return {address for sent in recipients for address in sent}
        time.sleep(0.05)


def resets(smtp: MailServer, address: str) -> list[str]:
    """The reset links mailed to ``address``."""
    return [token_from(m) for m in smtp.inbox(address) if m.kind == "password_reset"]


def lapse(world: World, engine: Engine, checks: Settings, *names: str) -> int:
    """The domains lapse (redemption period) and the check cycle runs: how many
    addresses it unverified."""
    for name in names:
        world.set_domain(DomainScenario.make(name, "redemption", now=NOW))
    return run_cycle(checks, engine, everything=True, now=datetime.now(UTC)).unverified


def state(api: httpx.Client, address: str) -> str:
    answer = api.get(f"/api/v1/addresses/{address}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["state"])


def verified_addresses(engine: Engine, username: str) -> set[str]:
    with make_sessionmaker(engine)() as session:
        return set(
            session.scalars(
                select(Email.address)
                .join(Account, Account.id == Email.account_id)
                .where(Account.username == username, Email.verified.is_(True))
            )
        )


# ---------------------------------------------------------------- webhooks: own events only


def test_attack_a_keys_webhook_hears_only_of_its_own_accounts(
    live: LiveServer, smtp: MailServer, engine: Engine, world: World, checks: Settings
) -> None:
    """Two registries, each with a webhook; a web account (the admin) and each registry's
    account lapse. Each receiver gets its own account's event, and none hears of root."""
    root = web_member(live, smtp, "root", "root@weborg.test")
    make_admin(engine, "root")
    root.enable_2fa()
    keys = {name: make_api_key(engine, name) for name in ("registry-a", "registry-b")}
    with (
        Receiver().running() as hook_a,
        Receiver().running() as hook_b,
        Receiver().running() as operator,
    ):
        apis = {name: registry(live, key) for name, key in keys.items()}
        for name, receiver in (("registry-a", hook_a), ("registry-b", hook_b)):
            made = apis[name].post("/api/v1/webhooks", json={"url": receiver.url})
            assert made.status_code == 201, made.text
        # The operator's own webhook (made on the command line) hears of everything.
        with make_sessionmaker(engine).begin() as session:
            add_webhook(session, operator.url, now=datetime.now(UTC), allow=LOOPBACK.webhook_allow)
        pushed_a = push(apis["registry-a"], item("alice", "alice@rega.test", verified_at=LONG_AGO))
        pushed_b = push(apis["registry-b"], item("bob", "bob@regb.test", verified_at=LONG_AGO))
        assert pushed_a["accounts_created"] == pushed_b["accounts_created"] == 1

        assert lapse(world, engine, checks, "weborg.test", "rega.test", "regb.test") == 3
        summary = deliver_webhooks(engine, allow=LOOPBACK.webhook_allow)
        assert (summary.delivered, summary.failed) == (5, 0)

    def heard(receiver: Receiver) -> set[tuple[str, str]]:
        return {(m.json()["username"], m.json()["address"]) for m in receiver.received}

    assert heard(hook_a) == {("alice", "alice@rega.test")}
    assert heard(hook_b) == {("bob", "bob@regb.test")}
    for message in hook_a.received + hook_b.received:
        assert b"root" not in message.body
    assert heard(operator) == {
        ("alice", "alice@rega.test"),
        ("bob", "bob@regb.test"),
        ("root", "root@weborg.test"),
    }


# ------------------------------------------------------- a push's unverify revokes links


def test_attack_a_reset_link_dies_when_a_push_unverifies_its_address(
    live: LiveServer, smtp: MailServer, engine: Engine
) -> None:
    """The link mailed before a push unverified the address stays dead when a later push
    verifies the address again (perhaps for whoever holds the mailbox now)."""
    api = registry(live, make_api_key(engine))
    address = "carol.registry@gmail.com"
    push(api, item("carol", address, verified_at=LONG_AGO, primary=True))
    forgot_password(live, "carol")
    assert reset_recipients(engine, 1) == {address}
    (link,) = [token_from(m) for m in smtp.wait_for(address, 1)]
    page = browser(live).get(f"/account/reset-password?token={link}")
    assert page.status_code == 200
    assert 'name="password"' in page.text  # the link works (control)

    assert push(api, item("carol", address, verified=False))["emails_updated"] == 1
    later = datetime.now(UTC).isoformat()
    assert push(api, item("carol", address, verified_at=later))["emails_updated"] == 1
    assert state(api, address) == "verified"

    visitor = browser(live)
    page = visitor.get(f"/account/reset-password?token={link}")
    assert page.status_code == 400
    assert "This reset link does not work" in page.text
    assert 'name="password"' not in page.text
    new = "the attacker's new passphrase"
    visitor.get("/account/forgot-password")  # a page with a CSRF token
    posted = visitor.post(
        "/account/reset-password", {"token": link, "password": new, "confirm": new}
    )
    assert posted.status_code == 400
    assert "This reset link does not work" in posted.text
    with make_sessionmaker(engine)() as session:
        account = session.scalars(select(Account).where(Account.username == "carol")).one()
        assert account.password_hash is None  # nobody set a password with the old link


# ----------------------------------------------------------------------- H1 over the API


def test_attack_a_push_cannot_unverify_reverify_or_attach_to_web_accounts(
    live: LiveServer, smtp: MailServer, engine: Engine, world: World, checks: Settings
) -> None:
    """Each line naming a web account, or an address of one, is refused with its reason;
    the key's own line in the same push is stored."""
    web_member(live, smtp, "alice", "alice@gmail.com")
    web_member(live, smtp, "carol", "carol@carolcorp.test")
    assert lapse(world, engine, checks, "carolcorp.test") == 1  # lapsewatch unverified it
    after_unverify = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    api = registry(live, make_api_key(engine))

    result = push(
        api,
        item("alice", "alice@gmail.com", verified=False),  # unverify a web user's address
        item("mallory", "ALICE@gmail.com", verified=False),  # ... under another name
        item("alice", MALLORY, verified_at=after_unverify, primary=True),  # attach
        item("carol", "carol@carolcorp.test", verified_at=after_unverify),  # re-verify
        item("mallory", "Carol@CarolCorp.test", verified_at=after_unverify),  # ... elsewhere
        item("own", "own@gmail.com", verified_at=LONG_AGO),  # the key's own: fine
    )

    refused = rejected(result)
    assert sorted(refused) == [0, 1, 2, 3, 4]
    not_managed = "is not managed by this import (owner: web); nothing changed"
    assert refused[0] == f"account 'alice' {not_managed}"
    assert refused[2] == refused[0]
    assert refused[3] == f"account 'carol' {not_managed}"
    for index in (1, 4):  # refused without telling whose it is
        assert refused[index].endswith(
            "belongs to an account not managed by this import; nothing changed"
        )
        assert "alice'" not in refused[index]
        assert "carol'" not in refused[index]
    assert (result["accounts_created"], result["emails_added"]) == (1, 1)
    assert verified_addresses(engine, "alice") == {"alice@gmail.com"}
    assert verified_addresses(engine, "carol") == set()
    assert verified_addresses(engine, "own") == {"own@gmail.com"}
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Email).where(Email.address == MALLORY)).all() == []

    # And so no reset reaches the attacker, nor the lapsed domain's new owner.
    for identifier in ("alice", "carol", "carol@carolcorp.test", MALLORY):
        forgot_password(live, identifier)
    assert reset_recipients(engine, 4) == {"alice@gmail.com"}
    assert len(smtp.wait_for("alice@gmail.com", 2)) == 2  # the sign-up link, the reset
    assert resets(smtp, MALLORY) == []
    assert resets(smtp, "carol@carolcorp.test") == []


# ------------------------------------------------------------------ M1 over the API


def test_attack_resurrection_by_a_pushed_case_variant_stays_unverified(
    live: LiveServer, smtp: MailServer, engine: Engine, world: World, checks: Settings
) -> None:
    """The repro through the API: ``CTX3@lapsed2.test`` pushed verified (the old date)
    after the cycle unverified ``ctx3@lapsed2.test``."""
    api = registry(live, make_api_key(engine))
    first = push(
        api,
        item("ctx3", "ctx3@lapsed2.test", verified_at=LONG_AGO, primary=True),
        item("ctx3", "ctx3@gmail.com", verified_at=LONG_AGO),
    )
    assert first["emails_added"] == 2
    assert lapse(world, engine, checks, "lapsed2.test") == 1
    assert state(api, "ctx3@lapsed2.test") == "unverified"

    for variant in ("CTX3@lapsed2.test", "Ctx3@LAPSED2.TEST"):
        again = push(api, item("ctx3", variant, verified_at=LONG_AGO, primary=True))
        assert again["rejected"] == []
        assert (again["emails_added"], again["emails_updated"], again["unchanged"]) == (0, 0, 1)
        assert "stays unverified" in again["warnings"][0]["message"]
        assert state(api, variant) == "unverified"
    with make_sessionmaker(engine)() as session:
        rows = session.scalars(select(Email).where(Email.domain == "lapsed2.test")).all()
        assert [(e.address, e.verified) for e in rows] == [("ctx3@lapsed2.test", False)]

    # A reset does not reach the lapsed domain (it goes to the address still verified).
    for identifier in ("ctx3", "CTX3@lapsed2.test", "ctx3@lapsed2.test"):
        forgot_password(live, identifier)
    assert reset_recipients(engine, 3) == {"ctx3@gmail.com"}
    assert len(smtp.wait_for("ctx3@gmail.com", 3)) == 3
    assert len(resets(smtp, "ctx3@gmail.com")) == 3
    assert smtp.inbox("ctx3@lapsed2.test") == []


# ----------------------------------------------------------------- usernames over the API

LOOKALIKES = [
    "r\u043e\u043et",  # Cyrillic o's
    "ro\u200bot",  # zero-width space
    "root\u200d",  # zero-width joiner
    "\u202eroot",  # right-to-left override
    "\u200froot",  # right-to-left mark
    "root ",
    " root",
]


def test_attack_pushed_usernames_follow_the_sign_up_rule(
    live: LiveServer, smtp: MailServer, engine: Engine
) -> None:
    """Look-alikes of ``root`` are refused as usernames; case and width variants are root
    itself (a web account: refused); a key's own account is one account in any case."""
    web_member(live, smtp, "root", "root@gmail.com")
    api = registry(live, make_api_key(engine))

    lookalikes = push(api, *(item(name, MALLORY, primary=True) for name in LOOKALIKES))
    refused = rejected(lookalikes)
    assert sorted(refused) == list(range(len(LOOKALIKES)))
    assert all(message.startswith("username ") for message in refused.values()), refused

    variants = ["ROOT", "Root", "\uff52\uff4f\uff4f\uff54"]  # the last one full-width
    same = push(api, *(item(name, MALLORY, primary=True) for name in variants))
    root_refused = "account 'root' is not managed by this import (owner: web); nothing changed"
    assert rejected(same) == dict.fromkeys(range(len(variants)), root_refused)
    with make_sessionmaker(engine)() as session:
        assert list(session.scalars(select(Account.username))) == ["root"]
        assert session.scalars(select(Email).where(Email.address == MALLORY)).all() == []

    own = push(
        api,
        item("Erin", "erin@gmail.com", primary=True),
        item("ERIN", "erin.two@gmail.com"),
        item("\uff45\uff52\uff49\uff4e", "erin.three@gmail.com"),  # full-width
    )
    assert (own["accounts_created"], own["emails_added"], own["rejected"]) == (1, 3, [])
    assert verified_addresses(engine, "Erin") == {
        "erin@gmail.com",
        "erin.two@gmail.com",
        "erin.three@gmail.com",
    }
    forgot_password(live, "root")
    assert reset_recipients(engine, 1) == {"root@gmail.com"}
    assert len(smtp.wait_for("root@gmail.com", 2)) == 2  # the sign-up link, then the reset
    assert smtp.inbox(MALLORY) == []
