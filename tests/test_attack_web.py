"""Issue #10, the web side: each finding replayed against the running app over HTTP
(``TestClient``, or uvicorn on loopback where the wire matters), with a real SMTP
server where mail matters. Every test here failed on the code before its fix.

No test sends traffic anywhere but loopback: webhook hosts are resolved by a fake
(``FakeDns``), and a refused address is refused before any connection is tried.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from lapsewatch.accounts.results import RESET_REQUESTED
from lapsewatch.store import Account, Email, Event, make_sessionmaker
from lapsewatch.store.models import Webhook, WebhookDelivery
from lapsewatch.web.config import DEFAULT_MAX_BODY_BYTES, WebSettings
from lapsewatch.web.security import SESSION_MAX_AGE
from lapsewatch.web.webhooks import InvalidWebhookUrl, add_webhook, deliver_webhooks
from tests.mail_support import (
    Accounts,
    Clock,
    MailServer,
    account_settings,
    created,
    token_from,
)
from tests.web_support import (
    LOOPBACK,
    PASSWORD,
    PUBLIC_IP,
    FakeDns,
    LiveServer,
    Receiver,
    WebClient,
    csrf_of,
    install_fake_dns,
    make_admin,
    make_api_key,
    make_service,
    make_web_app,
)

VICTIM = "victim@victim.test"
MALLORY = "mallory@attacker.test"
PUSH_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    return install_fake_dns(monkeypatch)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC))


@pytest.fixture
def service(engine: Engine, smtp: MailServer) -> Accounts:
    smtp.clear()
    return make_service(engine, account_settings(smtp.url))


@pytest.fixture
def app(engine: Engine, service: Accounts, clock: Clock) -> FastAPI:
    """The app with its default (safe) settings, but a smaller push limit to keep the
    oversized bodies small; the web clock (re-authentication) is the test's."""
    return make_web_app(
        engine, service, clock=clock, web_settings=WebSettings(max_push_bytes=PUSH_LIMIT)
    )


@pytest.fixture
def app_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def browser(app_client: TestClient) -> WebClient:
    """A browser of its own (its own cookies) on the app."""
    return WebClient(TestClient(app_client.app))


def member(app_client: TestClient, smtp: MailServer, username: str, address: str) -> WebClient:
    """Signed up, verified by the mailed link, signed in."""
    web = browser(app_client)
    web.sign_up(username, address)
    token = token_from(smtp.inbox(address)[-1])
    web.get(f"/account/verify-email?token={token}")
    assert f"{address} is verified" in web.post("/account/verify-email", {"token": token}).text
    assert f"Security of {username}" in web.log_in(username).text
    return web


def copy_session(app_client: TestClient, victim: WebClient) -> WebClient:
    """The attacker's browser, holding a copy of the victim's session cookie."""
    thief = browser(app_client)
    cookie = victim.http.cookies.get("lapsewatch_session")
    assert cookie
    thief.http.cookies.set("lapsewatch_session", cookie)
    return thief


def signed_in(web: WebClient, username: str) -> bool:
    return f"Security of {username}" in web.get("/account/security").text


def _emails(engine: Engine) -> dict[str, Email]:
    with make_sessionmaker(engine)() as session:
        return {e.address: e for e in session.scalars(select(Email))}


# ----------------------------------------------------------------- H1: push onto an admin


def test_attack_api_push_cannot_take_over_a_web_admin(
    app_client: TestClient, smtp: MailServer, engine: Engine
) -> None:
    """The full repro: a registry key pushes the attacker's address as the verified
    primary of the web admin ``root``, then asks for root's password reset."""
    root = member(app_client, smtp, "root", "root@gmail.com")
    make_admin(engine, "root")
    root.enable_2fa()
    key = make_api_key(engine, "registry")
    now = datetime.now(UTC).isoformat()
    push = app_client.post(
        "/api/v1/addresses",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "addresses": [
                {
                    "username": "root",
                    "address": MALLORY,
                    "verified": True,
                    "verified_at": now,
                    "primary": True,
                }
            ]
        },
    )
    assert push.status_code == 200
    result = push.json()
    assert [p["index"] for p in result["rejected"]] == [0]  # refused, with its reason
    assert result["emails_added"] == 0
    assert MALLORY not in _emails(engine)

    attacker = browser(app_client)
    for identifier in ["root", MALLORY]:
        attacker.get("/account/forgot-password")
        answer = attacker.post("/account/forgot-password", {"identifier": identifier})
        assert RESET_REQUESTED.message.split(".")[0] in answer.text
    assert smtp.inbox(MALLORY) == []
    closed = attacker.get("/admin", follow_redirects=False)
    assert closed.status_code == 303
    assert closed.headers["location"].startswith("/account/login")
    assert root.get("/admin").status_code == 200  # the real admin still gets in


