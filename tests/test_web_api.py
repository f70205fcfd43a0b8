"""The JSON API and webhook deliveries, on SQLite and PostgreSQL: API keys, pushing
addresses (idempotent, as the importer), reading verdicts after a real cycle
against the local world, and signed webhooks received by a real HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from lapsewatch.config import Settings
from lapsewatch.cycle import run_cycle
from lapsewatch.report import build_report
from lapsewatch.store import Account, make_sessionmaker
from lapsewatch.store.models import WebhookDelivery
from lapsewatch.web.apikeys import revoke_api_key
from lapsewatch.web.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    backoff,
    deliver_webhooks,
    verify_signature,
)
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import EXPECTED_UNVERIFIED, NOW, seed
from tests.mail_support import account_settings
from tests.web_support import (
    LOOPBACK,
    Receiver,
    install_fake_dns,
    make_api_key,
    make_service,
    make_web_app,
)

ALLOW = LOOPBACK.webhook_allow
"""The operator's allow-list that lets deliveries reach the loopback receivers."""


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_dns(monkeypatch)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


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
def anonymous(engine: Engine) -> Iterator[TestClient]:
    service = make_service(engine, account_settings("smtp://127.0.0.1:1"))
    with TestClient(make_web_app(engine, service, web_settings=LOOPBACK)) as client:
        yield client


@pytest.fixture
def api(anonymous: TestClient, engine: Engine) -> TestClient:
    anonymous.headers["Authorization"] = f"Bearer {make_api_key(engine)}"
    return anonymous


def cycle(engine: Engine, world: World) -> None:
    """The registry's accounts (pushed with its key, so the key reads them) and a cycle."""
    seed(engine)
    with make_sessionmaker(engine).begin() as session:
        session.execute(update(Account).values(owner="api:registry"))
    run_cycle(check_settings(world), engine, now=datetime.now(UTC))


# ------------------------------------------------------------------------------- keys


def test_every_endpoint_needs_a_valid_key(anonymous: TestClient, engine: Engine) -> None:
    calls = [
        ("GET", "/api/v1/report"),
        ("GET", "/api/v1/addresses/a@b.test"),
        ("GET", "/api/v1/domains/b.test"),
        ("GET", "/api/v1/webhooks"),
        ("DELETE", "/api/v1/webhooks/1"),
        ("POST", "/api/v1/webhooks"),
        ("POST", "/api/v1/addresses"),
    ]
    key = make_api_key(engine, "old")
    for headers in ({}, {"Authorization": "Bearer lw_wrong"}, {"Authorization": f"Basic {key}"}):
        for method, path in calls:
            response = anonymous.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["detail"].startswith("a valid API key is required")
    good = {"Authorization": f"Bearer {key}"}
    assert anonymous.get("/api/v1/report", headers=good).status_code == 200
    with make_sessionmaker(engine).begin() as session:
        assert revoke_api_key(session, "old", now=datetime.now(UTC))
    assert anonymous.get("/api/v1/report", headers=good).status_code == 401


def test_openapi_schema_documents_the_api(anonymous: TestClient) -> None:
    schema = anonymous.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {
        "/api/v1/addresses",
        "/api/v1/addresses/{address}",
        "/api/v1/domains/{domain}",
        "/api/v1/report",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{webhook_id}",
    }
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {t["name"] for t in schema["tags"]} == {"addresses", "domains", "report", "webhooks"}
    report = paths["/api/v1/report"]["get"]["responses"]["200"]["content"]["application/json"]
    assert report["schema"]["$ref"].endswith("/ReportOut")
    assert anonymous.get("/docs").status_code == 404  # Swagger UI would load a CDN
    page = anonymous.get("/api")
    assert "POST /api/v1/addresses" in page.text


# -------------------------------------------------------------------------- addresses


