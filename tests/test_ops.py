"""Issue #16: /healthz, /readyz and /metrics.

``/metrics`` is read with prometheus-client's own parser, before and after a real
cycle against the local world; ``/readyz`` is asked while PostgreSQL is reached
through a TCP proxy that then drops every connection (and, in another test,
goes silent); the metrics a separate ``lapsewatch check`` process counted reach
``/metrics`` through the metrics directory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from lapsewatch import metrics
from lapsewatch.cycle import run_cycle
from lapsewatch.store import Notice, make_engine, make_sessionmaker, upgrade
from lapsewatch.store.db import DbTimeouts
from lapsewatch.web.ops import OpsSettings
from lapsewatch.world import World, demo_scenario
from tests.cycle_support import EXPECTED_UNVERIFIED, NOW, seed, settings_for
from tests.mail_support import account_settings
from tests.services import POSTGRES_URL, postgres_reachable, require_service
from tests.web_support import make_service, make_web_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=1.0) as running:
        yield running


def client_for(engine: Engine, ops: OpsSettings | None = None) -> TestClient:
    service = make_service(engine, account_settings("smtp://127.0.0.1:1"))
    app = make_web_app(engine, service)
    if ops is not None:
        app.state.ops = ops
    return TestClient(app)


def scrape(client: TestClient, **headers: str) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus-client's parser."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (sample, sample_labels), v in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


# ----------------------------------------------------------------------------- health


def test_healthz_and_readyz_answer_when_all_is_well(engine: Engine) -> None:
    with client_for(engine) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "checks": {"database": "ok"}}


def test_readyz_fails_on_a_database_that_is_not_migrated(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with client_for(engine) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("not migrated: schema empty")
        assert client.get("/healthz").status_code == 200


@pytest.mark.redis
def test_readyz_checks_redis_when_a_broker_is_configured(
    engine: Engine, require_redis: None, closed_port: Callable[[], int]
) -> None:
    with client_for(engine, OpsSettings(redis_url="redis://127.0.0.1:6379/0")) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    port = closed_port()
    ops = OpsSettings(redis_url=f"redis://127.0.0.1:{port}/0", ready_timeout=2.0)
    with client_for(engine, ops) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert ready.json()["checks"]["redis"].startswith("unreachable")


def test_readyz_from_env_checks_redis_only_when_configured() -> None:
    assert OpsSettings.from_env({}).redis_url is None
    assert OpsSettings.from_env({"LAPSEWATCH_BROKER_URL": "redis://h:1/0"}).redis_url == (
        "redis://h:1/0"
    )
    assert OpsSettings.from_env({"LAPSEWATCH_METRICS_TOKEN": "t"}).metrics_token == "t"
    assert OpsSettings.from_env({}).healthz_database
    assert not OpsSettings.from_env({"LAPSEWATCH_HEALTHZ_DATABASE": "false"}).healthz_database
    # The pacer's shared Redis: only an explicit URL (auto is the broker's, for workers).
    for unset in ({}, {"LAPSEWATCH_PACE_REDIS": "auto"}, {"LAPSEWATCH_PACE_REDIS": "off"}):
        assert OpsSettings.from_env(unset).pace_redis_url is None
    both = OpsSettings.from_env(
        {"LAPSEWATCH_BROKER_URL": "redis://h:1/0", "LAPSEWATCH_PACE_REDIS": "redis://p:2/1"}
    )
    assert (both.redis_url, both.pace_redis_url) == ("redis://h:1/0", "redis://p:2/1")


def test_readyz_checks_the_pacers_redis_when_configured(
    engine: Engine, closed_port: Callable[[], int]
) -> None:
    """LAPSEWATCH_PACE_REDIS set, its Redis down (nothing listens on the port): not ready,
    whether or not a broker is configured."""
    port = closed_port()
    env = {
        "LAPSEWATCH_PACE_REDIS": f"redis://127.0.0.1:{port}/0",
        "LAPSEWATCH_READY_TIMEOUT": "2",
    }
    with client_for(engine, OpsSettings.from_env(env)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503, ready.text
    checks = ready.json()["checks"]
    assert checks["database"] == "ok"
    assert "redis" not in checks  # no broker configured
    assert checks["pace_redis"].startswith("unreachable")


@pytest.mark.redis
def test_readyz_checks_the_broker_and_the_pacers_redis(
    engine: Engine, require_redis: None, closed_port: Callable[[], int]
) -> None:
    up = "redis://127.0.0.1:6379/0"
    with client_for(engine, OpsSettings(redis_url=up, pace_redis_url=up)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "pace_redis": "ok"}
    port = closed_port()
    down = f"redis://127.0.0.1:{port}/0"
    with client_for(engine, OpsSettings(redis_url=up, pace_redis_url=down)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "ok"
    assert ready.json()["checks"]["pace_redis"].startswith("unreachable")


class DroppingProxy:
    """TCP to ``target`` until :meth:`drop` (every connection closed, new ones closed at
    once) or :meth:`silence` (accepted, then nothing); :meth:`restore` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.mode = "forward"
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def drop(self) -> None:
        with self._lock:
            self.mode = "drop"
            for pair in self._pairs:
                for sock in pair:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        self._selector.unregister(sock)
                    with contextlib.suppress(OSError):
                        sock.close()
            self._pairs.clear()

    def silence(self) -> None:
        with self._lock:
            self.mode = "silent"

    def restore(self) -> None:
        with self._lock:
            self.mode = "forward"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.drop()
        for sock in [self._listener, *self._held]:
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                with self._lock:
                    self._step(key)

    def _step(self, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        if sock is self._listener:
            client, _ = self._listener.accept()
            if self.mode == "drop":
                client.close()
            elif self.mode == "silent":
                self._held.append(client)
            else:
                server = socket.create_connection(self._target)
                self._pairs.append((client, server))
                self._selector.register(client, selectors.EVENT_READ, server)
                self._selector.register(server, selectors.EVENT_READ, client)
            return
        if self.mode == "silent":
            return
        try:
            data = sock.recv(65536)
            if data:
                key.data.sendall(data)
                return
        except OSError:
            pass
        for pair in [p for p in self._pairs if sock in p]:
            self._pairs.remove(pair)
            for end in pair:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(end)
                end.close()


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[DroppingProxy, str]]:
    """A fresh, migrated PostgreSQL database, and its URL through a proxy."""
    import psycopg

    require_service("PostgreSQL on 127.0.0.1:5432", postgres_reachable())
    url = make_url(POSTGRES_URL)
    name = f"lapsewatch_ops_{os.getpid()}_{threading.get_ident() % 10000}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    direct = make_engine(url.set(database=name).render_as_string(hide_password=False))
    upgrade(direct)
    direct.dispose()
    proxy = DroppingProxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(database=name, host="127.0.0.1", port=proxy.port)
    try:
        yield proxy, through.render_as_string(hide_password=False)
    finally:
        proxy.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_readyz_fails_while_the_database_is_dropped(
    proxied_postgres: tuple[DroppingProxy, str],
) -> None:
    proxy, url = proxied_postgres
    engine = make_engine(url, timeouts=DbTimeouts(connect=2, statement=2, lock=2))
    try:
        with client_for(engine, OpsSettings(ready_timeout=3.0)) as client:
            assert client.get("/readyz").status_code == 200
            proxy.drop()
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not ready"
            assert ready.json()["checks"]["database"].startswith("unreachable")
            down = client.get("/healthz")  # the web app cannot serve without its store
            assert down.status_code == 503
            assert down.json()["database"].startswith("unreachable")
            # /metrics still answers, and says the store is down.
            assert value(scrape(client), "lapsewatch_store_up") == 0
            proxy.restore()
            assert client.get("/readyz").status_code == 200
            assert value(scrape(client), "lapsewatch_store_up") == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_readyz_answers_in_time_when_the_database_goes_silent(
    proxied_postgres: tuple[DroppingProxy, str],
) -> None:
    proxy, url = proxied_postgres
    engine = make_engine(url, timeouts=DbTimeouts(connect=2, statement=2, lock=2))
    try:
        with client_for(engine, OpsSettings(ready_timeout=1.0)) as client:
            assert client.get("/readyz").status_code == 200
            proxy.drop()  # the pooled connection dies; new ones hang in silence
            proxy.silence()
            ready = client.get("/readyz")
            assert ready.status_code == 503
            problem = ready.json()["checks"]["database"]
            assert problem == "no answer within 1 s" or problem.startswith("unreachable")
            assert client.get("/healthz").status_code == 503
        # For orchestrators that restart a process on a failed liveness probe:
        shallow = OpsSettings(ready_timeout=1.0, healthz_database=False)
        with client_for(engine, shallow) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
    finally:
        proxy.restore()
        engine.dispose()


