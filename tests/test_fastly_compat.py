"""Issue #16: the Fastly-compatible status endpoint.

Every verdict answered from the store, live checks against the local world
(applied and stored as the cycle would), 401 without a key, the rate limit on
live checks, the ``unknown`` option, and the request exactly as Warehouse's
``FastlyDomainStatusService`` sends it, over a real HTTP server.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from lapsewatch.config import ConfigError
from lapsewatch.cycle.domaincheck import CycleDomainChecker
from lapsewatch.logs import JsonFormatter
from lapsewatch.sources import Observation
from lapsewatch.sources.dns import DnsSource
from lapsewatch.store import Account, Domain, Email, make_sessionmaker
from lapsewatch.verdict import Verdict
from lapsewatch.web.apikeys import revoke_api_key
from lapsewatch.web.fastly_compat import (
    PYPI_UNVERIFY,
    STATUS_PATH,
    StatusApiSettings,
    UnknownAs,
    tokens_for,
)
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import NOW, seed, settings_for
from tests.mail_support import account_settings
from tests.metrics_support import scrape, total
from tests.web_support import LiveServer, make_api_key, make_service, make_web_app

# The mapping docs/status-api.md documents (issue #16).
EXPECTED_TOKENS = {
    "registered": "active",
    "available": "undelegated inactive",
    "redemption": "deleting",
    "pending_delete": "deleting",
    "expiring": "expiring",
    "for_sale": "active marketed",
    "reregistered": "active expiring",
    "mail_host_lapsed": "active expiring",
    "unknown": "unknown",
}

# What lapsewatch finds for the demo world's domains (the cycle tests' verdicts).
WORLD_VERDICTS = {
    "alive.test": "registered",
    "redeeming.test": "redemption",
    "caught.test": "reregistered",
    "vacant.test": "available",
    "deleting.test": "pending_delete",
    "lapsing.test": "expiring",
    "parked.test": "for_sale",
    "rdap-broken.test": "unknown",
}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


def make_app(
    engine: Engine,
    world: World | None = None,
    status: StatusApiSettings | None = None,
    **env: str,
) -> FastAPI:
    service = make_service(engine, account_settings("smtp://127.0.0.1:1"))
    checker = CycleDomainChecker(settings_for(world, **env)) if world is not None else None
    app = make_web_app(engine, service, checker=checker)
    # Live checks unthrottled but where a test is about the throttle.
    app.state.status_api = status or StatusApiSettings(live_rate=1000.0)
    return app


def ask(client: TestClient, domain: str, key: str) -> dict[str, object]:
    response = client.get(STATUS_PATH, params={"domain": domain}, headers={"Fastly-Key": key})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def store_verdict(
    engine: Engine,
    name: str,
    verdict: str,
    *,
    checked: datetime | None = None,
    expires: datetime | None = None,
) -> None:
    with make_sessionmaker(engine).begin() as session:
        session.merge(
            Domain(
                name=name,
                last_verdict=verdict,
                last_reason=f"because {verdict}",
                last_checked_at=checked or datetime.now(UTC) - timedelta(hours=1),
                next_due_at=datetime.now(UTC) + timedelta(days=30),
                expires_at=expires,
                consecutive_failures=0,
            )
        )


# ------------------------------------------------------------------------ the mapping


def test_every_verdict_has_its_documented_tokens() -> None:
    far = NOW + timedelta(days=200)
    for member in Verdict:
        assert member.value in EXPECTED_TOKENS, f"{member} has no documented tokens"
    for verdict, expected in EXPECTED_TOKENS.items():
        assert " ".join(tokens_for(verdict, expires_at=far, now=NOW)) == expected, verdict


def test_tokens_make_pypi_unverify_exactly_the_dangerous_verdicts_but_for_sale() -> None:
    """Warehouse unverifies on undelegated, inactive, expiring, deleting and unknown."""
    for verdict, tokens in EXPECTED_TOKENS.items():
        caught = bool(set(tokens.split()) & PYPI_UNVERIFY)
        if verdict in ("registered", "for_sale"):
            assert not caught, verdict  # for_sale: Fastly's own "marketed" is not caught
        else:
            assert caught, verdict  # unknown too: that is PyPI's choice (docs/status-api.md)


def test_a_new_dangerous_verdict_is_caught_generically(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tokens_for("mail_host_lapsed", expires_at=None, now=NOW) == ("active", "expiring")
    # A verdict neither table nor enum knows: doubt, never "active".
    assert tokens_for("something_new", expires_at=None, now=NOW) == ("unknown",)
    # A dangerous verdict the enum knows but the table does not: a caught token.
    from lapsewatch.web import fastly_compat

    monkeypatch.setattr(
        fastly_compat,
        "TOKENS",
        {k: v for k, v in fastly_compat.TOKENS.items() if k != "redemption"},
    )
    assert set(tokens_for("redemption", expires_at=None, now=NOW)) & PYPI_UNVERIFY


def test_registered_near_its_expiry_also_says_expiring() -> None:
    soon, later = NOW + timedelta(days=20), NOW + timedelta(days=40)
    assert tokens_for("registered", expires_at=soon, now=NOW) == ("active", "expiring")
    assert tokens_for("registered", expires_at=later, now=NOW) == ("active",)
    assert tokens_for("registered", expires_at=soon, now=NOW, expiring_days=0) == ("active",)


def test_settings_from_env() -> None:
    settings = StatusApiSettings.from_env(
        {
            "LAPSEWATCH_STATUS_MAX_AGE_HOURS": "6",
            "LAPSEWATCH_STATUS_LIVE_RATE": "2",
            "LAPSEWATCH_STATUS_UNKNOWN_AS": "error",
            "LAPSEWATCH_STATUS_EXPIRING_DAYS": "0",
        }
    )
    assert settings == StatusApiSettings(timedelta(hours=6), 2.0, UnknownAs.error, 0)
    assert StatusApiSettings.from_env({}) == StatusApiSettings()
    for bad in (
        {"LAPSEWATCH_STATUS_UNKNOWN_AS": "active"},
        {"LAPSEWATCH_STATUS_LIVE_RATE": "0"},
        {"LAPSEWATCH_STATUS_MAX_AGE_HOURS": "soon"},
    ):
        with pytest.raises(ConfigError):
            StatusApiSettings.from_env(bad)


# ---------------------------------------------------------------------- from the store


def test_every_verdict_answered_from_the_store(engine: Engine) -> None:
    key = make_api_key(engine)
    far = datetime.now(UTC) + timedelta(days=300)
    for verdict in EXPECTED_TOKENS:
        store_verdict(engine, f"{verdict.replace('_', '-')}.example", verdict, expires=far)
    store_verdict(
        engine, "renewing.example", "registered", expires=datetime.now(UTC) + timedelta(days=9)
    )
    with TestClient(make_app(engine)) as client:
        for verdict, tokens in EXPECTED_TOKENS.items():
            name = f"{verdict.replace('_', '-')}.example"
            body = ask(client, name, key)
            assert body["status"] == tokens, verdict
            assert body["domain"] == name
            assert body["zone"] == "example"
            assert body["tags"] == ""
            assert body["scope"] == "estimate"
            extra = body["lapsewatch"]
            assert isinstance(extra, dict)
            assert extra["verdict"] == verdict
            assert extra["reason"] == f"because {verdict}"
            assert extra["answered_from"] == "store"
            assert extra["unverify"] is (verdict not in ("registered", "unknown"))
        assert ask(client, "renewing.example", key)["status"] == "active expiring"
        # A host or an address is judged by its registrable domain.
        host = ask(client, "mail.available.example", key)
        assert host["status"] == "undelegated inactive"
        assert host["domain"] == "mail.available.example"
        # Free providers are not checked; they are active.
        assert ask(client, "gmail.com", key)["status"] == "active"


def test_unknown_as_error_answers_503(engine: Engine) -> None:
    key = make_api_key(engine)
    store_verdict(engine, "doubt.example", "unknown")
    status = StatusApiSettings(live_rate=1000.0, unknown_as=UnknownAs.error)
    with TestClient(make_app(engine, status=status)) as client:
        response = client.get(
            STATUS_PATH, params={"domain": "doubt.example"}, headers={"Fastly-Key": key}
        )
        assert response.status_code == 503
        assert response.headers["retry-after"] == "3600"


def test_without_a_valid_key_401(engine: Engine) -> None:
    key = make_api_key(engine, "pypi")
    store_verdict(engine, "alive.example", "registered")
    with TestClient(make_app(engine)) as client:
        for headers in (
            {},
            {"Fastly-Key": "lw_wrong"},
            {"Fastly-Key": ""},
            {"Authorization": f"Bearer {key}"},  # the JSON API's header is not Fastly's
        ):
            response = client.get(STATUS_PATH, params={"domain": "alive.example"}, headers=headers)
            assert response.status_code == 401, headers
            assert response.json() == {"msg": "Provided credentials are missing or invalid"}
        assert ask(client, "alive.example", key)["status"] == "active"
        with make_sessionmaker(engine).begin() as session:
            assert revoke_api_key(session, "pypi", now=datetime.now(UTC))
        response = client.get(
            STATUS_PATH, params={"domain": "alive.example"}, headers={"Fastly-Key": key}
        )
        assert response.status_code == 401


def test_bad_requests_are_400(engine: Engine) -> None:
    key = make_api_key(engine)
    with TestClient(make_app(engine)) as client:
        for params in ({}, {"domain": ""}, {"domain": "no spaces.example"}, {"domain": "com"}):
            response = client.get(STATUS_PATH, params=params, headers={"Fastly-Key": key})
            assert response.status_code == 400, params
            assert response.json()["msg"] == "Bad request"


# ------------------------------------------------------------------------- live checks


def test_live_checks_against_the_world_are_applied_and_stored(world: World, engine: Engine) -> None:
    seed(engine)  # the registry's addresses: caught.test was verified before it changed hands
    key = make_api_key(engine)
    with TestClient(make_app(engine, world)) as client:
        for name, verdict in WORLD_VERDICTS.items():
            body = ask(client, name, key)
            extra = body["lapsewatch"]
            assert isinstance(extra, dict)
            assert extra["answered_from"] == "live", name
            assert extra["verdict"] == verdict, (name, extra["reason"])
            expected = EXPECTED_TOKENS[verdict]
            if verdict == "registered" and body["status"] != expected:
                assert body["status"] == "active expiring"  # its expiry is near
            else:
                assert body["status"] == expected, name
        # Stored: the next question is answered from the store, with the same tokens.
        again = ask(client, "redeeming.test", key)
        assert again["status"] == "deleting"
        assert again["lapsewatch"]["answered_from"] == "store"  # type: ignore[index]
    with make_sessionmaker(engine)() as session:
        bob = session.scalars(select(Email).where(Email.address == "bob@redeeming.test")).one()
        assert not bob.verified
        assert bob.unverify_reason == "redemption"
        row = session.get(Domain, "vacant.test")
        assert row is not None
        assert row.last_verdict == "available"


def test_a_domain_nobody_pushed_is_checked_live_and_kept(world: World, engine: Engine) -> None:
    key = make_api_key(engine)
    with TestClient(make_app(engine, world)) as client:
        body = ask(client, "deleting.test", key)
        assert body["status"] == "deleting"
        assert ask(client, "deleting.test", key)["lapsewatch"]["answered_from"] == "store"  # type: ignore[index]
    with make_sessionmaker(engine)() as session:
        assert session.get(Domain, "deleting.test") is not None


def test_a_stale_verdict_is_checked_again(world: World, engine: Engine) -> None:
    key = make_api_key(engine)
    store_verdict(
        engine, "vacant.test", "registered", checked=datetime.now(UTC) - timedelta(days=3)
    )
    with TestClient(make_app(engine, world)) as client:
        body = ask(client, "vacant.test", key)
        assert body["status"] == "undelegated inactive"
        assert body["lapsewatch"]["answered_from"] == "live"  # type: ignore[index]


def test_live_checks_are_rate_limited(world: World, engine: Engine) -> None:
    key = make_api_key(engine)
    status = StatusApiSettings(live_rate=0.01)  # one check, then one per 100 s
    with TestClient(make_app(engine, world, status)) as client:
        assert ask(client, "alive.test", key)["lapsewatch"]["answered_from"] == "live"  # type: ignore[index]
        response = client.get(
            STATUS_PATH, params={"domain": "parked.test"}, headers={"Fastly-Key": key}
        )
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        # What is in the store is still answered.
        assert ask(client, "alive.test", key)["lapsewatch"]["answered_from"] == "store"  # type: ignore[index]


def test_a_live_check_of_a_lapsed_mail_host(world: World, engine: Engine) -> None:
    """The demo world's mailed.test is healthy, but its mail hosts are on old-mail.test,
    which lapsed: checked live, it is ``mail_host_lapsed``, in tokens PyPI unverifies
    on, and its verified address is unverified for that reason."""
    with make_sessionmaker(engine).begin() as session:
        account = Account(username="ken", created_at=NOW - timedelta(days=3000), projects=[])
        account.emails.append(
            Email(
                address="ken@mailed.test",
                domain="mailed.test",
                primary=True,
                verified=True,
                verified_at=datetime(2019, 9, 9, tzinfo=UTC),
            )
        )
        session.add(account)
        session.add(Domain(name="mailed.test", consecutive_failures=0))
    key = make_api_key(engine)
    # A 2 s timeout: on a loaded machine an MX read lost at 0.5 s leaves no mail hosts
    # (the check is then "registered", as it should be without them).
    with TestClient(make_app(engine, world, LAPSEWATCH_TIMEOUT="2")) as client:
        body = ask(client, "mailed.test", key)
        extra = body["lapsewatch"]
        assert isinstance(extra, dict)
        assert extra["answered_from"] == "live"
        assert extra["verdict"] == "mail_host_lapsed", extra["reason"]
        assert "old-mail.test" in str(extra["reason"])
        assert extra["unverify"] is True
        assert body["status"] == "active expiring"
        assert PYPI_UNVERIFY & set(str(body["status"]).split())
        again = ask(client, "mailed.test", key)["lapsewatch"]
        assert again["answered_from"] == "store"  # type: ignore[index]
        assert again["verdict"] == "mail_host_lapsed"  # type: ignore[index]
    with make_sessionmaker(engine)() as session:
        ken = session.scalars(select(Email).where(Email.address == "ken@mailed.test")).one()
        assert not ken.verified
        assert ken.unverify_reason == "mail_host_lapsed"


def test_a_live_check_is_counted_in_metrics_and_logged_with_its_domain(
    world: World, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a cycle's check: by verdict, each source's outcome, requests per server,
    latency and the addresses unverified; its log lines carry domain and source."""
    seed(engine)  # dave@vacant.test is verified
    key = make_api_key(engine)
    observe_with = DnsSource.observe_with

    async def observe_and_say(
        self: DnsSource, domain: str, *, mail_hosts: bool = True
    ) -> Observation:
        logging.getLogger("lapsewatch.sources.dns").info("asking")
        return await observe_with(self, domain, mail_hosts=mail_hosts)

    monkeypatch.setattr(DnsSource, "observe_with", observe_and_say)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("lapsewatch")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with TestClient(make_app(engine, world)) as client:
            before = scrape(client)
            assert ask(client, "vacant.test", key)["lapsewatch"]["answered_from"] == "live"  # type: ignore[index]
            after = scrape(client)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    rdap = f"127.0.0.1:{urlsplit(world.rdap_url).port}"
    assert moved("lapsewatch_checks_total") == 1
    assert moved("lapsewatch_checks_total", verdict="available") == 1
    assert moved("lapsewatch_source_observations_total", source="rdap", outcome="answered") == 1
    assert moved("lapsewatch_source_observations_total", source="dns", outcome="answered") == 1
    assert moved("lapsewatch_source_requests_total", source="rdap", server=rdap) >= 1
    assert moved("lapsewatch_source_latency_seconds_count", source="rdap") == 1
    assert moved("lapsewatch_source_latency_seconds_count", source="dns") == 1
    assert moved("lapsewatch_unverified_total", reason="available") == 1  # dave@vacant.test
    assert moved("lapsewatch_status_api_answers_total", answer="live") == 1
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    result = [e for e in logged if e["logger"] == "lapsewatch.cycle.results"]
    assert [(e["domain"], e["verdict"], e["unverified"]) for e in result] == [
        ("vacant.test", "available", 1)
    ]
    asking = [e for e in logged if e["msg"] == "asking"]
    assert [(e["domain"], e["source"]) for e in asking] == [("vacant.test", "dns")]


