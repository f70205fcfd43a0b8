"""Shared fixtures: services that may be missing, and one fresh database per test.

Store tests run twice, on SQLite and on PostgreSQL. PostgreSQL tests skip on a
machine without the server, and fail in CI (``LAPSEWATCH_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
def require_redis() -> None:
    require_service("Redis on 127.0.0.1:6379", redis_reachable())


def _postgres_database() -> Iterator[str]:
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh, empty database (not yet migrated), on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'lapsewatch.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated database on each backend."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()