# ---------------------------------------------------------------------------- metrics


def test_metrics_parse_and_count_a_cycle(world: World, engine: Engine) -> None:
    seed(engine)
    with make_sessionmaker(engine).begin() as session:
        session.add(
            Notice(
                account_id=1,
                kind="advice",
                subject="s",
                body="b",
                created_at=datetime.now(UTC) - timedelta(hours=2),
            )
        )
    with client_for(engine) as client:
        before = scrape(client)
        assert value(before, "lapsewatch_store_up") == 1
        assert value(before, "lapsewatch_domains_due") == 10
        assert value(before, "lapsewatch_domains_never_checked") == 10
        assert value(before, "lapsewatch_notices_queued") == 1
        assert value(before, "lapsewatch_notices_oldest_queued_age_seconds") >= 7000
        summary = run_cycle(settings_for(world), engine, now=datetime.now(UTC))
        after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    # Counted by the process that ran the cycle (this one, no metrics directory).
    assert moved("lapsewatch_checks_total") == summary.checked == 10
    for verdict, count in summary.verdicts.items():
        assert moved("lapsewatch_checks_total", verdict=verdict) == count
    assert moved("lapsewatch_unverified_total") == summary.unverified == len(EXPECTED_UNVERIFIED)
    assert moved("lapsewatch_unverified_total", reason="expiring") == 2
    assert moved("lapsewatch_source_observations_total", source="rdap") == 10
    assert moved("lapsewatch_source_observations_total", source="dns", outcome="answered") > 0
    assert moved("lapsewatch_source_requests_total", source="rdap") >= 10
    assert moved("lapsewatch_source_latency_seconds_count", source="rdap") == 10
    assert moved("lapsewatch_source_latency_seconds_count", source="dns") == 10
    assert moved("lapsewatch_cycles_total", mode="process", outcome="ok") == 1
    start = value(after, "lapsewatch_cycle_last_start_timestamp_seconds", mode="process")
    end = value(after, "lapsewatch_cycle_last_end_timestamp_seconds", mode="process")
    assert 0 < start <= end
    assert value(after, "lapsewatch_cycle_last_duration_seconds", mode="process") > 0
    assert value(after, "lapsewatch_cycle_last_checked_domains", mode="process") == 10
    # Computed from the store at scrape time.
    assert value(after, "lapsewatch_domains_due") == 0
    assert value(after, "lapsewatch_domains_never_checked") == 0
    assert value(after, "lapsewatch_last_check_timestamp_seconds") >= start - 1
    assert value(after, "lapsewatch_domains", verdict="redemption") == 1
    assert total(after, "lapsewatch_addresses_unverified") == len(EXPECTED_UNVERIFIED)
    assert value(after, "lapsewatch_addresses_unverified", reason="reregistered") == 1
    assert value(after, "lapsewatch_notices_queued") > 1  # the cycle queued notices


