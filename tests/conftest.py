"""Shared fixtures: services that may be missing, and one fresh database per test.

Store tests run twice, on SQLite and on PostgreSQL. PostgreSQL tests skip on a
machine without the server, and fail in CI (``LAPSEWATCH_REQUIRE_SERVICES=1``).

Alembic runs once per backend and test session, into a template. On SQLite each test
gets its own copy of it (a file copy: a few milliseconds, against the 0.4 to 0.9 s a
migration takes). On PostgreSQL ``CREATE DATABASE … TEMPLATE`` and ``DROP DATABASE``
cost 0.3 to 1 s a test, which was most of what a PostgreSQL test cost: each test worker
copies the template once and empties its copy before each test instead (connections
left by the last test closed, ``TRUNCATE … RESTART IDENTITY``: ~50 ms). A test that
changed the schema (its fingerprint differs after the test), or left a connection
busy, gets the copy replaced.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from lapsewatch.store import make_engine, upgrade
from lapsewatch.world.nsd import nsd_available
from tests.services import POSTGRES_URL, postgres_reachable, redis_reachable, require_service


@pytest.fixture
def require_nsd() -> None:
    """Use in tests marked ``@pytest.mark.nsd``."""
    require_service("NSD", nsd_available())


@pytest.fixture
def closed_port() -> Iterator[Callable[[], int]]:
    """Loopback TCP ports nobody listens on (a connection is refused). Each stays bound,
    never listening, until the test ends, so no other test (pytest -n) can take it."""
    held: list[socket.socket] = []

    def take() -> int:
        sock = socket.socket()
        held.append(sock)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    yield take
    for sock in held:
        sock.close()


@pytest.fixture
def require_redis() -> None:
    require_service("Redis on 127.0.0.1:6379", redis_reachable())


def _postgres_database(template: str | None = None) -> Generator[str]:
    """A new database (a copy of ``template`` if given), dropped afterwards."""
    import psycopg

    require_service("PostgreSQL on 127.0.0.1:5432", postgres_reachable())
    name = f"lapsewatch_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _templates: _Templates,
) -> Iterator[str]:
    """A fresh, empty database (not yet migrated), on each backend; migrated already
    (a copy of the template) on PostgreSQL when the test also uses ``engine``, which
    saves creating and dropping one database a test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'lapsewatch.db'}"
    elif "engine" in request.fixturenames:
        yield _templates.postgres_emptied()
        _templates.postgres_check_schema()
    else:
        yield from _postgres_database()


class _Templates:
    """Migrated template databases, made on first use and kept for the session."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._sqlite: Path | None = None
        self._postgres: Generator[str] | None = None
        self._postgres_name: str | None = None
        self._worker: str | None = None
        self._worker_databases: Generator[str] | None = None
        self._fingerprint: tuple[Any, ...] = ()
        self._truncate = ""

    def sqlite(self) -> Path:
        if self._sqlite is None:
            path = self._tmp.mktemp("template") / "lapsewatch.db"
            _migrate(f"sqlite:///{path}")
            self._sqlite = path
        return self._sqlite

    def postgres(self) -> str:
        if self._postgres_name is None:
            databases = _postgres_database()
            self._postgres = databases
            url = next(databases)
            _migrate(url)
            self._postgres_name = make_url(url).database
        assert self._postgres_name is not None
        return self._postgres_name

    def postgres_emptied(self) -> str:
        """This worker's migrated PostgreSQL database, with no rows and nobody connected."""
        import psycopg

        if self._worker is None:
            self._worker_databases = _postgres_database(template=self.postgres())
            self._worker = next(self._worker_databases)
            with psycopg.connect(self._worker, autocommit=True) as connection:
                self._fingerprint = _schema_fingerprint(connection)
                tables = connection.execute(
                    "SELECT quote_ident(tablename) FROM pg_tables"
                    " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                ).fetchall()
            self._truncate = f"TRUNCATE {', '.join(t for (t,) in tables)} RESTART IDENTITY CASCADE"
            return self._worker
        with psycopg.connect(self._worker, autocommit=True) as connection:
            _close_others(connection)
            connection.execute(self._truncate.encode())
        return self._worker

    def postgres_check_schema(self) -> None:
        """Replace this worker's database if the test changed its schema, or left a
        connection busy (a thread of the test still at work might write again, into the
        next test's rows, where a dropped database would have refused it)."""
        import psycopg

        assert self._worker is not None
        with psycopg.connect(self._worker, autocommit=True) as connection:
            busy = _close_others(connection)
            same = _schema_fingerprint(connection) == self._fingerprint
        if not same or busy:
            self._drop_worker_database()

    def _drop_worker_database(self) -> None:
        if self._worker_databases is not None:
            self._worker_databases.close()
        self._worker = self._worker_databases = None

    def close(self) -> None:
        self._drop_worker_database()
        if self._postgres is not None:
            self._postgres.close()


def _close_others(connection: Any) -> int:
    """Close every other connection to this database; how many were busy (not idle)."""
    row = connection.execute(
        "SELECT count(*) FILTER (WHERE state <> 'idle'), count(pg_terminate_backend(pid))"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row is not None else 0


def _schema_fingerprint(connection: Any) -> tuple[Any, ...]:
    """Tables, indexes, sequences, their columns and types, and the Alembic revision;
    if the test broke the database so far that they cannot be read, a value equal to
    no other."""
    import psycopg

    try:
        return _read_fingerprint(connection)
    except psycopg.Error:
        return (object(),)


def _read_fingerprint(connection: Any) -> tuple[Any, ...]:
    row = connection.execute(
        "SELECT md5(string_agg(c.relname::text || ':' || c.relkind::text || ':'"
        " || coalesce(a.attname::text, '')"
        " || ':' || coalesce(a.atttypid::text, ''), ',' ORDER BY c.relname, a.attnum))"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = 'public'"
    ).fetchone()
    revision = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return (row[0], tuple(revision))


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()  # no connection may stay open on a template


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Templates]:
    templates = _Templates(tmp_path_factory)
    yield templates
    templates.close()


@pytest.fixture
def engine(database_url: str, _templates: _Templates) -> Iterator[Engine]:
    """A migrated database on each backend, at ``database_url``: a copy of the template."""
    url = make_url(database_url)
    assert url.database is not None
    if url.get_backend_name() == "sqlite":
        shutil.copyfile(_templates.sqlite(), url.database)
    # On PostgreSQL, database_url gave this worker's copy of the template, emptied.
    engine = make_engine(database_url)
    yield engine
    engine.dispose()
