"""Persistence: SQLAlchemy 2 models, sessions and Alembic migrations."""

from typing import TYPE_CHECKING

from lapsewatch.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lapsewatch.store.db import DEFAULT_DATABASE_URL, make_engine, make_sessionmaker
    from lapsewatch.store.models import (
        Account,
        Base,
        Domain,
        Email,
        Event,
        Notice,
        ObservationRow,
    )
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

# Lazily: Alembic (schema) is imported only by what migrates, not by every model user.
__getattr__ = lazy_exports(
    __name__,
    {
        "DEFAULT_DATABASE_URL": "db",
        "make_engine": "db",
        "make_sessionmaker": "db",
        "Account": "models",
        "Base": "models",
        "Domain": "models",
        "Email": "models",
        "Event": "models",
        "Notice": "models",
        "ObservationRow": "models",
        "upgrade": "schema",
    },
)