def test_rate_limited_answers_are_counted_per_server(engine: Engine) -> None:
    """A world that admits 2 requests a second, asked 10 at once: its 429s are counted,
    labelled with the server that sent them."""
    seed(engine)
    with World(demo_scenario(now=NOW), rate_limit=2.0) as strict:
        server = f"127.0.0.1:{urlsplit(strict.rdap_url).port}"
        before = parse(metrics.render().decode())
        run_cycle(settings_for(strict), engine, now=datetime.now(UTC))
        after = parse(metrics.render().decode())
    labels = {"source": "rdap", "server": server}
    assert value(after, "lapsewatch_source_refusals_total", **labels) > value(
        before, "lapsewatch_source_refusals_total", **labels
    )
    assert value(after, "lapsewatch_source_requests_total", **labels) >= 10


def test_metrics_token_guards_metrics(engine: Engine) -> None:
    with client_for(engine, OpsSettings(metrics_token="s3cret")) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert scrape(client, Authorization="Bearer s3cret")
        assert client.get("/healthz").status_code == 200


def test_a_check_process_reaches_metrics_through_the_directory(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lapsewatch check`` is a process of its own: what it counted is read back from
    LAPSEWATCH_METRICS_DIR once it has exited (SQLite: the process boundary is the point)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'lapsewatch.db'}")
    upgrade(engine)
    seed(engine)
    directory = tmp_path / "metrics"
    env = {
        **os.environ,
        **world.env(),
        "LAPSEWATCH_TIMEOUT": "0.5",
        "LAPSEWATCH_ATTEMPTS": "2",
        "LAPSEWATCH_MAX_RETRY_AFTER": "1",
        "LAPSEWATCH_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "LAPSEWATCH_METRICS_DIR": str(directory),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "lapsewatch", "check", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # it unverified addresses
    assert list(directory.glob("counter_*.db")), "the check process wrote no metrics"
    monkeypatch.setattr(metrics, "_DIRECTORY", str(directory))
    with client_for(engine) as client:
        samples = scrape(client)
    assert total(samples, "lapsewatch_checks_total") == 10
    assert total(samples, "lapsewatch_unverified_total") == len(EXPECTED_UNVERIFIED)
    assert value(samples, "lapsewatch_cycles_total", mode="process", outcome="ok") == 1
    assert value(samples, "lapsewatch_cycle_last_end_timestamp_seconds", mode="process") > 0
    assert total(samples, "lapsewatch_source_latency_seconds_count", source="rdap") == 10
