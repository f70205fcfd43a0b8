"""The registry's daily job through the commands: import, check, show, report, again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources

import pytest
from sqlalchemy import select

from lapsewatch.store import Event, make_engine, make_sessionmaker
from lapsewatch.world import World, demo_scenario
from tests.cli_support import Ran
from tests.cli_support import lapsewatch as run
from tests.cycle_support import NOW, state
from tests.mail_support import MailServer

EXPECTED = {  # address -> (verified after the cycle, unverify_reason)
    "alice@alive.test": (True, None),
    "alice@gmail.com": (True, None),
    "bob@redeeming.test": (False, "redemption"),
    "bob@proton.me": (True, None),
    "carol@caught.test": (False, "reregistered"),
    "dave@vacant.test": (False, "available"),
    "dave@deleting.test": (False, "pending_delete"),
    "erin@lapsing.test": (False, "expiring"),
    "frank@parked.test": (False, "for_sale"),
    "frank@alive.test": (True, None),
    "grace@rdap-broken.test": (True, None),  # unknown: never unverified on doubt
    "heidi@camel.test": (False, "expiring"),
    "heidi@example.zz": (True, None),
    "ivan@nozone.test": (True, None),
    "judy@lapsed.wz": (False, "redemption"),  # the registry's WHOIS record (no RDAP)
    "judy@steady.wz": (True, None),
    "ken@mailed.test": (False, "mail_host_lapsed"),  # its mail host's domain is available
    "ken@hosted.test": (True, None),  # mail at Google: a provider, not checked
}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=2.0) as running:
        yield running


def lapsewatch(
    world: World,
    database_url: str,
    *args: str,
    extra: dict[str, str] | None = None,
    process: bool = False,
) -> Ran:
    """The command, in this process unless ``process`` (tests/cli_support.py)."""
    env = {
        **world.env(),
        "LAPSEWATCH_DATABASE_URL": database_url,
        "LAPSEWATCH_TIMEOUT": "0.5",
        "LAPSEWATCH_ATTEMPTS": "2",
        "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        **(extra or {}),
    }
    return run(*args, env=env, process=process)


def test_import_check_show_report_again(world: World, database_url: str) -> None:
    accounts = resources.files("lapsewatch.world").joinpath("scenarios/demo-accounts.jsonl")
    with resources.as_file(accounts) as path:
        imported = lapsewatch(
            world, database_url, "accounts", "import", str(path), "--format", "json"
        )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["emails_added"] == len(EXPECTED)

    # The first check as operators run it, a real process; the other commands here.
    checked = lapsewatch(world, database_url, "check", "--format", "json", process=True)
    assert checked.returncode == 1, checked.stderr  # 1: it unverified addresses
    summary = json.loads(checked.stdout)
    assert summary["checked"] == 15  # 11, and 2 WHOIS-covered, 2 with mail hosts
    assert summary["unverified"] == sum(not v for v, _ in EXPECTED.values())
    assert summary["errors"] == 1
    assert summary["verdicts"]["unknown"] == 1

    for username in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan"):
        shown = lapsewatch(world, database_url, "accounts", "show", username, "--format", "json")
        assert shown.returncode == 0, shown.stderr
        for email in json.loads(shown.stdout)["emails"]:
            verified, reason = EXPECTED[email["address"]]
            assert email["verified"] is verified, email
            assert email["unverify_reason"] == reason, email
            if reason:
                assert email["verdict"] == reason

    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        unverified_events = {
            (e.after or {}).get("verdict")
            for e in session.scalars(select(Event).where(Event.kind == "email.unverified"))
        }
    assert unverified_events == {r for v, r in EXPECTED.values() if not v}
    before = state(engine)

    report = lapsewatch(world, database_url, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["unverified_by_reason"]["expiring"] == 2
    assert {a["username"] for a in data["accounts_at_risk"]} == {
        "grace",
        "heidi",
        "ivan",
        "judy",
        "ken",
    }

    again = lapsewatch(world, database_url, "check", "--format", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["checked"] == 0  # nothing due
    everything = lapsewatch(world, database_url, "check", "--all", "--format", "json")
    assert json.loads(everything.stdout)["unverified"] == 0
    reimported = lapsewatch(
        world, database_url, "accounts", "import", str(path), "--format", "json"
    )
    assert reimported.returncode == 0, reimported.stderr
    after = state(engine)
    assert after["emails"] == before["emails"]
    assert after["notices"] == before["notices"]
    assert [e for e in after["events"] if e[0].startswith("email.")] == [
        e for e in before["events"] if e[0].startswith("email.")
    ]

    # The notices go out over SMTP, to the addresses still verified.
    with MailServer() as smtp:
        sent = lapsewatch(
            world,
            database_url,
            "notify",
            "--format",
            "json",
            extra={"LAPSEWATCH_SMTP_URL": smtp.url},
        )
        assert sent.returncode == 0, sent.stderr
        bob = smtp.wait_for("bob@proton.me", 1)
        assert "bob@redeeming.test" in bob[0].body
        assert "redemption" in bob[0].body
        assert smtp.inbox("bob@redeeming.test") == []  # never to the lapsed domain
        frank = smtp.wait_for("frank@alive.test", 1)
        assert any("frank@parked.test" in m.body for m in frank)
        again = lapsewatch(
            world,
            database_url,
            "notify",
            "--format",
            "json",
            extra={"LAPSEWATCH_SMTP_URL": smtp.url},
        )
        assert json.loads(again.stdout)["sent"] == 0  # each notice once
    engine.dispose()
