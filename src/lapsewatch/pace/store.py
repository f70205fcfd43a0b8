"""Learned rates kept in the store (table ``server_rates``) between cycles."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select

from lapsewatch.pace.policy import Learned
from lapsewatch.store.db import dialect_insert
from lapsewatch.store.models import ServerRate

__all__ = ["load_rates", "save_rates"]


def load_rates(engine: Engine) -> dict[str, Learned]:
    """Every server's learned rate, keyed by ``host:port``."""
    with engine.connect() as connection:
        rows = connection.execute(select(ServerRate.server, ServerRate.rate, ServerRate.ceiling))
        return {server: Learned(rate, ceiling) for server, rate, ceiling in rows}


def save_rates(
    engine: Engine, rates: dict[str, tuple[str, Learned]], now: datetime | None = None
) -> int:
    """Insert or update one row per server (``server -> (source, learned)``), in one
    transaction; several workers saving at once each leave a whole, recent row."""
    if not rates:
        return 0
    at = now or datetime.now(UTC)
    rows = [
        {
            "server": server[:300],
            "source": source[:20],
            "rate": learned.rate,
            "ceiling": learned.ceiling,
            "updated_at": at,
        }
        for server, (source, learned) in sorted(rates.items())
    ]
    statement = dialect_insert(engine.dialect.name, ServerRate).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=[ServerRate.server],
        set_={
            "source": statement.excluded.source,
            "rate": statement.excluded.rate,
            "ceiling": statement.excluded.ceiling,
            "updated_at": statement.excluded.updated_at,
        },
    )
    with engine.begin() as connection:
        connection.execute(statement)
    return len(rows)
