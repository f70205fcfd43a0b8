"""The account pages through HTTP, on SQLite and PostgreSQL, with a real SMTP server:
sign-up (no login before the address is verified), verification by button, 2FA,
the security page, CSRF, reset without enumeration, rate limits surfaced, sessions
that end with the password, a logout, or "sign out everywhere else"."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.accounts.service import RESET_REQUESTED
from lapsewatch.accounts.settings import Limit, RateLimits
from lapsewatch.store import Email, make_sessionmaker
from tests.mail_support import Accounts, MailServer, account_settings, token_from
from tests.web_support import (
    PASSWORD,
    WebClient,
    make_api_key,
    make_service,
    make_web_app,
    secret_of,
)

ALICE = "alice@alice-consulting.test"


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture
def service(engine: Engine, smtp: MailServer) -> Accounts:
    smtp.clear()
    limits = RateLimits(login_per_username=Limit(3, timedelta(minutes=15)))
    return make_service(engine, account_settings(smtp.url, limits=limits))


@pytest.fixture
def app_client(engine: Engine, service: Accounts) -> Iterator[TestClient]:
    with TestClient(make_web_app(engine, service)) as client:
        yield client


@pytest.fixture
def web(app_client: TestClient) -> WebClient:
    return WebClient(app_client)


def other_client(web: WebClient) -> WebClient:
    """A second browser on the same app (its own cookies)."""
    assert isinstance(web.http, TestClient)
    return WebClient(TestClient(web.http.app))


def verify_link(smtp: MailServer, address: str) -> str:
    return f"/account/verify-email?token={token_from(smtp.inbox(address)[-1])}"


def signed_up_and_verified(web: WebClient, smtp: MailServer, username: str, address: str) -> None:
    """Sign up, verify by the mailed link, then sign in (sign-up alone does not)."""
    assert web.sign_up(username, address).status_code == 200
    web.get(verify_link(smtp, address))
    page = web.post("/account/verify-email", {"token": token_from(smtp.inbox(address)[-1])})
    assert page.status_code == 200
    assert f"{address} is verified" in page.text
    assert f"Security of {username}" in web.log_in(username).text


def _email(engine: Engine, address: str) -> Email:
    with make_sessionmaker(engine)() as session:
        return session.scalars(select(Email).where(Email.address == address)).one()


# ------------------------------------------------------------------------- sign-up


def test_sign_up_then_verify_by_button(web: WebClient, smtp: MailServer, engine: Engine) -> None:
    page = web.sign_up("alice", ALICE)
    assert page.status_code == 200
    assert "Check your mail" in page.text
    assert "Open the verification link in it, then sign in" in page.text
    # Not signed in by the sign-up: the password opens the account, after the link.
    assert "Sign in" in web.get("/account/security").text
    before = web.log_in("alice")
    assert "Security of alice" in before.text
    assert "not verified" in before.text
    assert "No address on this account is verified" in before.text  # the advice

    link = verify_link(smtp, ALICE)
    landing = web.get(link)
    assert landing.status_code == 200
    assert "Confirm my address" in landing.text
    assert not _email(engine, ALICE).verified  # a GET (a mail scanner) spends nothing
    web.get(link)
    assert not _email(engine, ALICE).verified

    done = web.post("/account/verify-email", {"token": token_from(smtp.inbox(ALICE)[-1])})
    assert done.status_code == 200
    assert f"{ALICE} is verified" in done.text
    assert _email(engine, ALICE).verified

    again = web.post("/account/verify-email", {"token": token_from(smtp.inbox(ALICE)[-1])})
    assert again.status_code == 400  # single use
    security = web.get("/account/security")
    assert "badge ok" in security.text
    assert "add a second address at a well-known mail" in security.text


def test_sign_up_refusals_keep_the_form(web: WebClient) -> None:
    web.get("/account/sign-up")
    page = web.post(
        "/account/sign-up",
        {"username": "bob", "email": "bob@x.test", "password": PASSWORD, "confirm": "other"},
    )
    assert page.status_code == 400
    assert "the two passwords differ" in page.text
    assert 'value="bob@x.test"' in page.text
    page = web.post(
        "/account/sign-up",
        {"username": "bob", "email": "not an address", "password": PASSWORD, "confirm": PASSWORD},
    )
    assert page.status_code == 400
    assert "not a usable email address" in page.text
    assert PASSWORD not in page.text  # a password is never echoed


def test_verify_landing_escapes_the_token(web: WebClient) -> None:
    page = web.get('/account/verify-email?token="><script>alert(1)</script>')
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "&lt;script&gt;" in page.text


# --------------------------------------------------------------------------- login


def test_login_logout_and_pages_that_need_a_login(
    app_client: TestClient, web: WebClient, smtp: MailServer
) -> None:
    anonymous = app_client.get("/account/security", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/account/login?next=/account/security"

    signed_up_and_verified(web, smtp, "alice", ALICE)
    web.log_out()
    assert "Sign in" in web.get("/account/security").text
    wrong = web.log_in("alice", "not the password at all")
    assert wrong.status_code == 400
    assert "wrong username or password" in wrong.text
    page = web.log_in("alice")
    assert page.status_code == 200
    assert "Security of alice" in page.text


def test_login_goes_back_only_to_a_local_page(web: WebClient, smtp: MailServer) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    web.log_out()
    for target, expected in [
        ("/account/2fa", "/account/2fa"),
        ("https://evil.example/", "/account/security"),
        ("//evil.example/x", "/account/security"),
        ("/\\evil.example", "/account/security"),
    ]:
        web.get("/account/login")
        response = web.post(
            "/account/login",
            {"username": "alice", "password": PASSWORD, "next": target},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert response.headers["location"] == expected
        web.log_out()


def test_login_rate_limit_is_surfaced(web: WebClient, smtp: MailServer) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    web.log_out()
    for _ in range(3):  # the fixture allows 3 failures per username
        assert web.log_in("alice", "a wrong guess, again").status_code == 400
    limited = web.log_in("alice", "a wrong guess, again")
    assert limited.status_code == 429
    assert "too many attempts; try again in" in limited.text
    assert 0 < int(limited.headers["retry-after"]) <= 15 * 60
    assert web.log_in("alice").status_code == 429  # even the right password waits


# ----------------------------------------------------------------------------- 2FA


def test_two_factor_set_up_and_login(web: WebClient, smtp: MailServer, engine: Engine) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    setup = web.get("/account/2fa")
    assert setup.status_code == 200
    first = secret_of(setup.text)
    assert "otpauth://totp/lapsewatch:alice?secret=" + first in setup.text
    secret = secret_of(web.get("/account/2fa").text)
    assert secret != first  # showing the page again starts over: a new secret ...
    stale = web.post("/account/2fa", {"code": pyotp.TOTP(first).now()})
    assert stale.status_code == 400  # ... and the first one no longer turns 2FA on

    wrong = web.post("/account/2fa", {"code": "000000"})
    assert wrong.status_code == 400
    assert "does not match" in wrong.text
    assert secret_of(wrong.text) == secret  # after a wrong code, the same secret again
    cookie = web.http.cookies.get("lapsewatch_session") or ""
    assert secret not in cookie  # kept on the server, never in the (readable) cookie
    previous_step = pyotp.TOTP(secret).at(time.time() - 30)  # accepted: one step of drift
    done = web.post("/account/2fa", {"code": previous_step})
    assert done.status_code == 200
    codes = re.findall(r"<code>([0-9a-f-]{19})</code>", done.text)
    assert len(codes) == 10
    assert "shown only once" in done.text
    assert "Two-factor authentication is on" in web.get("/account/2fa").text

    web.log_out()
    step = web.log_in("alice")
    assert str(step.url).endswith("/account/login/2fa")
    assert web.post("/account/login/2fa", {"code": "123456"}).status_code == 400
    # The code that turned 2FA on was seen on this screen: it cannot sign in again.
    assert web.post("/account/login/2fa", {"code": previous_step}).status_code == 400
    page = web.post("/account/login/2fa", {"code": pyotp.TOTP(secret).now()})
    assert "Security of alice" in page.text

    web.log_out()
    web.log_in("alice")
    page = web.post("/account/login/2fa", {"recovery_code": codes[0]})
    assert "You signed in with a recovery code; 9 left" in page.text
    web.log_out()
    web.log_in("alice")
    assert web.post("/account/login/2fa", {"recovery_code": codes[0]}).status_code == 400


def test_second_step_without_a_password_step(web: WebClient) -> None:
    web.get("/account/login")
    response = web.post("/account/login/2fa", {"code": "123456"}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/account/login"


# ---------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/account/emails", {"address": "alice@gmail.com"}),
        ("/account/emails/1/remove", {}),
        ("/account/password", {"current": PASSWORD, "password": "x" * 12, "confirm": "x" * 12}),
        ("/account/2fa", {"code": "123456"}),
        ("/account/logout", {}),
    ],
)
def test_user_forms_need_the_csrf_token(
    web: WebClient, smtp: MailServer, path: str, fields: dict[str, str]
) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    missing = web.post(path, fields, csrf=False)
    assert missing.status_code == 403
    assert "did not come from this site" in missing.text
    forged = web.post(path, {**fields, "csrf_token": "x" * 43})
    assert forged.status_code == 403
    assert "Security of alice" in web.get("/account/security").text  # still signed in


@pytest.mark.parametrize(
    "path",
    ["/account/login", "/account/sign-up", "/account/forgot-password", "/account/verify-email"],
)
def test_anonymous_forms_need_the_csrf_token(app_client: TestClient, path: str) -> None:
    assert app_client.post(path, data={"username": "x", "identifier": "x"}).status_code == 403
    app_client.get("/account/login")  # now there is a session, but no token in the form
    assert app_client.post(path, data={"csrf_token": "forged"}).status_code == 403
    assert app_client.post(path, json={"csrf_token": "forged"}).status_code == 403


# ------------------------------------------------------------------- the security page


def test_address_actions(web: WebClient, smtp: MailServer, engine: Engine) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    page = web.post("/account/emails", {"address": "alice@gmail.com"})
    assert "We sent a verification link to alice@gmail.com" in page.text
    second = _email(engine, "alice@gmail.com")
    page = web.post(f"/account/emails/{second.id}/primary")
    assert "only a verified address can be primary" in page.text
    web.post("/account/verify-email", {"token": token_from(smtp.inbox("alice@gmail.com")[-1])})
    page = web.post(f"/account/emails/{second.id}/primary")
    assert "now your primary address" in page.text
    first = _email(engine, ALICE)
    page = web.post(f"/account/emails/{first.id}/remove")
    assert "The address was removed" in page.text
    assert ALICE not in web.get("/account/security").text
    page = web.post(f"/account/emails/{second.id}/remove")
    assert "make another verified address primary first" in page.text


def test_someone_elses_address_is_not_found(web: WebClient, smtp: MailServer) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    other = other_client(web)
    signed_up_and_verified(other, smtp, "bob", "bob@bob.test")
    page = web.post("/account/emails/2/remove")  # bob's address
    assert "no such address on your account" in page.text


def test_security_page_explains_an_unverified_address(
    web: WebClient, smtp: MailServer, engine: Engine
) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    with make_sessionmaker(engine).begin() as session:  # what the cycle does (see test_browser)
        email = session.scalars(select(Email).where(Email.address == ALICE)).one()
        email.verified = False
        email.unverified_at = datetime.now(UTC)
        email.unverify_reason = "redemption"
        email.unverify_detail = "RDAP status: redemption period"
    page = web.get("/account/security")
    assert "badge bad" in page.text
    assert "the domain is <strong>redemption</strong>" in page.text
    assert "RDAP status: redemption period" in page.text
    assert "Verify again" in page.text
    assert "/account/recover" in page.text  # no verified address left: how to get back in


def test_reverification_link_needs_its_owner_logged_in(
    web: WebClient, smtp: MailServer, engine: Engine
) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    with make_sessionmaker(engine).begin() as session:
        email = session.scalars(select(Email).where(Email.address == ALICE)).one()
        email.verified = False
        email.unverified_at = datetime.now(UTC) - timedelta(minutes=1)
        email.unverify_reason = "available"
        email_id = email.id
    page = web.post(f"/account/emails/{email_id}/verify")
    assert "Open it while signed in" in page.text
    token = token_from(smtp.inbox(ALICE)[-1])

    stranger = other_client(web)  # whoever reads the lapsed domain's mail now
    stranger.get(f"/account/verify-email?token={token}")
    refused = stranger.post("/account/verify-email", {"token": token})
    assert refused.status_code == 403
    assert "Sign in first" in refused.text
    assert not _email(engine, ALICE).verified

    web.get(f"/account/verify-email?token={token}")
    assert f"{ALICE} is verified" in web.post("/account/verify-email", {"token": token}).text


# ----------------------------------------------------------------------- password reset


def test_reset_request_gives_one_answer_to_everyone(
    web: WebClient, smtp: MailServer, app_client: TestClient
) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    web.log_out()
    answers = []
    for identifier in ["alice", ALICE, "nobody", "nobody@nowhere.test", "", "x" * 5000]:
        web.get("/account/forgot-password")
        answers.append(web.post("/account/forgot-password", {"identifier": identifier}))
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert RESET_REQUESTED.message.split(".")[0] in answers[0].text
    kinds = [m.kind for m in smtp.inbox(ALICE)]
    assert kinds == ["verify_email", "password_reset", "password_reset"]
    assert smtp.inbox("nobody@nowhere.test") == []


def test_reset_password_by_link_ends_other_sessions(
    web: WebClient, smtp: MailServer, engine: Engine
) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    elsewhere = other_client(web)
    elsewhere.log_in("alice")
    assert "Security of alice" in elsewhere.get("/account/security").text

    forgetful = other_client(web)
    forgetful.get("/account/forgot-password")
    forgetful.post("/account/forgot-password", {"identifier": "alice"})
    token = token_from(smtp.inbox(ALICE)[-1])
    form = forgetful.get(f"/account/reset-password?token={token}")
    assert form.status_code == 200
    assert "Choose a new password for alice" in form.text
    weak = forgetful.post(
        "/account/reset-password", {"token": token, "password": "alice"} | {"confirm": "alice"}
    )
    assert weak.status_code == 400
    assert "at least 10 characters" in weak.text
    new = "a brand new passphrase"
    done = forgetful.post(
        "/account/reset-password", {"token": token, "password": new, "confirm": new}
    )
    assert "Your password was changed" in done.text
    assert str(done.url).endswith("/account/login")

    reused = forgetful.get(f"/account/reset-password?token={token}")
    assert reused.status_code == 400
    assert "This reset link does not work" in reused.text
    # Every session opened with the old password is over.
    assert "Sign in" in elsewhere.get("/account/security").text
    assert "Sign in" in web.get("/account/security").text
    assert "Security of alice" in web.log_in("alice", new).text


def test_changing_the_password_keeps_this_session_only(web: WebClient, smtp: MailServer) -> None:
    signed_up_and_verified(web, smtp, "alice", ALICE)
    elsewhere = other_client(web)
    elsewhere.log_in("alice")
    new = "another fine passphrase"
    web.get("/account/security")
    page = web.post("/account/password", {"current": PASSWORD, "password": new, "confirm": new})
    assert "other sessions were signed out" in page.text
    assert "Security of alice" in web.get("/account/security").text
    assert "Sign in" in elsewhere.get("/account/security").text


def test_recovery_page_for_an_account_without_verified_address(app_client: TestClient) -> None:
    page = app_client.get("/account/recover")
    assert page.status_code == 200
    assert "recovery codes" in page.text
    assert "Contact support" in page.text


# ---------------------------------------------------------------------- headers, cookies


def test_security_headers_and_cookie_flags(app_client: TestClient) -> None:
    page = app_client.get("/account/login")
    headers = page.headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    cookie = headers["set-cookie"].lower()
    assert "lapsewatch_session=" in cookie
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    css = app_client.get("/static/style.css")
    assert css.status_code == 200
    assert "no-store" not in css.headers.get("cache-control", "")
    assert "http://" not in page.text.replace("http://registry.test", "")
    assert "https://" not in page.text  # nothing loaded from another site


def test_a_forged_session_cookie_is_ignored(app_client: TestClient) -> None:
    app_client.cookies.set("lapsewatch_session", "eyJ1aWQiOiAxfQ==.forged.signature")
    response = app_client.get("/account/security", follow_redirects=False)
    assert response.status_code == 303


def test_unknown_page_is_html_and_unknown_api_path_is_json(
    app_client: TestClient, engine: Engine
) -> None:
    page = app_client.get("/no/such/page")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    anonymous = app_client.get("/api/v1/nothing")
    assert anonymous.status_code == 401  # no key, no answer about what exists
    key = {"Authorization": f"Bearer {make_api_key(engine)}"}
    api = app_client.get("/api/v1/nothing", headers=key)
    assert api.status_code == 404
    assert api.json() == {"detail": "Not Found"}