def test_push_addresses_is_idempotent(api: TestClient, engine: Engine) -> None:
    long_ago = "2019-05-01T00:00:00+00:00"
    body = {
        "addresses": [
            {
                "username": "m",
                "address": "m@lapsed.test",
                "verified": True,
                "verified_at": long_ago,
            },
            {"username": "m", "address": "M@Gmail.com", "verified": True, "primary": True},
            {"username": "n", "address": "n@n.test", "verified": False},
        ]
    }
    first = api.post("/api/v1/addresses", json=body)
    assert first.status_code == 200
    assert first.json() | {"warnings": []} == {
        "received": 3,
        "accounts_created": 2,
        "accounts_updated": 0,
        "emails_added": 3,
        "emails_updated": 0,
        "domains_added": 2,
        "unchanged": 0,
        "rejected": [],
        "warnings": [],
    }
    again = api.post("/api/v1/addresses", json=body).json()
    assert again["unchanged"] == 3
    assert again["emails_added"] == again["emails_updated"] == again["accounts_created"] == 0

    address = api.get("/api/v1/addresses/m@lapsed.test").json()
    assert address["state"] == "verified"
    assert address["should_be_verified"] is True
    assert address["verified_at"].startswith("2019-05-01T00:00:00")
    assert address["domain_verdict"] is None  # not checked yet
    assert api.get("/api/v1/addresses/m@gmail.com").json()["free_provider"] is True
    assert api.get("/api/v1/addresses/nobody@lapsed.test").status_code == 404


def test_push_reports_bad_addresses_by_position(api: TestClient) -> None:
    body = {
        "addresses": [
            {"username": "m", "address": "m@good.test", "verified": True},
            {"username": "m", "address": "no at sign", "verified": True},
            {
                "username": "m",
                "address": "m@later.test",
                "verified": True,
                "verified_at": "2999-01-01T00:00:00Z",
            },
        ]
    }
    result = api.post("/api/v1/addresses", json=body).json()
    assert [p["index"] for p in result["rejected"]] == [1, 2]
    assert "in the future" in result["rejected"][1]["message"]
    assert result["emails_added"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"addresses": []},
        {"addresses": [{"username": "m", "address": "m@x.test"}]},
        {
            "addresses": [
                {
                    "username": "m",
                    "address": "m@x.test",
                    "verified": True,
                    "verified_at": "2020-01-01T00:00:00",
                }
            ]
        },  # no time zone
        {"addresses": [{"username": "m", "address": "m@x.test", "verified": True, "x": 1}]},
    ],
)
def test_push_validates_the_body(api: TestClient, body: dict[str, object]) -> None:
    assert api.post("/api/v1/addresses", json=body).status_code == 422


def test_a_push_does_not_reverify_what_lapsewatch_unverified(
    api: TestClient, engine: Engine, world: World
) -> None:
    cycle(engine, world)
    old = {
        "username": "bob",
        "address": "bob@redeeming.test",
        "verified": True,
        "verified_at": "2019-05-01T00:00:00+00:00",
    }
    api.post("/api/v1/addresses", json={"addresses": [old]})
    bob = api.get("/api/v1/addresses/bob@redeeming.test").json()
    assert bob["state"] == "unverified"


# ------------------------------------------------------------------- verdicts, report


def test_addresses_and_domains_after_a_cycle(api: TestClient, engine: Engine, world: World) -> None:
    cycle(engine, world)
    bob = api.get("/api/v1/addresses/BOB@REDEEMING.TEST").json()
    assert bob["address"] == "bob@redeeming.test"
    assert bob["username"] == "bob"
    assert bob["state"] == "unverified"
    assert bob["should_be_verified"] is False
    assert bob["unverify_reason"] == "redemption"
    assert "redemption period" in bob["reason"]
    assert bob["domain_verdict"] == "redemption"
    for address, verdict in EXPECTED_UNVERIFIED.items():
        assert api.get(f"/api/v1/addresses/{address}").json()["unverify_reason"] == verdict

    domain = api.get("/api/v1/domains/redeeming.test").json()
    assert domain["verdict"] == "redemption"
    assert domain["addresses"] == 1
    assert {o["source"] for o in domain["observations"]} == {"rdap", "dns", "fastly"}
    assert all(o["evidence"] is None for o in domain["observations"])
    with_evidence = api.get("/api/v1/domains/redeeming.test?evidence=true").json()
    rdap = next(o for o in with_evidence["observations"] if o["source"] == "rdap")
    assert "redemption period" in rdap["evidence"]

    assert api.get("/api/v1/domains/www.lapsing.test").json()["domain"] == "lapsing.test"
    assert api.get("/api/v1/domains/erin@mail.lapsing.test").json()["domain"] == "lapsing.test"
    assert api.get("/api/v1/domains/nowhere.test").status_code == 404
    bad = api.get("/api/v1/domains/not a domain")
    assert bad.status_code == 404
    assert bad.json()["detail"].startswith("not a domain name")