# --------------------------------------------------------------- Warehouse, as it sends


def warehouse_domain_status(
    session: requests.Session, base_url: str, api_key: str, domain: str
) -> list[str] | None:
    """What Warehouse's ``FastlyDomainStatusService.get_domain_status`` does: one GET,
    the key in ``Fastly-Key``, 5 s; an error is ``None`` (retried later), else the
    status tokens."""
    try:
        response = session.get(
            f"{base_url}/domain-management/v1/tools/status",
            params={"domain": domain},
            headers={"Fastly-Key": api_key},
            timeout=5,
        )
        response.raise_for_status()
    except requests.RequestException:
        return None
    status = response.json()["status"]
    assert isinstance(status, str)
    return status.split()


def warehouse_unverifies(status: list[str] | None) -> bool:
    """Warehouse's rule: unverify when any of these tokens is in the last status."""
    if status is None:
        return False
    return any(
        token in status for token in ("undelegated", "inactive", "expiring", "deleting", "unknown")
    )


def test_warehouse_request_shape_is_answered(world: World, engine: Engine) -> None:
    seed(engine)
    key = make_api_key(engine, "pypi")
    store_verdict(engine, "mail-lapsed.example", "mail_host_lapsed")
    server = LiveServer()
    server.start(make_app(engine, world))
    try:
        with requests.Session() as session:
            for name, verdict in WORLD_VERDICTS.items():
                status = warehouse_domain_status(session, server.url, key, name)
                assert status is not None, name
                # PyPI unverifies on every dangerous verdict but for_sale, and on unknown.
                assert warehouse_unverifies(status) is (
                    verdict not in ("registered", "for_sale")
                ), (name, status)
            assert warehouse_domain_status(session, server.url, key, "mail-lapsed.example") == [
                "active",
                "expiring",
            ]
            # A bad key is an error to Warehouse: nothing is unverified.
            assert warehouse_domain_status(session, server.url, "wrong", "vacant.test") is None
    finally:
        server.stop()
