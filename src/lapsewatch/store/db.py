"""Engines and sessions; SQLite is the embedded default, PostgreSQL production.

Nothing waits on the database for ever. On PostgreSQL a connection must be made
within the connect timeout, and the server cancels a statement or a lock wait
past its timeout. A server that goes silent (a hung host, a proxy that stopped
forwarding) answers nothing, not even a cancel, so a watchdog also cuts the
connection of a statement or commit that has not returned a few seconds after
the statement timeout; the caller then gets :class:`DatabaseTimeout`, and
everything already committed stays. SQLite waits at most the lock timeout for
another writer (``busy_timeout``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from lapsewatch.config import Settings

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DatabaseTimeout",
    "DbTimeouts",
    "make_engine",
    "make_sessionmaker",
]

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///lapsewatch.db"
WATCHDOG_GRACE = 2.0
"""Seconds past the statement timeout before the watchdog cuts a silent connection
(the server's own timeout, when it is alive, answers first and more clearly)."""


class DatabaseTimeout(SQLAlchemyError):
    """The database did not answer within the configured timeout."""


@dataclass(frozen=True)
class DbTimeouts:
    """Seconds; see ``LAPSEWATCH_DB_CONNECT_TIMEOUT``, ``_STATEMENT_TIMEOUT``, ``_LOCK_TIMEOUT``."""

    connect: float = 10.0
    statement: float = 120.0
    lock: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DbTimeouts:
        return cls(
            connect=settings.db_connect_timeout,
            statement=settings.db_statement_timeout,
            lock=settings.db_lock_timeout,
        )


def _sqlite_pragmas(lock_timeout: float) -> Callable[[Any, Any], None]:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers (report, web) run while the checker writes; foreign keys
        # are off by default in SQLite; busy_timeout waits instead of failing.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return connect


def make_engine(url: str = DEFAULT_DATABASE_URL, *, timeouts: DbTimeouts | None = None) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs use psycopg 3."""
    timeouts = timeouts or DbTimeouts()
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {
            # libpq counts whole seconds, at least 2.
            "connect_timeout": max(2, math.ceil(timeouts.connect)),
            "options": (
                f"-c statement_timeout={int(timeouts.statement * 1000)} "
                f"-c lock_timeout={int(timeouts.lock * 1000)}"
            ),
        }
    engine = create_engine(url, future=True, pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(timeouts.lock))
    else:
        _watch(engine, timeouts.statement + WATCHDOG_GRACE)
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class _Watchdog:
    """Cuts the socket of a connection whose statement outlived its deadline.

    One thread for the process; each statement only adds and removes a dict entry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, tuple[float, Any]] = {}
        self._fired: set[int] = set()
        self._thread: threading.Thread | None = None

    def arm(self, connection: Any, seconds: float) -> None:
        with self._lock:
            self._deadlines[id(connection)] = (time.monotonic() + seconds, connection)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="lapsewatch-db-watchdog", daemon=True
                )
                self._thread.start()

    def disarm(self, connection: Any) -> bool:
        """Stop watching; True when the watchdog had cut this connection."""
        with self._lock:
            self._deadlines.pop(id(connection), None)
            if id(connection) in self._fired:
                self._fired.discard(id(connection))
                return True
            return False

    def _run(self) -> None:
        while True:
            time.sleep(0.2)
            now = time.monotonic()
            with self._lock:
                late = [(k, c) for k, (when, c) in self._deadlines.items() if when <= now]
                for key, _connection in late:
                    del self._deadlines[key]
                    self._fired.add(key)
            for _key, connection in late:
                _cut(connection)


def _cut(connection: Any) -> None:
    """Shut the connection's socket down: the blocked read returns at once."""
    with contextlib.suppress(Exception):
        descriptor = connection.fileno()
        with socket.socket(fileno=os.dup(descriptor)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        log.error("database connection cut: no answer within the statement timeout")


_WATCHDOG = _Watchdog()


def _watch(engine: Engine, seconds: float) -> None:
    message = (
        f"no answer from the database within {seconds - WATCHDOG_GRACE:g} s "
        "(LAPSEWATCH_DB_STATEMENT_TIMEOUT); the connection was cut"
    )

    def dbapi_of(connection: Any) -> Any:
        return connection.connection.dbapi_connection

    @event.listens_for(engine, "before_cursor_execute")
    def _before(connection: Any, *_args: Any) -> None:
        _WATCHDOG.arm(dbapi_of(connection), seconds)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(connection: Any, *_args: Any) -> None:
        _WATCHDOG.disarm(dbapi_of(connection))

    @event.listens_for(engine, "handle_error")
    def _error(context: Any) -> BaseException | None:
        raw = None
        with contextlib.suppress(Exception):
            raw = dbapi_of(context.connection)
        if raw is not None and _WATCHDOG.disarm(raw):
            return DatabaseTimeout(message)
        return None

    dialect = engine.dialect
    for name in ("do_commit", "do_rollback", "do_ping"):
        original = getattr(dialect, name)
        setattr(dialect, name, _guarded(original, seconds, message))


def _guarded(original: Callable[[Any], Any], seconds: float, message: str) -> Callable[[Any], Any]:
    """``original`` (a dialect's commit, rollback or ping) under the watchdog: these
    talk to the server without passing the cursor events."""

    def call(dbapi_connection: Any) -> Any:
        _WATCHDOG.arm(dbapi_connection, seconds)
        try:
            result = original(dbapi_connection)
        except Exception as exc:
            if _WATCHDOG.disarm(dbapi_connection):
                raise DatabaseTimeout(message) from exc
            raise
        _WATCHDOG.disarm(dbapi_connection)
        return result

    return call