def test_report_matches_the_cli_report(api: TestClient, engine: Engine, world: World) -> None:
    cycle(engine, world)
    data = api.get("/api/v1/report").json()
    report = build_report(engine)
    assert data["addresses"]["unverified_by_lapsewatch"] == len(EXPECTED_UNVERIFIED)
    assert data["addresses"]["total"] == report.addresses.total
    assert [(c["name"], c["count"]) for c in data["domains_by_verdict"]] == list(
        report.domains_by_verdict
    )
    assert data["accounts_at_risk_total"] == report.accounts_at_risk_total
    assert [d["domain"] for d in data["next_due"]] == [d.domain for d in report.next_due]


# ---------------------------------------------------------------------------- webhooks


def test_webhooks_are_registered_listed_and_stopped(api: TestClient) -> None:
    created = api.post("/api/v1/webhooks", json={"url": "https://registry.test/hook"})
    assert created.status_code == 201
    hook = created.json()
    assert hook["secret"].startswith("whsec_")
    listed = api.get("/api/v1/webhooks").json()
    assert listed == [{k: v for k, v in hook.items() if k != "secret"}]
    for url in [
        "ftp://registry.test/x",
        "https:///nohost",
        "http://a b.test/x",
        "javascript:x",
        "https://unknown-name.test/x",  # does not resolve
    ]:
        assert api.post("/api/v1/webhooks", json={"url": url}).status_code in (400, 422), url
    assert api.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 204
    assert api.delete(f"/api/v1/webhooks/{hook['id']}").status_code == 404
    assert api.get("/api/v1/webhooks").json() == []
    assert api.delete("/api/v1/webhooks/999999").status_code == 404


def _deliveries(engine: Engine) -> list[WebhookDelivery]:
    with make_sessionmaker(engine)() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_unverifications_are_delivered_signed(
    api: TestClient, engine: Engine, world: World
) -> None:
    with Receiver().running() as receiver:
        hook = api.post("/api/v1/webhooks", json={"url": receiver.url}).json()
        stopped = api.post("/api/v1/webhooks", json={"url": receiver.url + "/old"}).json()
        api.delete(f"/api/v1/webhooks/{stopped['id']}")
        cycle(engine, world)
        now = datetime.now(UTC)
        summary = deliver_webhooks(engine, now=now, allow=ALLOW)
        assert (summary.queued, summary.delivered, summary.failed) == (7, 7, 0)
        assert len(receiver.received) == 7
        for message in receiver.received:
            assert message.headers[EVENT_HEADER] == "email.unverified"
            assert message.headers[DELIVERY_HEADER].isdigit()
            assert verify_signature(
                hook["secret"],
                timestamp=message.headers[TIMESTAMP_HEADER],
                body=message.body,
                signature=message.headers[SIGNATURE_HEADER],
            )
            assert not verify_signature(
                "whsec_another",
                timestamp=message.headers[TIMESTAMP_HEADER],
                body=message.body,
                signature=message.headers[SIGNATURE_HEADER],
            )
            assert not verify_signature(  # a replay, an hour later
                hook["secret"],
                timestamp=message.headers[TIMESTAMP_HEADER],
                body=message.body,
                signature=message.headers[SIGNATURE_HEADER],
                now=now + timedelta(hours=1),
            )
        payloads = {m.json()["address"]: m.json() for m in receiver.received}
        assert {a: p["verdict"] for a, p in payloads.items()} == EXPECTED_UNVERIFIED
        bob = payloads["bob@redeeming.test"]
        assert bob["username"] == "bob"
        assert bob["domain"] == "redeeming.test"
        assert "redemption period" in bob["reason"]
        assert bob["type"] == "email.unverified"

        again = deliver_webhooks(engine, now=now + timedelta(hours=1), allow=ALLOW)
        assert (again.queued, again.delivered) == (0, 0)
        assert len(receiver.received) == 7
    assert all(d.delivered_at == now and d.attempts == 1 for d in _deliveries(engine))


