"""Persistence: SQLAlchemy 2 models, sessions and Alembic migrations."""

from lapsewatch.store.db import DEFAULT_DATABASE_URL, make_engine, make_sessionmaker
from lapsewatch.store.models import Account, Base, Domain, Email, Event, Notice, ObservationRow
from lapsewatch.store.schema import upgrade

__all__ = [
    "DEFAULT_DATABASE_URL",
    "Account",
    "Base",
    "Domain",
    "Email",
    "Event",
    "Notice",
    "ObservationRow",
    "make_engine",
    "make_sessionmaker",
    "upgrade",
]
