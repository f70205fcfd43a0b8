"""One definition per rule: the report's "due now" is what ``check`` checks, its
"at risk" is the advice's rule, and the notice the cycle queues has the words of
``messages`` (``cycle.due``, ``mail.advice`` and ``messages`` own them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import typer
from sqlalchemy import Engine, Subquery, select
from typer.testing import CliRunner

from lapsewatch import messages
from lapsewatch.commands.check import check as check_command
from lapsewatch.commands.report import report as report_command
from lapsewatch.cycle import run_cycle, select_due
from lapsewatch.cycle.apply import CheckResult, apply_result
from lapsewatch.domains import parse
from lapsewatch.mail import advice
from lapsewatch.report import build_report
from lapsewatch.schedule import Policy
from lapsewatch.store import Account, Domain, Email, make_sessionmaker
from lapsewatch.store.models import Notice
from lapsewatch.verdict import Decision, Verdict
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import LONG_AGO, NOW, settings_for

DAY = timedelta(days=1)
WILL_CHECK = {"alive.test", "fraction.test", "camel.test"}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=2.0) as running:
        yield running


def add_account(
    engine: Engine, username: str, emails: list[tuple[str, bool]], *, totp: bool = False
) -> None:
    with make_sessionmaker(engine).begin() as session:
        account = Account(username=username, created_at=LONG_AGO, totp_enabled=totp)
        for address, verified in emails:
            parsed = parse(address)
            account.emails.append(
                Email(
                    address=parsed.address or address,
                    domain=parsed.domain,
                    free_provider=parsed.free_provider,
                    verified=verified,
                    verified_at=LONG_AGO if verified else None,
                )
            )
        session.add(account)


def add_domain(
    engine: Engine, name: str, next_due_at: datetime | None, lease_until: datetime | None = None
) -> None:
    with make_sessionmaker(engine).begin() as session:
        session.add(
            Domain(
                name=name,
                next_due_at=next_due_at,
                lease_until=lease_until,
                last_verdict=None if next_due_at is None else "registered",
                consecutive_failures=0,
            )
        )


@pytest.fixture
def mixed(engine: Engine) -> Engine:
    """One domain of every kind the due rule tells apart (domains of the demo world)."""
    add_account(engine, "due", [("a@alive.test", True)])
    add_domain(engine, "alive.test", NOW - DAY)
    add_account(engine, "never", [("f@fraction.test", True)])
    add_domain(engine, "fraction.test", None)
    add_account(engine, "rowless", [("c@camel.test", True)])  # no domains row: due at once
    add_account(engine, "later", [("o@offset.test", True)])
    add_domain(engine, "offset.test", NOW + 10 * DAY)
    add_account(engine, "leased", [("n@nozone.test", True)])
    add_domain(engine, "nozone.test", None, lease_until=NOW + timedelta(hours=2))
    add_account(engine, "webmail", [("w@gmail.com", True)])
    add_domain(engine, "gmail.com", None)  # a free provider's domain is never checked
    add_account(engine, "stale", [("p@parked.test", False)])
    add_domain(engine, "parked.test", None)  # its only address is unverified
    add_domain(engine, "vacant.test", None)  # no address at all
    return engine


def test_report_due_is_what_check_dry_run_checks(
    world: World, mixed: Engine, database_url: str
) -> None:
    checked: list[str] = []

    def collect(result: CheckResult, _unverified: int) -> None:
        checked.append(result.domain)

    summary = run_cycle(
        settings_for(world), mixed, now=NOW, limit=None, dry_run=True, on_result=collect
    )
    report = build_report(mixed, now=NOW)
    assert set(checked) == WILL_CHECK
    assert report.domains_due == summary.checked == len(WILL_CHECK)
    # The next checks start with those due now, in the order check takes them.
    assert [d.domain for d in report.next_due] == [
        "camel.test",
        "fraction.test",
        "alive.test",
        "offset.test",
    ]

    # The same through the commands an operator runs (their clock: a real "now").
    app = typer.Typer()
    app.command("check")(check_command)
    app.command("report")(report_command)
    env = {
        **world.env(),
        "LAPSEWATCH_DATABASE_URL": database_url,
        "LAPSEWATCH_TIMEOUT": "0.5",
        "LAPSEWATCH_ATTEMPTS": "2",
        "LAPSEWATCH_MAX_RETRY_AFTER": "1",
    }
    runner = CliRunner(env=env)
    dry = runner.invoke(app, ["check", "--dry-run", "--format", "json"])
    assert dry.exit_code in (0, 1), dry.output
    assert json.loads(dry.stdout)["dry_run"] is True
    shown = runner.invoke(app, ["report", "--format", "json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["domains_due"] == json.loads(dry.stdout)["checked"]


@pytest.mark.parametrize("later", [timedelta(0), 3 * DAY, 20 * DAY])
def test_report_due_is_what_the_cycle_selects(mixed: Engine, later: timedelta) -> None:
    """At any time: once offset.test falls due and nozone.test's lease ends, both count."""
    now = NOW + later
    with make_sessionmaker(mixed)() as session:
        selected = {d.name for d in select_due(session, now=now, limit=None)}
    report = build_report(mixed, now=now)
    assert report.domains_due == len(selected)
    assert {d.domain for d in report.next_due[: report.domains_due]} == selected
    assert selected >= WILL_CHECK
    assert ("offset.test" in selected) is (later > 10 * DAY)


