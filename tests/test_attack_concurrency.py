"""Concurrency against the running server (uvicorn on loopback, real HTTP, many clients
at once): racing requests must buy an attacker nothing.

* M4: one recovery code, posted by 8 logins at the same moment, logs in once.
* M5: 30 wrong passwords at once are not all checked: the limit is counted
  before Argon2 runs. The same for 20 wrong TOTP codes at the 2FA step.
* The TOTP code that confirmed the set-up cannot log in again.
* Wrong passwords do not lock out an account that has 2FA (the code guards it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pyotp
import pytest
from sqlalchemy import Engine

from lapsewatch.tls import client_context
from tests.mail_support import Accounts, MailServer, account_settings, created
from tests.web_support import PASSWORD, LiveServer, csrf_of, make_service, make_web_app


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def svc(engine: Engine, smtp: MailServer) -> Accounts:
    return make_service(engine, account_settings(smtp.url))


@pytest.fixture
def server(engine: Engine, svc: Accounts) -> Iterator[LiveServer]:
    live = LiveServer()
    live.start(make_web_app(engine, svc))
    yield live
    live.stop()


def with_totp(svc: Accounts, username: str) -> tuple[str, tuple[str, ...]]:
    """An account with 2FA on: its TOTP secret and recovery codes."""
    account_id = created(svc.sign_up(username, PASSWORD, f"{username}@gmail.com"))
    secret = svc.begin_totp_setup(account_id).secret
    codes = svc.confirm_totp(account_id, pyotp.TOTP(secret).now()).codes
    return secret, codes


def client(server: LiveServer) -> httpx.Client:
    """One browser; every request on a connection of its own.

    A kept-alive connection lies idle while the other clients are prepared, and
    uvicorn closes one idle for 5 s: if its timer fires during the burst, before
    the loop has read the request already on that socket, the close resets it
    ("connection reset by peer", or "server disconnected"). Slow preparation under
    load made that happen; a fresh connection per request has no idle timer to race.
    """
    return httpx.Client(
        base_url=server.url,
        follow_redirects=False,
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
        verify=client_context("httpcore"),  # made once: each new one loads the CA certificates
    )


def password_step(http: httpx.Client, username: str, password: str) -> httpx.Response:
    token = csrf_of(http.get("/account/login").text)
    return http.post(
        "/account/login",
        data={"username": username, "password": password, "csrf_token": token},
    )


def at_once(count: int, prepare: Callable[[int], Callable[[], str]]) -> list[str]:
    """Prepare ``count`` clients one by one, then fire their last request together."""
    ready = [prepare(n) for n in range(count)]
    barrier = threading.Barrier(count)

    def fire(shot: Callable[[], str]) -> str:
        barrier.wait()
        return shot()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(fire, ready))


def test_attack_one_recovery_code_posted_by_eight_logins_at_once_logs_in_once(
    server: LiveServer, svc: Accounts
) -> None:
    _secret, codes = with_totp(svc, "racer")

    def prepare(_: int) -> Callable[[], str]:
        http = client(server)
        assert password_step(http, "racer", PASSWORD).headers["location"] == "/account/login/2fa"
        token = csrf_of(http.get("/account/login/2fa").text)

        def shot() -> str:
            answer = http.post(
                "/account/login/2fa", data={"recovery_code": codes[0], "csrf_token": token}
            )
            inside = answer.status_code == 303 and http.get("/account/security").status_code == 200
            return "in" if inside else str(answer.status_code)

        return shot

    outcomes = at_once(8, prepare)
    assert outcomes.count("in") == 1, outcomes


def test_attack_thirty_wrong_passwords_at_once_are_not_all_checked(
    server: LiveServer, svc: Accounts
) -> None:
    created(svc.sign_up("target", PASSWORD, "target@gmail.com"))
    limit = svc.settings.limits.login_per_username.count

    def prepare(n: int) -> Callable[[], str]:
        http = client(server)
        token = csrf_of(http.get("/account/login").text)

        def shot() -> str:
            answer = http.post(
                "/account/login",
                data={"username": "target", "password": f"guess {n}", "csrf_token": token},
            )
            return "limited" if answer.status_code == 429 else "checked"

        return shot

    outcomes = at_once(30, prepare)
    assert outcomes.count("checked") <= limit, outcomes


def wrong_codes(secret: str, count: int) -> list[str]:
    """``count`` six-digit codes that are none of the codes accepted around now."""
    now = time.time()
    accepted = {pyotp.TOTP(secret).at(now + 30 * step) for step in range(-3, 4)}
    codes = (f"{(n * 7919 + 104729) % 1_000_000:06d}" for n in range(count * 2))
    return [code for code in codes if code not in accepted][:count]


def test_attack_twenty_wrong_totp_codes_at_once_are_not_all_checked(
    server: LiveServer, svc: Accounts
) -> None:
    """M5 at the second step: 20 logins that passed the password step post a wrong TOTP
    code at the same moment; at most the limit (5) are checked, the rest get 429."""
    secret, _codes = with_totp(svc, "totpracer")
    limit = svc.settings.limits.second_factor_per_account.count
    guesses = wrong_codes(secret, 20)

    def prepare(n: int) -> Callable[[], str]:
        http = client(server)
        assert password_step(http, "totpracer", PASSWORD).headers["location"] == (
            "/account/login/2fa"
        )
        token = csrf_of(http.get("/account/login/2fa").text)

        def shot() -> str:
            answer = http.post("/account/login/2fa", data={"code": guesses[n], "csrf_token": token})
            return {400: "checked", 429: "limited", 303: "in"}.get(
                answer.status_code, str(answer.status_code)
            )

        return shot

    outcomes = at_once(20, prepare)
    assert "in" not in outcomes, outcomes
    assert set(outcomes) <= {"checked", "limited"}, outcomes
    assert 1 <= outcomes.count("checked") <= limit, outcomes
    assert outcomes.count("limited") >= 20 - limit, outcomes


def test_attack_the_code_that_confirmed_2fa_does_not_log_in(
    server: LiveServer, svc: Accounts
) -> None:
    account_id = created(svc.sign_up("shoulder", PASSWORD, "shoulder@gmail.com"))
    secret = svc.begin_totp_setup(account_id).secret
    code = pyotp.TOTP(secret).now()
    svc.confirm_totp(account_id, code)  # a code seen over the owner's shoulder at set-up
    http = client(server)
    assert password_step(http, "shoulder", PASSWORD).headers["location"] == "/account/login/2fa"
    token = csrf_of(http.get("/account/login/2fa").text)
    answer = http.post("/account/login/2fa", data={"code": code, "csrf_token": token})
    assert answer.status_code == 400
    assert http.get("/account/security").status_code != 200


def test_attack_wrong_passwords_do_not_lock_out_an_account_with_2fa(
    server: LiveServer, svc: Accounts
) -> None:
    with_totp(svc, "guarded")
    http = client(server)
    for n in range(svc.settings.limits.login_per_username.count + 3):
        assert password_step(http, "guarded", f"attacker guess {n}").status_code == 400
    owner = client(server)
    assert password_step(owner, "guarded", PASSWORD).headers["location"] == "/account/login/2fa"
