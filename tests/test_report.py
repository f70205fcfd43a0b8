"""``lapsewatch report``: counts by state, verdicts, next checks, accounts at risk."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import typer
from sqlalchemy import Engine, event, update
from typer.testing import CliRunner

from lapsewatch.accounts import import_accounts
from lapsewatch.commands.report import report as report_command
from lapsewatch.formats.report import report as report_json
from lapsewatch.report import AtRisk, UpcomingCheck, build_report
from lapsewatch.store import Domain, Email

NOW = datetime(2026, 1, 10, tzinfo=UTC)
DATED = "2020-01-01T00:00:00Z"


def line(
    username: str, *emails: tuple[str, bool, str | None], totp: bool = False
) -> dict[str, Any]:
    return {
        "username": username,
        "totp": totp,
        "emails": [
            {"address": address, "verified": verified, "verified_at": when}
            for address, verified, when in emails
        ],
    }


ACCOUNTS = [
    line("alice", ("alice@alice.example", True, DATED)),  # at risk
    line("bob", ("bob@bob.example", True, DATED), totp=True),  # 2FA
    line("carol", ("carol@carol.example", True, DATED), ("carol@gmail.com", True, DATED)),
    line("dave", ("dave@gmail.com", True, DATED)),  # free provider: the provider won't lapse
    line("erin", ("erin@erin.example", True, DATED), ("erin@old.example", False, None)),  # at risk
    line("frank", ("frank@lapsed.example", True, DATED)),  # unverified by lapsewatch below
    line("grace", ("grace@grace.example", False, None)),  # never verified
    line("heidi", ("heidi@heidi.example", False, DATED)),  # unverified by the registry
    line("ivan", ("ivan@caught.example", True, DATED)),  # unverified by lapsewatch below
]


def due(day: int) -> datetime:
    return datetime(2026, 1, day, tzinfo=UTC)


@pytest.fixture
def store(engine: Engine) -> Engine:
    data = b"".join(json.dumps(account).encode() + b"\n" for account in ACCOUNTS)
    assert import_accounts(engine, io.BytesIO(data), now=NOW).ok
    with engine.begin() as conn:
        for address, reason in (
            ("frank@lapsed.example", "redemption"),
            ("ivan@caught.example", "reregistered"),
        ):
            conn.execute(
                update(Email)
                .where(Email.address == address)
                .values(verified=False, unverified_at=due(5), unverify_reason=reason)
            )
        for name, verdict, next_due in (
            ("alice.example", "registered", due(31)),
            ("bob.example", "registered", due(15)),
            ("lapsed.example", "redemption", due(2)),
            ("caught.example", "reregistered", due(3)),
        ):
            conn.execute(
                update(Domain)
                .where(Domain.name == name)
                .values(last_verdict=verdict, next_due_at=next_due, last_checked_at=due(1))
            )
    return engine


def test_addresses_by_state(store: Engine) -> None:
    counts = build_report(store, now=NOW).addresses
    assert counts.total == 11
    assert counts.verified == 6
    assert counts.unverified_by_lapsewatch == 2
    assert counts.never_verified == 2
    assert counts.unverified_other == 1
    assert (counts.free_provider, counts.free_provider_verified) == (2, 2)


def test_unverified_by_reason_and_domains_by_verdict(store: Engine) -> None:
    report = build_report(store, now=NOW)
    assert report.unverified_by_reason == (("redemption", 1), ("reregistered", 1))
    assert report.domains_total == 9
    assert dict(report.domains_by_verdict) == {
        "never_checked": 5,
        "registered": 2,
        "redemption": 1,
        "reregistered": 1,
    }
    assert report.domains_by_verdict[0] == ("never_checked", 5)  # most frequent first


def test_next_due_never_checked_first_then_by_date(store: Engine) -> None:
    report = build_report(store, now=NOW)
    # Only domains behind a verified address are scheduled: lapsed.example lost its
    # only verified address, grace.example never had one.
    assert report.next_due == (
        UpcomingCheck("carol.example", None, None),
        UpcomingCheck("erin.example", None, None),
        UpcomingCheck("bob.example", due(15), "registered"),
        UpcomingCheck("alice.example", due(31), "registered"),
    )
    assert report.domains_due == 2
    assert build_report(store, now=due(20)).domains_due == 3
    assert len(build_report(store, now=NOW, next_due_limit=3).next_due) == 3


def test_accounts_at_risk(store: Engine) -> None:
    report = build_report(store, now=NOW)
    assert report.accounts_at_risk == (
        AtRisk("alice", "alice@alice.example", "alice.example"),
        AtRisk("erin", "erin@erin.example", "erin.example"),
    )
    assert report.accounts_at_risk_total == 2
    limited = build_report(store, now=NOW, at_risk_limit=1)
    assert [r.username for r in limited.accounts_at_risk] == ["alice"]
    assert limited.accounts_at_risk_total == 2

    with store.begin() as conn:  # a second verified address at a big provider ends the risk
        conn.execute(update(Email).where(Email.address == "erin@old.example").values(verified=True))
    assert [r.username for r in build_report(store, now=NOW).accounts_at_risk] == ["alice"]


def test_an_empty_store(engine: Engine) -> None:
    report = build_report(engine, now=NOW)
    assert report.addresses.total == 0
    assert report.next_due == ()
    assert report.accounts_at_risk_total == 0
    assert report.domains_by_verdict == ()


def test_query_count_does_not_grow_with_the_data(store: Engine) -> None:
    """Aggregates in SQL: the same few statements for 9 accounts as for 209."""

    def statements() -> int:
        count = 0

        def counter(*_: object) -> None:
            nonlocal count
            count += 1

        event.listen(store, "before_cursor_execute", counter)
        try:
            build_report(store, now=NOW)
        finally:
            event.remove(store, "before_cursor_execute", counter)
        return count

    small = statements()
    more = [line(f"user{i}", (f"u{i}@d{i}.example", True, DATED)) for i in range(200)]
    data = b"".join(json.dumps(account).encode() + b"\n" for account in more)
    import_accounts(store, io.BytesIO(data), now=NOW)
    assert build_report(store, now=NOW).accounts_at_risk_total == 202
    assert statements() <= small


def test_report_command_json(store: Engine, database_url: str) -> None:
    app = typer.Typer()
    app.command()(report_command)
    app.command("noop")(lambda: None)
    runner = CliRunner(env={"LAPSEWATCH_DATABASE_URL": database_url})

    result = runner.invoke(app, ["report", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {
        "addresses",
        "unverified_by_reason",
        "domains_by_verdict",
        "next_due",
        "accounts_at_risk",
        "accounts_at_risk_total",
    }
    assert data["addresses"]["verified"] == 6
    assert data["unverified_by_reason"] == {"redemption": 1, "reregistered": 1}
    assert data["domains_by_verdict"]["never_checked"] == 5
    assert data["next_due"][0] == {
        "domain": "carol.example",
        "next_due_at": None,
        "last_verdict": None,
    }
    assert data["accounts_at_risk"][0] == {
        "username": "alice",
        "address": "alice@alice.example",
        "domain": "alice.example",
    }
    assert data["accounts_at_risk_total"] == 2

    table = runner.invoke(app, ["report"])
    assert table.exit_code == 0, table.output
    assert "Accounts at risk: 2" in table.output


def test_report_json_dates() -> None:
    """Dates are ISO 8601 UTC strings with a Z, like every other command's."""
    from lapsewatch.report import AddressCounts, Report

    data = Report(
        generated_at=NOW,
        addresses=AddressCounts(0, 0, 0, 0, 0, 0, 0),
        unverified_by_reason=(),
        domains_total=1,
        domains_by_verdict=(("registered", 1),),
        domains_due=0,
        next_due=(UpcomingCheck("x.example", due(12), "registered"),),
        accounts_at_risk=(),
        accounts_at_risk_total=0,
    )
    shown = report_json(data)
    assert shown["generated_at"] == "2026-01-10T00:00:00Z"
    assert shown["next_due"][0]["next_due_at"] == "2026-01-12T00:00:00Z"
