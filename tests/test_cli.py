"""The ``lapsewatch`` command as people run it: real exit codes, real output.

Most run in this process (tests/cli_support.py); the help, a domain's table and the
demo's main job run as real processes, as a newcomer types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lapsewatch.world import World, demo_scenario
from tests.cli_support import SOURCE_LIMITS, Ran
from tests.cli_support import lapsewatch as run

EXPECTED_KEYS = {"input", "domain", "verdict", "reason", "free_provider", "observations"}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=datetime.now(UTC)), hang_seconds=4.0) as running:
        yield running


def lapsewatch(*args: str, env: dict[str, str] | None = None, process: bool = False) -> Ran:
    """The command in this process, unless ``process`` (tests/cli_support.py)."""
    given = {**SOURCE_LIMITS, "COLUMNS": "200", **(env or {})}
    return run(*args, env=given, process=process, timeout=60)


@pytest.mark.parametrize(
    ("name", "verdict", "code"),
    [
        ("alive.test", "registered", 0),
        ("lapsing.test", "expiring", 1),
        ("redeeming.test", "redemption", 1),
        ("deleting.test", "pending_delete", 1),
        ("vacant.test", "available", 1),
        ("parked.test", "for_sale", 1),
        ("caught.test", "reregistered", 1),
        ("rdap-broken.test", "unknown", 3),
        ("hidden.nordap", "unknown", 3),
    ],
)
def test_domain_json(world: World, name: str, verdict: str, code: int) -> None:
    result = lapsewatch(
        "domain",
        f"Dev <dev@{name}>",
        "--verified-at",
        "2024-01-01T00:00:00Z",
        "--format",
        "json",
        env=world.env(),
    )
    assert result.returncode == code, result.stderr
    data = json.loads(result.stdout)
    assert data.keys() >= EXPECTED_KEYS
    assert data["input"] == f"Dev <dev@{name}>"
    assert data["domain"] == name
    assert data["verdict"] == verdict
    assert data["reason"]
    assert data["free_provider"] is False
    # WHOIS is asked only where the TLD has no RDAP server (.nordap: no WHOIS server either).
    whois = {"whois"} if name.endswith(".nordap") else set()
    assert {o["source"] for o in data["observations"]} == {"rdap", "dns", "fastly"} | whois


def test_domain_table(world: World) -> None:
    result = lapsewatch("domain", "m@redeeming.test", env=world.env(), process=True)
    assert result.returncode == 1
    assert "redemption" in result.stdout
    assert "NXDOMAIN" in result.stdout


def test_unicode_domain_is_shown_and_checked_as_punycode(world: World) -> None:
    result = lapsewatch("domain", "bücher.test", "--format", "json", env=world.env())
    assert result.returncode == 1  # not in the world: available
    assert json.loads(result.stdout)["domain"] == "xn--bcher-kva.test"


def test_free_provider(world: World) -> None:
    result = lapsewatch("domain", "someone@GMail.com", "--format", "json", env=world.env())
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["free_provider"] is True
    assert data["observations"] == []


@pytest.mark.parametrize("bad", ["", "not an address@", "a@localhost", "a@[127.0.0.1]", "a@co.uk"])
def test_bad_input_exits_2(bad: str) -> None:
    result = lapsewatch("domain", bad)
    assert result.returncode == 2
    assert "error" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_bad_verified_at_exits_2() -> None:
    result = lapsewatch("domain", "a@alive.test", "--verified-at", "last tuesday")
    assert result.returncode == 2
    assert "--verified-at" in result.stderr


def test_bad_configuration_exits_2() -> None:
    result = lapsewatch("domain", "a@alive.test", env={"LAPSEWATCH_DNS_NAMESERVERS": "127.0.0.1:x"})
    assert result.returncode == 2
    assert "LAPSEWATCH_DNS_NAMESERVERS" in result.stderr


def test_nothing_reachable_is_unknown_not_a_crash(tmp_path: object) -> None:
    env = {
        "LAPSEWATCH_RDAP_BOOTSTRAP_URL": "http://127.0.0.1:9/dns.json",
        "LAPSEWATCH_DNS_NAMESERVERS": "127.0.0.1:9",
        "LAPSEWATCH_TIMEOUT": "0.3",
    }
    result = lapsewatch("domain", "a@alive.test", "--format", "json", env=env)
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["verdict"] == "unknown"


def test_help_lists_the_commands() -> None:
    result = lapsewatch("--help", process=True)
    assert result.returncode == 0
    for command in ("domain", "demo", "rdap-bootstrap"):
        assert command in result.stdout


def test_demo_runs_the_main_job_offline(tmp_path: Path) -> None:
    """Import a registry into SQLite, one check cycle against the world, the report."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = lapsewatch("demo", "--database", url, "--format", "json", process=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    verdicts = {d["domain"]: d["verdict"] for d in data["domains"]}
    assert verdicts["alive.test"] == "registered"
    assert verdicts["caught.test"] == "reregistered"
    assert verdicts["redeeming.test"] == "redemption"
    assert verdicts["rdap-broken.test"] == "unknown"
    assert data["cycle"]["unverified"] == data["report"]["addresses"]["unverified_by_lapsewatch"]
    shown = lapsewatch(
        "accounts", "show", "bob", "--format", "json", env={"LAPSEWATCH_DATABASE_URL": url}
    )
    emails = {e["address"]: e for e in json.loads(shown.stdout)["emails"]}
    assert emails["bob@redeeming.test"]["verified"] is False
    assert emails["bob@redeeming.test"]["unverify_reason"] == "redemption"
    assert emails["bob@proton.me"]["verified"] is True


