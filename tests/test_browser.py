"""The web app in a real browser: Playwright driving Debian's headless Chromium
against uvicorn on 127.0.0.1, with the local world for domain checks and a
local SMTP server for the mails. Screenshots go to ``test-artifacts/screenshots/``.

The story: a maintainer signs up, verifies by the link in the mail, signs in,
turns on 2FA (the code computed from the secret on the page) and sees the
security page; their domain lapses, the cycle runs, and the security page says
which address was unverified and why. An admin is sent to set up 2FA before the
dashboard opens, then reads it and checks a domain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import Engine

from lapsewatch.config import Settings
from lapsewatch.cycle import CycleSummary, run_cycle
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.schedule import Policy
from lapsewatch.world import DomainScenario, World, demo_scenario
from tests.cycle_support import NOW, seed
from tests.mail_support import MailServer, account_settings
from tests.services import require_service
from tests.web_support import PASSWORD, LiveServer, make_admin, make_service, make_web_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
DOMAIN = "maintained.test"
ADDRESS = f"m@{DOMAIN}"

if CHROMIUM.exists():  # imported only where it can run: the test skips otherwise
    from playwright.sync_api import Browser, Page, expect, sync_playwright


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        running.set_domain(DomainScenario.make(DOMAIN, "registered", now=NOW))
        yield running


@pytest.fixture(scope="module")
def smtp() -> Iterator[MailServer]:
    with MailServer() as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_service(f"Chromium ({CHROMIUM})", CHROMIUM.exists())
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def check_settings(world: World) -> Settings:
    return Settings.from_env(
        {
            **world.env(),
            "LAPSEWATCH_TIMEOUT": "1",
            "LAPSEWATCH_ATTEMPTS": "2",
            "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        }
    )


@pytest.fixture
def site(engine: Engine, smtp: MailServer, world: World) -> Iterator[str]:
    """The app on a live loopback port; mailed links point at it."""
    smtp.clear()
    server = LiveServer()
    checks = check_settings(world)
    checker = CycleDomainChecker(checks)
    service = make_service(
        engine,
        account_settings(smtp.url, base_url=server.url),
        checker=checker,
        policy=Policy.from_settings(checks),
    )
    server.start(make_web_app(engine, service, settings=checks, checker=checker))
    try:
        yield server.url
    finally:
        server.stop()


def shot(page: Page, name: str, backend: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{backend}-{name}.png"), full_page=True)


def _backend(engine: Engine) -> str:
    return engine.dialect.name


def cycle(settings: Settings, engine: Engine, **options: Any) -> CycleSummary:
    """Run the cycle on a thread of its own: Playwright's sync API keeps an event loop
    running on this one, and the cycle starts its own with ``asyncio.run``."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run_cycle, settings, engine, **options).result()


def test_maintainer_signs_up_verifies_enables_2fa_and_sees_the_lapse(
    browser: Browser, site: str, smtp: MailServer, engine: Engine, world: World
) -> None:
    backend = _backend(engine)
    context = browser.new_context(base_url=site)
    page = context.new_page()
    page.set_default_timeout(15_000)

    page.goto("/account/sign-up")
    page.get_by_label("Username").fill("maintainer")
    page.get_by_label("Email address").fill(ADDRESS)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password, again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your mail")).to_be_visible()
    expect(page.get_by_text(f"We sent a mail to {ADDRESS}")).to_be_visible()
    shot(page, "01-signed-up", backend)

    (mail,) = smtp.wait_for(ADDRESS, 1)
    link = re.search(r"http://127\.0\.0\.1:\d+/account/verify-email\?token=\S+", mail.body)
    assert link is not None, mail.body
    page.goto(link.group(0))
    expect(page.get_by_role("button", name="Confirm my address")).to_be_visible()
    shot(page, "02-verify-landing", backend)
    page.get_by_role("button", name="Confirm my address").click()
    expect(page.get_by_role("heading", name=f"{ADDRESS} is verified")).to_be_visible()
    expect(page.get_by_text(f"We checked its domain {DOMAIN} at once: registered")).to_be_visible()
    shot(page, "03-verified", backend)

    sign_in(page, "maintainer")
    page.goto("/account/2fa")
    secret = page.locator("#totp-secret").get_attribute("data-secret")
    assert secret
    page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    shot(page, "04-recovery-codes", backend)

    page.goto("/account/security")
    expect(page.locator("tr.state-verified")).to_contain_text(ADDRESS)
    expect(page.get_by_text("add a second address at a well-known mail provider")).to_be_visible()
    shot(page, "05-security", backend)

    # The domain lapses; the next cycle unverifies the address.
    world.set_domain(DomainScenario.make(DOMAIN, "redemption", now=NOW))
    try:
        summary = cycle(check_settings(world), engine, everything=True)
    finally:
        world.set_domain(DomainScenario.make(DOMAIN, "registered", now=NOW))
    assert summary.unverified == 1
    page.reload()
    row = page.locator("tr.state-unverified")
    expect(row).to_contain_text(ADDRESS)
    expect(row).to_contain_text("the domain is redemption")
    expect(row).to_contain_text("redemption period")
    expect(row.get_by_role("button", name="Verify again")).to_be_visible()
    expect(page.get_by_label("Advice")).to_contain_text("No address on this account is verified")
    shot(page, "06-security-after-lapse", backend)
    context.close()


def sign_in(page: Page, username: str) -> None:
    page.goto("/account/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=f"Security of {username}")).to_be_visible()


def test_admin_dashboard(
    browser: Browser, site: str, smtp: MailServer, engine: Engine, world: World
) -> None:
    backend = _backend(engine)
    seed(engine)
    cycle(check_settings(world), engine, now=datetime.now(UTC))
    context = browser.new_context(base_url=site)
    page = context.new_page()
    page.set_default_timeout(15_000)

    page.goto("/account/sign-up")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Email address").fill("root@gmail.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password, again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your mail")).to_be_visible()
    sign_in(page, "root")
    page.goto("/admin")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()  # not yet an admin
    make_admin(engine, "root")

    page.goto("/admin")  # an admin, but no dashboard without 2FA
    expect(page).to_have_url(re.compile(r"/account/2fa$"))
    expect(page.get_by_text("Administrators must turn on two-factor")).to_be_visible()
    shot(page, "07-admin-needs-2fa", backend)
    secret = page.locator("#totp-secret").get_attribute("data-secret")
    assert secret
    page.get_by_label("Code").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)

    page.goto("/admin")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator("#address-counts")).to_contain_text("unverified by lapsewatch")
    expect(page.locator("svg.chart rect.bar")).to_have_count(90)
    expect(page.locator("#unverified")).to_contain_text("bob@redeeming.test")
    expect(page.locator("#at-risk")).to_contain_text("carl@caught.test")
    shot(page, "08-admin-dashboard", backend)

    page.locator("#due tr", has_text="rdap-broken.test").get_by_role(
        "button", name="Check now"
    ).click()
    expect(page).to_have_url(re.compile(r"/admin/domains/rdap-broken\.test$"))
    expect(page.get_by_text("rdap-broken.test checked: unknown")).to_be_visible()
    shot(page, "09-admin-domain", backend)

    page.goto("/admin/unverified")
    expect(page.locator("article.unverified")).to_have_count(7)
    shot(page, "10-admin-unverified", backend)
    context.close()
