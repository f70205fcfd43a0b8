"""Issue #11: a database that goes silent mid-cycle stops ``check`` within its timeout.

A TCP proxy stands between ``lapsewatch check`` and PostgreSQL; once a few
domains are committed it stops forwarding (connections stay open, nothing comes
back). The run must exit non-zero, with a clear error naming the timeout that
fired, within the configured timeouts (connect + statement + the watchdog's
grace), and what it committed before stays.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from lapsewatch.store import Account, Domain, Email, make_engine, make_sessionmaker, upgrade
from lapsewatch.store.db import WATCHDOG_GRACE
from lapsewatch.world import Scenario, World
from tests.services import POSTGRES_URL, postgres_reachable, require_service

LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)
DOMAINS = [f"d{i:02d}.test" for i in range(40)]
STATEMENT_TIMEOUT = 2.0
CONNECT_TIMEOUT = 4  # libpq: whole seconds; larger than the statement's, so that waiting
# out a reconnect after the cut (the run did, twice) shows against the bound below
EXIT_MARGIN = 3.0
"""Seconds to stop the run once the database timed out (cancel the checks, close the
sources, exit Python) on a loaded 2-core machine; about 1 s when idle."""


class SilentProxy:
    """Forwards TCP to ``target`` until :meth:`go_silent`; then forwards nothing, closes nothing."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._silent = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def go_silent(self) -> None:
        self._silent.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    self._sockets.append(client)
                    if self._silent.is_set():
                        continue  # accepted, and then nothing
                    server = socket.create_connection(self._target)
                    self._sockets.append(server)
                    selector.register(client, selectors.EVENT_READ, server)
                    selector.register(server, selectors.EVENT_READ, client)
                    continue
                if self._silent.is_set():
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(sock)  # stop reading: the peer hears nothing
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    with contextlib.suppress(KeyError, ValueError):
                        selector.unregister(sock)
                    continue
                with contextlib.suppress(OSError):
                    key.data.sendall(data)
        selector.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    import psycopg

    require_service("PostgreSQL on 127.0.0.1:5432", postgres_reachable())
    name = f"lapsewatch_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(engine: Engine) -> None:
    with make_sessionmaker(engine).begin() as session:
        for index, name in enumerate(DOMAINS):
            account = Account(username=f"user{index}", created_at=LONG_AGO, projects=[])
            account.emails.append(
                Email(
                    address=f"u{index}@{name}",
                    domain=name,
                    free_provider=False,
                    primary=True,
                    verified=True,
                    verified_at=LONG_AGO,
                )
            )
            session.add(account)
        session.add_all(Domain(name=name, consecutive_failures=0) for name in DOMAINS)


def checked(engine: Engine) -> int:
    with make_sessionmaker(engine)() as session:
        query = select(func.count()).select_from(Domain).where(Domain.last_verdict.is_not(None))
        return int(session.scalar(query) or 0)


@pytest.mark.postgres
def test_a_silent_database_stops_the_run_within_its_timeout(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    upgrade(engine)
    seed(engine)
    target = make_url(postgres_url)
    proxy = SilentProxy((target.host or "127.0.0.1", target.port or 5432))
    through_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False
    )
    scenario = Scenario({}, ("test",), default_state="registered")
    try:
        with World(scenario) as world:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
            env.update(world.env())
            env.update(
                {
                    "LAPSEWATCH_DATABASE_URL": through_proxy,
                    "LAPSEWATCH_SOURCES": "rdap,dns",
                    "LAPSEWATCH_CONCURRENCY": "1",
                    "LAPSEWATCH_RATE_RDAP": "4",
                    "LAPSEWATCH_DB_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
                    "LAPSEWATCH_DB_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
                }
            )
            process = subprocess.Popen(
                [sys.executable, "-m", "lapsewatch", "check", "--format", "json"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                deadline = time.monotonic() + 60
                while checked(engine) < 3 and time.monotonic() < deadline:
                    assert process.poll() is None, process.communicate()
                    time.sleep(0.05)
                proxy.go_silent()
                silenced_at = time.monotonic()
                committed = checked(engine)
                assert 0 < committed < len(DOMAINS)
                _out, err = process.communicate(timeout=120)
                took = time.monotonic() - silenced_at
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        proxy.close()
    assert process.returncode not in (0, 1), err
    assert "Traceback" not in err
    # The error says which timeout fired and what to raise, not what failed after it
    # (a reconnect's ConnectionTimeout) nor the SQL.
    said = " ".join(err.split())
    assert "error: database timeout: no answer from the database" in said, err
    assert "LAPSEWATCH_DB_STATEMENT_TIMEOUT" in said, err
    assert "ConnectionTimeout" not in said, err
    assert "[SQL:" not in said, err
    # The silence meets a statement (cut after its timeout and the grace) or, at worst,
    # a connection attempt (its timeout); once one fired, the run tries nothing more.
    bound = CONNECT_TIMEOUT + STATEMENT_TIMEOUT + WATCHDOG_GRACE + EXIT_MARGIN
    assert took < bound, (took, bound)
    assert checked(engine) >= committed  # what was committed stays
    engine.dispose()