def test_demo_all_domains() -> None:
    result = lapsewatch("demo", "--all-domains", "--format", "json")
    assert result.returncode == 0, result.stderr
    verdicts = {d["domain"]: d["verdict"] for d in json.loads(result.stdout)}
    assert verdicts["caught.test"] == "reregistered"
    assert verdicts["rdap-slow.test"] == "unknown"


@pytest.mark.nsd
def test_demo_with_nsd(require_nsd: None) -> None:
    result = lapsewatch("demo", "--all-domains", "--dns", "nsd", "--format", "json")
    assert result.returncode == 0, result.stderr
    verdicts = {d["domain"]: d["verdict"] for d in json.loads(result.stdout)}
    assert verdicts["vacant.test"] == "available"
    assert verdicts["parked.test"] == "for_sale"


def test_demo_world_serves_until_interrupted() -> None:
    """The newcomer's path: start the world in one shell, point lapsewatch at it from another."""
    import signal

    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    # Ctrl-C reaches it as it reaches a command typed in a terminal: a test run started
    # in the background (``pytest &``) ignores SIGINT, a child inherits that, and the
    # world never stopped. (Not ``preexec_fn``: this process has threads.)
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen(
        [sys.executable, "-m", "lapsewatch", "demo", "--world"],
        env={**environ, "COLUMNS": "300", "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert process.stdout is not None
        env: dict[str, str] = {}
        for line in process.stdout:
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                env[key] = value
            if line.startswith("Domains:"):
                break
        assert "LAPSEWATCH_RDAP_BOOTSTRAP_URL" in env
        result = lapsewatch("domain", "m@deleting.test", "--format", "json", env=env)
        assert json.loads(result.stdout)["verdict"] == "pending_delete"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            _, stderr = process.communicate(timeout=10)
            pytest.fail(f"the world did not stop within 10 s of Ctrl-C:\n{stderr[-6000:]}")
    assert process.returncode == 0, stderr[-3000:]


def test_a_crash_in_this_process_fails_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/cli_support.py raises what escapes a command: a real process would exit 1
    with a traceback, which a test expecting exit code 1 could take for a verdict."""
    import lapsewatch.commands.domain as domain_command

    def crash() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(domain_command, "load_settings", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        lapsewatch("domain", "a@alive.test")