def test_failed_deliveries_back_off_then_give_up(
    api: TestClient, engine: Engine, world: World
) -> None:
    with Receiver(status=500).running() as receiver:
        api.post("/api/v1/webhooks", json={"url": receiver.url})
        cycle(engine, world)
        now = datetime.now(UTC)
        first = deliver_webhooks(engine, now=now, max_attempts=3, allow=ALLOW)
        assert (first.delivered, first.failed) == (0, 7)
        assert {(d.attempts, d.next_attempt_at, d.last_error) for d in _deliveries(engine)} == {
            (1, now + timedelta(minutes=1), "HTTP 500")
        }
        assert (
            deliver_webhooks(engine, now=now + timedelta(seconds=30), allow=ALLOW).failed == 0
        )  # not yet
        second = deliver_webhooks(
            engine, now=now + timedelta(minutes=1), max_attempts=3, allow=ALLOW
        )
        assert second.failed == 7
        assert {d.next_attempt_at for d in _deliveries(engine)} == {now + timedelta(minutes=3)}
        receiver.status = 200
        third = deliver_webhooks(
            engine, now=now + timedelta(minutes=3), max_attempts=3, allow=ALLOW
        )
        assert third.delivered == 7
        assert len(receiver.received) == 21

    with make_sessionmaker(engine).begin() as session:  # a receiver that is gone for good
        for delivery in session.scalars(select(WebhookDelivery)):
            delivery.delivered_at = None
            delivery.attempts = 2
    gone = deliver_webhooks(engine, now=now + timedelta(minutes=10), max_attempts=3, allow=ALLOW)
    assert gone.gave_up == 7
    assert (
        deliver_webhooks(engine, now=now + timedelta(days=3), max_attempts=3, allow=ALLOW).gave_up
        == 0
    )


def test_backoff_doubles_up_to_six_hours() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [timedelta(minutes=m) for m in (1, 2, 4)]
    assert backoff(20) == timedelta(hours=6)


def test_two_webhooks_each_get_every_event(api: TestClient, engine: Engine, world: World) -> None:
    with Receiver().running() as one, Receiver().running() as two:
        api.post("/api/v1/webhooks", json={"url": one.url})
        api.post("/api/v1/webhooks", json={"url": two.url})
        cycle(engine, world)
        deliver_webhooks(engine, allow=ALLOW)
        assert len(one.received) == len(two.received) == 7
    with make_sessionmaker(engine)() as session:
        count = session.scalar(select(func.count()).select_from(WebhookDelivery))
        assert count == 14


def test_names_no_database_can_store_are_not_found(api: TestClient) -> None:
    """PostgreSQL refuses NUL in text with an error: it must be a 404, not a 500."""
    for path in ["/api/v1/addresses/a%00b@x.test", "/api/v1/addresses/%00", "/api/v1/domains/%00"]:
        assert api.get(path).status_code == 404, path
    pushed = api.post(
        "/api/v1/addresses",
        json={"addresses": [{"username": "a\u0000b", "address": "a@b.test", "verified": True}]},
    ).json()
    (problem,) = pushed["rejected"]
    assert problem["index"] == 0
    assert problem["message"].startswith("username ")
