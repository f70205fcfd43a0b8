"""The admin pages on SQLite and PostgreSQL: refused to anonymous visitors, to
non-admins and to admins without 2FA, CSRF on "check now", and the dashboard's
figures after a real cycle against the local world."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.config import Settings
from lapsewatch.cycle import run_cycle
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.store import Domain, Email, Event, make_sessionmaker
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cycle_support import EXPECTED_UNVERIFIED, NOW, seed
from tests.mail_support import Accounts, MailServer, account_settings, token_from
from tests.metrics_support import scrape, total
from tests.web_support import WebClient, make_admin, make_service, make_web_app

ADMIN_PAGES = ["/admin", "/admin/unverified", "/admin/domains/alive.test", "/admin/accounts/bob"]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


def check_settings(world: World) -> Settings:
    return Settings.from_env(
        {
            **world.env(),
            "LAPSEWATCH_TIMEOUT": "0.5",
            "LAPSEWATCH_ATTEMPTS": "2",
            "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        }
    )


@pytest.fixture
def service(engine: Engine, smtp: MailServer) -> Accounts:
    smtp.clear()
    return make_service(engine, account_settings(smtp.url))


@pytest.fixture
def app_client(engine: Engine, service: Accounts, world: World) -> Iterator[TestClient]:
    settings = check_settings(world)
    app = make_web_app(engine, service, settings=settings, checker=CycleDomainChecker(settings))
    with TestClient(app) as client:
        yield client


def account(app_client: TestClient, smtp: MailServer, username: str, address: str) -> WebClient:
    """Signed up, verified by the mailed link, and signed in."""
    web = WebClient(TestClient(app_client.app))
    web.sign_up(username, address)
    web.get("/account/verify-email")
    web.post("/account/verify-email", {"token": token_from(smtp.inbox(address)[-1])})
    assert f"Security of {username}" in web.log_in(username).text
    return web


@pytest.fixture
def admin(app_client: TestClient, smtp: MailServer, engine: Engine) -> WebClient:
    web = account(app_client, smtp, "root", "root@gmail.com")
    make_admin(engine, "root")
    web.enable_2fa()
    return web


def test_an_admin_without_2fa_is_sent_to_set_it_up(
    app_client: TestClient, smtp: MailServer, engine: Engine
) -> None:
    seed(engine)
    web = account(app_client, smtp, "root", "root@gmail.com")
    make_admin(engine, "root")
    for path in ADMIN_PAGES:
        response = web.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/account/2fa"
    page = web.get("/admin")
    assert str(page.url).endswith("/account/2fa")
    assert "Administrators must turn on two-factor authentication" in page.text
    web.get("/account/security")
    refused = web.post("/admin/domains/alive.test/check", follow_redirects=False)
    assert refused.status_code == 303  # no admin action either
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "alive.test")
        assert domain is not None
        assert domain.last_checked_at is None
    web.enable_2fa()
    assert web.get("/admin").status_code == 200


@pytest.fixture
def user(app_client: TestClient, smtp: MailServer) -> WebClient:
    return account(app_client, smtp, "mallory", "mallory@proton.me")


def test_anonymous_visitors_are_sent_to_login(app_client: TestClient, engine: Engine) -> None:
    seed(engine)
    for path in ADMIN_PAGES:
        response = app_client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == f"/account/login?next={path}"
    response = app_client.post("/admin/domains/alive.test/check", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/account/login")


def test_non_admins_get_403(user: WebClient, engine: Engine) -> None:
    seed(engine)
    for path in ADMIN_PAGES:
        response = user.get(path)
        assert response.status_code == 403, path
        assert "for administrators only" in response.text
    user.get("/account/security")
    assert user.post("/admin/domains/alive.test/check").status_code == 403  # with its token
    assert "Admin" not in user.get("/account/security").text.split("<main>")[0]


def test_a_demoted_admin_loses_the_dashboard_at_once(admin: WebClient, engine: Engine) -> None:
    assert admin.get("/admin").status_code == 200
    with make_sessionmaker(engine).begin() as session:
        for email in session.scalars(select(Email)):
            email.account.is_admin = False
    assert admin.get("/admin").status_code == 403


def test_check_now_needs_the_csrf_token(admin: WebClient, engine: Engine) -> None:
    seed(engine)
    admin.get("/admin/domains/alive.test")
    assert admin.post("/admin/domains/alive.test/check", csrf=False).status_code == 403
    forged = admin.post("/admin/domains/alive.test/check", {"csrf_token": "forged" * 8})
    assert forged.status_code == 403
    with make_sessionmaker(engine)() as session:
        domain = session.get(Domain, "alive.test")
        assert domain is not None
        assert domain.last_checked_at is None  # nothing ran
        assert session.scalars(select(Event).where(Event.kind.like("domain.%"))).all() == []


def test_check_now_runs_the_checker_and_applies_the_verdict(
    admin: WebClient, app_client: TestClient, smtp: MailServer, engine: Engine, world: World
) -> None:
    world.set_domain(DomainScenario.make("lapsing-now.test", "registered", now=NOW))
    try:
        account(app_client, smtp, "maintainer", "m@lapsing-now.test")
        world.set_domain(DomainScenario.make("lapsing-now.test", "redemption", now=NOW))
        admin.get("/admin/domains/lapsing-now.test")
        page = admin.post("/admin/domains/lapsing-now.test/check")
    finally:
        world.remove_domain("lapsing-now.test")
    assert page.status_code == 200
    assert "lapsing-now.test checked: redemption" in page.text
    assert "1 address(es) unverified" in page.text
    assert "redemption period" in page.text  # the evidence, on the domain page
    with make_sessionmaker(engine)() as session:
        email = session.scalars(select(Email).where(Email.address == "m@lapsing-now.test")).one()
        assert not email.verified
        assert email.unverify_reason == "redemption"
        (event,) = session.scalars(
            select(Event).where(Event.kind == "domain.checked_on_demand")
        ).all()
        assert event.actor == "admin:root"
    assert admin.post("/admin/domains/nowhere.test/check").status_code == 404


def test_check_now_is_counted_in_metrics(
    admin: WebClient, app_client: TestClient, smtp: MailServer, world: World
) -> None:
    """Like a cycle's check: by verdict, each source's requests, the addresses unverified."""
    world.set_domain(DomainScenario.make("counted-now.test", "registered", now=NOW))
    try:
        account(app_client, smtp, "counted", "c@counted-now.test")
        world.set_domain(DomainScenario.make("counted-now.test", "redemption", now=NOW))
        before = scrape(app_client)
        admin.get("/admin/domains/counted-now.test")
        assert admin.post("/admin/domains/counted-now.test/check").status_code == 200
        after = scrape(app_client)
    finally:
        world.remove_domain("counted-now.test")

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("lapsewatch_checks_total", verdict="redemption") == 1
    assert moved("lapsewatch_source_observations_total", source="rdap", outcome="answered") == 1
    assert moved("lapsewatch_source_requests_total", source="rdap") >= 1
    assert moved("lapsewatch_unverified_total", reason="redemption") == 1


def test_dashboard_after_a_cycle(admin: WebClient, engine: Engine, world: World) -> None:
    seed(engine)
    run_cycle(check_settings(world), engine, now=datetime.now(UTC))
    page = admin.get("/admin")
    assert page.status_code == 200
    counts = page.text.split('id="address-counts"')[1].split("</table>")[0]
    assert re.search(r"unverified by lapsewatch</th><td class=\"bad\">7<", counts)
    verdicts = page.text.split('id="domain-verdicts"')[1].split("</table>")[0]
    assert "redemption" in verdicts
    assert "for sale" in verdicts
    chart = page.text.split('<svg class="chart"')[1].split("</svg>")[0]
    assert chart.count("<rect") == 90
    today = datetime.now(UTC).date().isoformat()
    assert f"<title>{today}: 7</title>" in chart
    unverified = page.text.split('id="unverified"')[1].split("</table>")[0]
    for address in EXPECTED_UNVERIFIED:
        assert address in unverified
    at_risk = page.text.split('id="at-risk"')[1].split("</table>")[0]
    assert "carl@caught.test" in at_risk  # one verified address, custom domain, no 2FA
    due = page.text.split('id="due"')[1].split("</table>")[0]
    assert "rdap-broken.test" in due  # retried soon after a failed check
    assert "Check now" in due

    evidence = admin.get("/admin/unverified")
    assert evidence.status_code == 200
    assert "bob@redeeming.test" in evidence.text
    assert "rdap" in evidence.text
    assert "fastly" in evidence.text

    domain = admin.get("/admin/domains/redeeming.test")
    assert "redemption period" in domain.text
    assert "Raw answer" in domain.text
    assert "bob@redeeming.test" in domain.text
    assert admin.get("/admin/domains/nowhere.test").status_code == 404

    bob = admin.get("/admin/accounts/bob")
    assert "bob@redeeming.test" in bob.text
    assert "bob@proton.me" in bob.text
    assert admin.get("/admin/accounts/nobody").status_code == 404


def test_dashboard_of_an_empty_store(admin: WebClient) -> None:
    page = admin.get("/admin")
    assert page.status_code == 200
    assert "None yet." in page.text


def test_names_no_database_can_store_are_not_found(admin: WebClient) -> None:
    assert admin.get("/admin/domains/a%00b").status_code == 404
    assert admin.get("/admin/accounts/a%00b").status_code == 404
    admin.get("/admin")
    assert admin.post("/admin/domains/a%00b/check").status_code == 404
