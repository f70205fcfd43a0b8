"""Shared fixtures: services that may be missing, and one fresh database per test.

Store tests run twice, on SQLite and on PostgreSQL. PostgreSQL tests skip on a
machine without the server, and fail in CI (``LAPSEWATCH_REQUIRE_SERVICES=1``).

Alembic runs once per backend and test session, into a template; each test gets its
own copy of it (a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL).
A copy is as fresh as a migrated database and costs a few milliseconds instead of the
0.4 to 0.9 s a migration takes, which is most of what a store test used to cost.
"""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

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
        yield from _postgres_database(template=_templates.postgres())
    else:
        yield from _postgres_database()


class _Templates:
    """Migrated template databases, made on first use and kept for the session."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._sqlite: Path | None = None
        self._postgres: Generator[str] | None = None
        self._postgres_name: str | None = None

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

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()


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
    # On PostgreSQL, database_url made it a copy of the template already.
    engine = make_engine(database_url)
    yield engine
    engine.dispose()
