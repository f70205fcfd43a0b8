"""Issue #11: a lock another connection holds stops ``check`` within the lock timeout.

Another connection holds a lock the run's writer needs: on PostgreSQL a domain's
row (``SELECT … FOR UPDATE``), on SQLite the database's write lock (``BEGIN
IMMEDIATE``). ``lapsewatch check`` must wait no longer than
``LAPSEWATCH_DB_LOCK_TIMEOUT`` (PostgreSQL's ``lock_timeout``, SQLite's
``busy_timeout``), once, then exit non-zero with a clear message naming that
setting, not the SQL it was running.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from lapsewatch.store import Account, Domain, Email, make_sessionmaker
from lapsewatch.store.db import describe
from lapsewatch.world import Scenario, World

LONG_AGO = datetime(2019, 5, 1, tzinfo=UTC)
DOMAINS = [f"d{i:02d}.test" for i in range(5)]
LOCK_TIMEOUT = 3.0
MARGIN = 2.0
"""Seconds for the checks before the writer waits: 0.3 s, 0.9 s on a loaded 2-core
machine. Less than the lock timeout, so that waiting twice (a retry) fails the bound,
and so does SQLite's own default wait of 5 s (no ``busy_timeout``)."""


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(Scenario({}, ("test",), default_state="registered")) as running:
        yield running


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


@contextlib.contextmanager
def lock_held(database_url: str) -> Iterator[None]:
    """Another connection holding what the run's writer needs, until the block ends."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        holder = sqlite3.connect(url.database, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock; readers still read (WAL)
            yield
        finally:
            holder.rollback()
            holder.close()
    else:
        import psycopg

        plain = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(plain) as connection:
            connection.execute("SELECT name FROM domains WHERE name = %s FOR UPDATE", (DOMAINS[0],))
            try:
                yield
            finally:
                connection.rollback()


def test_a_held_lock_stops_check_within_the_lock_timeout(
    world: World, database_url: str, engine: Engine
) -> None:
    seed(engine)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    env.update(world.env())
    env.update(
        {
            "LAPSEWATCH_DATABASE_URL": database_url,
            "LAPSEWATCH_SOURCES": "rdap,dns",
            "LAPSEWATCH_DB_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
            # Long: only the lock timeout may end the wait.
            "LAPSEWATCH_DB_STATEMENT_TIMEOUT": "60",
        }
    )
    asked = world.dns_requests.total
    lines: list[tuple[float, str]] = []
    with lock_held(database_url):
        process = subprocess.Popen(
            [sys.executable, "-m", "lapsewatch", "check", "--format", "json"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        stderr = process.stderr
        reader = threading.Thread(
            target=lambda: lines.extend((time.monotonic(), line) for line in stderr)
        )
        reader.start()
        try:
            # Timed from its first check, to the error (not Python's start-up and exit,
            # which take seconds each on a loaded machine).
            deadline = time.monotonic() + 60
            while world.dns_requests.total == asked and process.poll() is None:
                assert time.monotonic() < deadline, "the run checked nothing"
                time.sleep(0.02)
            checking = time.monotonic()
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join()
    err = "".join(line for _, line in lines)
    said = " ".join(err.split())
    assert process.returncode not in (0, 1), err
    assert "Traceback" not in err
    assert f"error: database timeout: waited past the lock timeout of {LOCK_TIMEOUT:g} s" in said
    assert "LAPSEWATCH_DB_LOCK_TIMEOUT" in said, err
    assert "[SQL:" not in said, err
    failed_at = next(at for at, line in lines if line.startswith("error:"))
    took = failed_at - checking
    assert took < LOCK_TIMEOUT + MARGIN, took


def test_a_database_error_is_told_without_its_statement() -> None:
    error = OperationalError(
        "UPDATE emails SET verified = ? WHERE address = ?",
        (False, "alice@example.test"),
        sqlite3.OperationalError("disk I/O error"),
    )
    assert "[SQL:" in str(error)  # what SQLAlchemy says
    assert describe(error) == "OperationalError: disk I/O error"