@pytest.fixture
def accounts(engine: Engine) -> Engine:
    """Every shape of verified addresses the at-risk rule tells apart."""
    add_account(engine, "solo", [("s@solo.test", True)])
    add_account(engine, "guarded", [("g@guarded.test", True)], totp=True)
    add_account(engine, "stale", [("t@own.test", True), ("t@old.test", False)])
    add_account(engine, "paired", [("p@paired.test", True), ("p@gmail.com", True)])
    add_account(engine, "twice", [("w@one.test", True), ("w@two.test", True)])
    add_account(engine, "webmail", [("m@gmail.com", True), ("m@lost.test", False)])
    add_account(engine, "none", [("n@none.test", False)])
    return engine


def advised(engine: Engine) -> dict[str, tuple[str, bool]]:
    """username -> (address, 2FA on), for every account the advice goes to."""
    with make_sessionmaker(engine)() as session:
        names = dict(session.execute(select(Account.id, Account.username)).all())
        rows = advice.accounts_needing_advice(session)
    return {names[account]: (address, totp) for account, address, totp in rows}


def test_at_risk_is_one_rule_in_the_report_and_the_advice(accounts: Engine) -> None:
    report = build_report(accounts, now=NOW)
    listed = {(r.username, r.address, r.domain) for r in report.accounts_at_risk}
    assert listed == {("solo", "s@solo.test", "solo.test"), ("stale", "t@own.test", "own.test")}
    assert report.accounts_at_risk_total == len(listed)
    with accounts.connect() as conn:
        assert {tuple(row) for row in conn.execute(advice.accounts_at_risk())} == listed
    # The advice goes to the same accounts, and also to those whose 2FA stops a
    # takeover but not the loss of their only way back.
    to_advise = advised(accounts)
    assert {(u, a) for u, (a, totp) in to_advise.items() if not totp} == {
        (u, a) for u, a, _ in listed
    }
    assert {u for u, (_, totp) in to_advise.items() if totp} == {"guarded"}


def test_the_report_has_no_at_risk_rule_of_its_own(
    accounts: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing the advice's rule changes the report's list with it."""

    def everyone_with_a_verified_address() -> Subquery:
        return (
            select(Email.account_id, Email.address, Email.domain)
            .where(Email.verified.is_(True))
            .subquery()
        )

    monkeypatch.setattr(advice, "single_custom_address", everyone_with_a_verified_address)
    listed = {r.username for r in build_report(accounts, now=NOW).accounts_at_risk}
    assert listed == {"solo", "stale", "paired", "twice", "webmail"}
    assert listed == {u for u, (_, totp) in advised(accounts).items() if not totp}


@pytest.mark.parametrize("verdict", [Verdict.PENDING_DELETE, Verdict.MAIL_HOST_LAPSED])
def test_the_unverify_notice_has_the_words_of_messages(engine: Engine, verdict: Verdict) -> None:
    """The cycle writes no notice text of its own: what it queues is
    ``messages.unverified_notice``'s, so changing those words changes the mail sent."""
    add_account(engine, "owner", [("o@gone.test", True)])
    reason = "RDAP: status 'pending delete'"
    result = CheckResult("gone.test", LONG_AGO, (), Decision("gone.test", verdict, reason), NOW)
    with make_sessionmaker(engine).begin() as session:
        assert apply_result(session, result, policy=Policy()) == 1
    with make_sessionmaker(engine)() as session:
        notice = session.scalars(select(Notice)).one()
    expected = messages.unverified_notice("o@gone.test", "gone.test", verdict.value, reason)
    assert (notice.subject, notice.body) == expected