def test_attack_admin_password_alone_opens_no_admin_page(
    app_client: TestClient, smtp: MailServer, engine: Engine
) -> None:
    """An admin without 2FA (a password guessed or reset is enough to hold it) gets
    neither an admin page nor an admin action: it is sent to set 2FA up."""
    root = member(app_client, smtp, "root", "root@gmail.com")
    make_admin(engine, "root")
    for path in ["/admin", "/admin/unverified", "/admin/accounts/root"]:
        response = root.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/account/2fa"
    assert "Administrators must turn on two-factor" in root.get("/admin").text
    root.get("/account/security")
    action = root.post("/admin/domains/gmail.com/check", follow_redirects=False)
    assert action.status_code == 303
    assert action.headers["location"] == "/account/2fa"


# ------------------------------------------------------------- M2: body limit, auth first


def _raw_exchange(port: int, head: bytes, *, timeout: float = 5.0) -> bytes:
    """Send only the request head (no body at all) and read the answer: a server that
    waited for the announced body would never answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.fixture
def live(app: FastAPI) -> Iterator[LiveServer]:
    server = LiveServer()
    server.start(app)
    try:
        yield server
    finally:
        server.stop()


def test_attack_big_unauthenticated_body_is_refused_before_it_is_read(
    live: LiveServer, engine: Engine
) -> None:
    head = (
        b"POST /api/v1/addresses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    assert _raw_exchange(live.port, head).startswith(b"HTTP/1.1 401 ")
    chunked = head.replace(b"Content-Length: 104857600", b"Transfer-Encoding: chunked")
    assert _raw_exchange(live.port, chunked).startswith(b"HTTP/1.1 401 ")
    # With a key, a declared size over the limit is refused unread as well.
    key = make_api_key(engine)
    keyed = head.replace(b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {key}\r\n".encode())
    assert _raw_exchange(live.port, keyed).startswith(b"HTTP/1.1 413 ")
    # Not JSON, no key: 401 (the key is checked before the body is parsed), not 422.
    refused = httpx.post(live.url + "/api/v1/addresses", content=b"{not json", timeout=5)
    assert refused.status_code == 401


async def _call(app: FastAPI, scope: dict[str, Any], chunks: Iterator[bytes]) -> tuple[int, int]:
    """Drive the ASGI app with a chunked body (no Content-Length); the status and how
    many body bytes the app pulled before answering."""
    consumed = 0
    status = 0
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        if done:
            return {"type": "http.disconnect"}
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, done
        if message["type"] == "http.response.start":
            status = message["status"]
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done = True

    await app(scope, receive, send)
    return status, consumed


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }


def _endless(size: int = 64 * 1024, total: int = 100 * 1024 * 1024) -> Iterator[bytes]:
    """Up to 100 MB of body in 64 KiB chunks, made only as they are pulled."""
    for _ in range(total // size):
        yield b"[" * size


def test_attack_chunked_bodies_are_counted(app: FastAPI, engine: Engine) -> None:
    import anyio

    json_type = (b"content-type", b"application/json")
    key = make_api_key(engine)
    auth = (b"authorization", f"Bearer {key}".encode())
    # No key: refused before one byte of the body is pulled.
    status, consumed = anyio.run(_call, app, _scope("/api/v1/addresses", [json_type]), _endless())
    assert (status, consumed) == (401, 0)
    # A key, and a chunked body that never ends: 413 once past the push limit.
    status, consumed = anyio.run(
        _call, app, _scope("/api/v1/addresses", [json_type, auth]), _endless()
    )
    assert status == 413
    assert consumed <= PUSH_LIMIT + 64 * 1024
    # Any other request: 64 KiB (a sign-in form, say).
    form = (b"content-type", b"application/x-www-form-urlencoded")
    status, consumed = anyio.run(_call, app, _scope("/account/login", [form]), _endless())
    assert status == 413
    assert consumed <= DEFAULT_MAX_BODY_BYTES + 64 * 1024


# ------------------------------------------------------------------- M3: webhook SSRF


SSRF_TARGETS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:22/",
    "http://localhost:8077/admin",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://0.0.0.0/",
    "http://240.0.0.1/",
    "http://127.1/",
]


def test_attack_webhooks_to_internal_addresses_are_refused(
    app_client: TestClient, engine: Engine, dns: FakeDns
) -> None:
    api = {"Authorization": f"Bearer {make_api_key(engine)}"}
    for url in SSRF_TARGETS:
        response = app_client.post("/api/v1/webhooks", headers=api, json={"url": url})
        assert response.status_code == 400, url
        assert "webhooks only go to public addresses" in response.json()["detail"], url
    # IPv6 (the API's schema takes host names only; the command line takes these too).
    for url in [
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[::]/",
        "http://[ff02::1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
    ]:
        with (
            pytest.raises(InvalidWebhookUrl, match="public addresses"),
            make_sessionmaker(engine).begin() as session,
        ):
            add_webhook(session, url, now=datetime.now(UTC))
    # A name that resolves to a private address is refused like the address itself.
    dns.names["intranet.registry.test"] = ["10.1.2.3"]
    named = app_client.post(
        "/api/v1/webhooks", headers=api, json={"url": "https://intranet.registry.test/h"}
    )
    assert named.status_code == 400
    with make_sessionmaker(engine)() as session:
        assert session.scalars(select(Webhook)).all() == []
    ok = app_client.post("/api/v1/webhooks", headers=api, json={"url": "https://registry.test/h"})
    assert ok.status_code == 201  # a public host is fine


def _unverification(engine: Engine, *, owner: str | None = None) -> None:
    """An ``email.unverified`` event for the webhooks to deliver: of no account (the
    operator's webhooks hear of it), or of an account of ``owner`` (``api:<key name>``:
    that key's webhooks hear of it)."""
    with make_sessionmaker(engine).begin() as session:
        account_id = None
        if owner is not None:
            account = Account(username="lapsed", owner=owner, created_at=datetime.now(UTC))
            session.add(account)
            session.flush()
            account_id = account.id
        session.add(
            Event(
                at=datetime.now(UTC) + timedelta(seconds=1),
                actor="cycle",
                kind="email.unverified",
                account_id=account_id,
                domain="lapsed.test",
                after={"verdict": "redemption"},
                reason="RDAP status: redemption period",
            )
        )


def _hook_row(engine: Engine, url: str) -> None:
    """A webhook row as an older version (or a careless operator) stored it, unchecked."""
    with make_sessionmaker(engine).begin() as session:
        session.add(Webhook(url=url, secret="whsec_x", created_at=datetime.now(UTC)))


def _last_errors(engine: Engine) -> list[str | None]:
    with make_sessionmaker(engine)() as session:
        return [d.last_error for d in session.scalars(select(WebhookDelivery))]


def test_attack_a_loopback_webhook_gets_no_delivery(engine: Engine, dns: FakeDns) -> None:
    with Receiver().running() as receiver:
        _hook_row(engine, receiver.url)
        _unverification(engine)
        summary = deliver_webhooks(engine)
        assert (summary.delivered, summary.failed) == (0, 1)
        assert receiver.received == []
        (error,) = _last_errors(engine)
        assert error is not None
        assert "loopback" in error
        # The operator's explicit allow-list is what lets an internal receiver in.
        later = datetime.now(UTC) + timedelta(minutes=5)
        allowed = deliver_webhooks(engine, now=later, allow=LOOPBACK.webhook_allow)
        assert allowed.delivered == 1
        assert len(receiver.received) == 1


def test_attack_dns_rebinding_after_registration_reaches_nothing(
    app_client: TestClient, engine: Engine, dns: FakeDns
) -> None:
    api = {"Authorization": f"Bearer {make_api_key(engine)}"}
    with Receiver().running() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        dns.names["rebind.registry.test"] = [PUBLIC_IP]  # public when it is checked ...
        url = f"http://rebind.registry.test:{port}/hooks"
        assert (
            app_client.post("/api/v1/webhooks", headers=api, json={"url": url}).status_code == 201
        )
        dns.names["rebind.registry.test"] = ["127.0.0.1"]  # ... loopback when it is used
        _unverification(engine, owner="api:registry")  # an account of this key
        summary = deliver_webhooks(engine)
        assert summary.delivered == 0
        assert receiver.received == []
        (error,) = _last_errors(engine)
        assert error is not None
        assert "127.0.0.1, a loopback address" in error


def test_attack_delivery_connects_to_the_address_it_checked(engine: Engine, dns: FakeDns) -> None:
    """The name is resolved once, by the check; the connection goes to that address with
    the name in ``Host`` (a second lookup by the HTTP client could be answered otherwise)."""
    with Receiver().running() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        dns.names["hooks.registry.test"] = ["127.0.0.1"]
        url = f"http://hooks.registry.test:{port}/hooks/lapsewatch"
        with make_sessionmaker(engine).begin() as session:
            add_webhook(session, url, now=datetime.now(UTC), allow=LOOPBACK.webhook_allow)
        _unverification(engine)
        dns.asked.clear()
        later = datetime.now(UTC) + timedelta(seconds=5)
        summary = deliver_webhooks(engine, now=later, allow=LOOPBACK.webhook_allow)
        assert summary.delivered == 1
        (message,) = receiver.received
        assert message.headers["Host"] == f"hooks.registry.test:{port}"
        assert dns.asked == ["hooks.registry.test"]  # once, by the check


def test_attack_another_key_cannot_see_or_stop_a_webhook(
    app_client: TestClient, engine: Engine, dns: FakeDns
) -> None:
    mine = {"Authorization": f"Bearer {make_api_key(engine, 'registry-a')}"}
    theirs = {"Authorization": f"Bearer {make_api_key(engine, 'registry-b')}"}
    hook = app_client.post(
        "/api/v1/webhooks", headers=mine, json={"url": "https://registry.test/a"}
    ).json()
    assert app_client.get("/api/v1/webhooks", headers=theirs).json() == []
    assert app_client.delete(f"/api/v1/webhooks/{hook['id']}", headers=theirs).status_code == 404
    assert [h["id"] for h in app_client.get("/api/v1/webhooks", headers=mine).json()] == [
        hook["id"]
    ]
    assert app_client.delete(f"/api/v1/webhooks/{hook['id']}", headers=mine).status_code == 204


# ------------------------------------------------------- M6: a stolen session is not enough


def test_attack_stolen_session_cannot_take_over_the_account(
    app_client: TestClient, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    victim = member(app_client, smtp, "victim", VICTIM)
    victim_email = _emails(engine)[VICTIM]
    clock.advance(minutes=11)  # the login is no longer recent
    thief = copy_session(app_client, victim)
    assert signed_in(thief, "victim")  # the cookie alone is a session ...

    thief.get("/account/security")
    for path, form in [
        ("/account/emails", {"address": MALLORY}),
        (f"/account/emails/{victim_email.id}/primary", {}),
        (f"/account/emails/{victim_email.id}/remove", {}),
        (f"/account/emails/{victim_email.id}/verify", {}),
        ("/account/2fa", {"code": "123456"}),
        ("/account/2fa/disable", {"password": "a guess"}),
        ("/account/2fa/recovery-codes", {"password": "a guess"}),
    ]:
        response = thief.post(path, form, follow_redirects=False)
        assert response.status_code == 303, path  # ... but not enough for these
        assert response.headers["location"].startswith("/account/confirm-password?next="), path
    setup = thief.get("/account/2fa")  # the secret is not shown either
    assert "data-secret" not in setup.text
    assert "Confirm your password" in setup.text
    assert thief.confirm_password("a guess at the password").status_code == 400
    assert MALLORY not in _emails(engine)
    assert _emails(engine)[VICTIM].verified
    with make_sessionmaker(engine)() as session:
        account = session.scalars(select(Account)).one()
        assert not account.totp_enabled
        assert account.totp_pending_secret is None

    # The owner confirms the password and acts; the thief's copy stays as powerless.
    victim.get("/account/security")
    redirected = victim.post("/account/emails", {"address": "victim@gmail.com"})
    assert "Confirm your password" in redirected.text
    assert str(victim.confirm_password().url).endswith("/account/security")
    added = victim.post("/account/emails", {"address": "victim@gmail.com"})
    assert "We sent a verification link to victim@gmail.com" in added.text
    thief.get("/account/security")
    assert thief.post("/account/emails", {"address": MALLORY}).status_code == 200
    assert MALLORY not in _emails(engine)

    # "Sign out everywhere else" ends the stolen copy; the owner stays signed in.
    victim.get("/account/security")
    done = victim.post("/account/sessions/end")
    assert "Every other session of your account was signed out" in done.text
    assert not signed_in(thief, "victim")
    assert signed_in(victim, "victim")


def test_attack_every_change_by_a_stolen_session_is_mailed_to_every_verified_address(
    app_client: TestClient, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    """The thief holds the cookie and passes the re-authentication the app asks for (say
    the password was phished too): each change that guards the account is still mailed
    to every address verified at that moment, so the owner hears of it."""
    spare = "victim@gmail.com"
    mallory = "mallory@gmail.com"
    victim = member(app_client, smtp, "victim", VICTIM)
    victim.get("/account/security")
    assert "We sent a verification link" in victim.post("/account/emails", {"address": spare}).text
    token = token_from(smtp.inbox(spare)[-1])
    victim.get(f"/account/verify-email?token={token}")
    assert f"{spare} is verified" in victim.post("/account/verify-email", {"token": token}).text
    clock.advance(minutes=11)  # the owner's login is no longer recent
    thief = copy_session(app_client, victim)
    smtp.clear()

    thief.get("/account/security")
    asked = thief.post("/account/emails", {"address": mallory})
    assert "Confirm your password" in asked.text
    assert str(thief.confirm_password().url).endswith("/account/security")
    added = thief.post("/account/emails", {"address": mallory})
    assert f"We sent a verification link to {mallory}" in added.text
    token = token_from(smtp.inbox(mallory)[-1])
    thief.get(f"/account/verify-email?token={token}")
    assert f"{mallory} is verified" in thief.post("/account/verify-email", {"token": token}).text
    emails = _emails(engine)
    thief.get("/account/security")
    assert thief.post(f"/account/emails/{emails[mallory].id}/primary").status_code == 200
    thief.get("/account/security")
    assert thief.post(f"/account/emails/{emails[VICTIM].id}/remove").status_code == 200
    assert VICTIM not in _emails(engine)
    thief.enable_2fa()

    def told(address: str) -> list[str]:
        return [m.subject for m in smtp.inbox(address) if m.kind == "security_change"]

    changes = [
        f"the address {mallory} was added",
        f"the address {mallory} was verified",
        f"{mallory} became the primary address",
        f"the address {VICTIM} was removed",
        "two-factor authentication was turned on",
    ]
    # Every change reached the address the owner kept, each once ...
    assert [s.split(": ", 1)[1] for s in told(spare)] == changes
    # ... and the removed address heard of everything up to its own removal.
    assert [s.split(": ", 1)[1] for s in told(VICTIM)] == changes[:4]
    assert "Security change on victim" in told(spare)[0]


def test_attack_copied_cookie_dies_at_logout_and_when_2fa_is_turned_on(
    app_client: TestClient, smtp: MailServer
) -> None:
    victim = member(app_client, smtp, "victim", VICTIM)
    thief = copy_session(app_client, victim)
    assert signed_in(thief, "victim")
    victim.log_out()
    assert not signed_in(thief, "victim")  # a stateless cookie lived on for 12 hours

    victim.log_in("victim")
    thief = copy_session(app_client, victim)
    assert signed_in(thief, "victim")
    victim.enable_2fa()
    assert not signed_in(thief, "victim")
    assert signed_in(victim, "victim")  # this session took up the new generation


def _session_payload(web: WebClient) -> str:
    cookie = web.http.cookies.get("lapsewatch_session") or ""
    data = cookie.split(".", 1)[0]
    return base64.b64decode(data + "=" * (-len(data) % 4)).decode()


def test_attack_the_cookie_holds_no_totp_secret(app_client: TestClient, smtp: MailServer) -> None:
    """The session cookie is signed, not encrypted: anyone who sees it reads it."""
    web = member(app_client, smtp, "victim", VICTIM)
    setup = web.get("/account/2fa")
    secret = setup.text.split('data-secret="')[1].split('"')[0]
    payload = _session_payload(web)
    assert json.loads(payload)["uid"]  # the payload is readable ...
    assert secret not in payload  # ... and the secret is not in it
    done = web.post("/account/2fa", {"code": pyotp.TOTP(secret).now()})
    assert done.status_code == 200


# --------------------------------------------------------------------------------- lows


def test_attack_sign_up_does_not_tell_whether_an_address_is_used(
    app_client: TestClient, smtp: MailServer, engine: Engine
) -> None:
    member(app_client, smtp, "victim", VICTIM)
    mails_before = len(smtp.inbox(VICTIM))
    probe = browser(app_client)

    def main(page: httpx.Response, address: str) -> str:
        return page.text.split("<main>")[1].split("</main>")[0].replace(address, "ADDRESS")

    used = probe.sign_up("prober1", VICTIM)
    fresh = probe.sign_up("prober2", "prober2@gmail.com")
    assert used.status_code == fresh.status_code == 200
    assert main(used, VICTIM) == main(fresh, "prober2@gmail.com")
    assert "Check your mail" in used.text
    assert not signed_in(probe, "prober1")  # no login at sign-up, either way
    with make_sessionmaker(engine)() as session:
        names = set(session.scalars(select(Account.username)))
    assert names == {"victim", "prober2"}  # nothing was made for the used address
    told = smtp.wait_for(VICTIM, mails_before + 1)[-1]  # its owner was told instead
    assert told.kind != "verify_email"


def test_attack_forgot_password_answers_before_the_work(
    engine: Engine, smtp: MailServer, service: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer must not wait for the reset work, whose duration told a known
    account (~15 ms) from an unknown one (~9 ms). The work is held back here: the
    answer still comes."""
    release = threading.Event()
    finished = threading.Event()
    real = service.service.request_password_reset

    def held(session: Session, identifier: str, *, client: str | None = None) -> Any:
        release.wait(10)
        try:
            return real(session, identifier, client=client)
        finally:
            finished.set()

    monkeypatch.setattr(service.service, "request_password_reset", held)
    server = LiveServer()
    server.start(make_web_app(engine, service))
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            token = csrf_of(client.get("/account/forgot-password").text)
            started = time.monotonic()
            answer = client.post(
                "/account/forgot-password", data={"identifier": "nobody", "csrf_token": token}
            )
            assert answer.status_code == 200
            assert RESET_REQUESTED.message.split(".")[0] in answer.text
            assert not release.is_set()
            assert not finished.is_set()  # answered while the work was still held
            assert time.monotonic() - started < 5
        release.set()
        assert finished.wait(10)  # and the work did run, after the answer
    finally:
        release.set()
        server.stop()


def test_attack_reset_link_for_an_address_unverified_since_shows_no_form(
    app_client: TestClient, smtp: MailServer, engine: Engine
) -> None:
    member(app_client, smtp, "victim", VICTIM).log_out()
    asker = browser(app_client)
    asker.get("/account/forgot-password")
    asker.post("/account/forgot-password", {"identifier": "victim"})
    token = token_from(smtp.inbox(VICTIM)[-1])
    with make_sessionmaker(engine).begin() as session:  # the cycle unverifies it meanwhile
        email = session.scalars(select(Email).where(Email.address == VICTIM)).one()
        email.verified = False
        email.unverified_at = datetime.now(UTC)
        email.unverify_reason = "pending_delete"
    page = asker.get(f"/account/reset-password?token={token}")
    assert page.status_code == 400
    assert "This reset link does not work" in page.text
    assert 'name="password"' not in page.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"addresses":[{"username":"\\ud800","address":"a@b.test","verified":true}]}',
        b'{"addresses":[{"username":"a","address":"\\ud800@b.test","verified":true}]}',
        b'{"addresses":[{"username":"a","address":"a@b.test","verified":true,"\\ud800":1}]}',
        b'{"addresses":[{"username":"a","address":"a@b.test","verified":"\\ud800"}]}',
        b'{"addresses":[{"username":"a","address":"a@b.test","verified":true,'
        b'"verified_at":"\\udfff"}]}',
    ],
)
def test_attack_lone_surrogate_in_api_json_is_a_client_error(
    app_client: TestClient, engine: Engine, body: bytes
) -> None:
    api = {"Authorization": f"Bearer {make_api_key(engine)}", "Content-Type": "application/json"}
    response = app_client.post("/api/v1/addresses", headers=api, content=body)
    assert 400 <= response.status_code < 500
    response.json()  # well-formed JSON, no unencodable echo
    hook = app_client.post(
        "/api/v1/webhooks", headers=api, content=b'{"url":"https://\\ud800.test/"}'
    )
    assert hook.status_code == 422


def test_attack_an_api_key_sees_only_its_own_accounts_addresses(
    engine: Engine, closed_port: Callable[[], int]
) -> None:
    """Reading an address must not tell any key holder which web account owns it."""
    service = make_service(engine, account_settings(f"smtp://127.0.0.1:{closed_port()}"))
    created(service.sign_up("rootadmin", PASSWORD, "boss@victim.test"))
    key = make_api_key(engine, "registry")
    other = make_api_key(engine, "other")
    with TestClient(make_web_app(engine, service)) as http:
        pushed = http.post(
            "/api/v1/addresses",
            headers={"Authorization": f"Bearer {key}"},
            json={"addresses": [{"username": "alice", "address": "a@own.test", "verified": True}]},
        )
        assert pushed.status_code == 200, pushed.text
        mine = http.get("/api/v1/addresses/A@own.test", headers={"Authorization": f"Bearer {key}"})
        assert mine.status_code == 200
        assert mine.json()["username"] == "alice"
        for probe, token in (("boss@victim.test", key), ("a@own.test", other)):
            answer = http.get(
                f"/api/v1/addresses/{probe}", headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 404, answer.text
            assert "rootadmin" not in answer.text


def test_attack_a_stale_cookie_cannot_redeem_a_login_bound_link(
    app_client: TestClient, smtp: MailServer, engine: Engine, clock: Clock
) -> None:
    """The lapsed domain's new owner reads the re-verification link; with a copied,
    not recently confirmed cookie, redeeming it still needs the owner's password."""
    victim = member(app_client, smtp, "victim", VICTIM)
    email_id = _emails(engine)[VICTIM].id
    with make_sessionmaker(engine).begin() as session:
        row = session.get_one(Email, email_id)
        row.verified, row.unverified_at, row.unverify_reason = False, clock(), "available"
    context = app_client.app.state.context  # type: ignore[attr-defined]
    context.run(context.accounts.request_reverification, row.account_id, email_id)
    token = token_from(smtp.inbox(VICTIM)[-1])
    clock.advance(minutes=11)
    thief = copy_session(app_client, victim)
    thief.get(f"/account/verify-email?token={token}")
    answer = thief.post("/account/verify-email", {"token": token})
    assert answer.status_code == 403
    assert "/account/confirm-password?next=" in answer.text
    assert not _emails(engine)[VICTIM].verified


def test_attack_lookalike_spellings_share_one_login_limit(
    app_client: TestClient, smtp: MailServer, engine: Engine
) -> None:
    """Full-width or case variants name the same account, so they count as one name."""
    member(app_client, smtp, "victim", VICTIM)
    attacker = browser(app_client)
    for n in range(10):
        assert attacker.log_in("victim", f"guess {n}").status_code == 400
    for spelling in ("VICTIM", "\uff56ictim", "Victim"):
        assert attacker.log_in(spelling, "another guess").status_code == 429, spelling


def test_attack_a_copied_cookie_does_not_outlive_its_login(
    app_client: TestClient, smtp: MailServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every change re-signs the cookie; the login time in it does not move, so a copy
    kept busy still ends when the session's maximum age is reached."""
    victim = member(app_client, smtp, "victim", VICTIM)
    thief = copy_session(app_client, victim)
    assert signed_in(thief, "victim")
    later = time.time() + SESSION_MAX_AGE + 60
    monkeypatch.setattr("lapsewatch.web.security.time.time", lambda: later)
    assert not signed_in(thief, "victim")
