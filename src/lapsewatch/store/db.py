"""Engines and sessions; SQLite is the embedded default, PostgreSQL production.

Nothing waits on the database for ever. On PostgreSQL a connection must be made
within the connect timeout, and the server cancels a statement or a lock wait
past its timeout. A server that goes silent (a hung host, a proxy that stopped
forwarding) answers nothing, not even a cancel, so a watchdog also cuts the
connection of a statement or commit that has not returned a few seconds after
the statement timeout; the caller then gets :class:`DatabaseTimeout`, and
everything already committed stays. SQLite waits at most the lock timeout for
another writer (``busy_timeout``).

Any of these timeouts, when it fires, is a :class:`DatabaseTimeout` whose message
says which one fired and names the setting to raise (``LAPSEWATCH_DB_*``), never
the statement. An engine made with ``stop_on_timeout`` (a batch run such as
``lapsewatch check``) then fails every new connection and statement at once with
the same error, instead of waiting out another timeout on each: the run stops,
with the first cause.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from lapsewatch.config import Settings

__all__ = [
    "DEFAULT_DATABASE_URL",
    "IN_PADDED",
    "DatabaseTimeout",
    "DbTimeouts",
    "describe",
    "dialect_insert",
    "in_values",
    "lock_for_writing",
    "make_engine",
    "make_sessionmaker",
    "timed_out",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

IN_PADDED = 1024
"""The longest IN list :func:`in_values` pads (the writer's batches are at most 500)."""


def dialect_insert(dialect: str, table: Any) -> PgInsert | SqliteInsert:
    """An ``INSERT`` that takes ``ON CONFLICT`` (an upsert), in ``dialect``'s own form
    (``postgresql``, else SQLite): the one place that chooses it."""
    return pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)


def in_values(values: Iterable[_T]) -> list[_T]:
    """``values`` for an ``IN (...)`` list: up to :data:`IN_PADDED` values, padded to a
    power of two (at least 8) by repeating the last one, which leaves the set the same.

    SQLAlchemy writes one placeholder per value, so every batch size made a statement
    text of its own. The writer's batches vary in size, and SQLite's cache of 128
    compiled statements a connection filled with IN lists compiled once each (about
    8 MB of a cycle's memory, bench/RESULTS.md, "The checker's memory"); with a few
    lengths the cache reuses them, on PostgreSQL too. Longer lists (a page or a chunk
    of due domains, one size each) are left as they are: padding must never take a
    list past the database's limit on parameters (32,766 on SQLite).
    """
    padded = list(values)
    if padded and len(padded) <= IN_PADDED:
        size = max(8, 1 << (len(padded) - 1).bit_length())
        padded.extend(padded[-1:] * (size - len(padded)))
    return padded


def lock_for_writing(connection: Connection) -> None:
    """At the start of a transaction that reads, then writes: on SQLite take the write
    lock first (``BEGIN IMMEDIATE``). A deferred transaction that reads, then writes
    after another connection committed, fails at once (a WAL snapshot cannot be
    upgraded); ``BEGIN IMMEDIATE`` waits for the lock instead, under the busy timeout.
    PostgreSQL locks the rows themselves (``SELECT … FOR UPDATE``): nothing to do."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


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


def _connect_seconds(timeouts: DbTimeouts) -> int:
    """libpq's connect timeout: whole seconds, at least 2."""
    return max(2, math.ceil(timeouts.connect))


class _Timeouts:
    """One engine's timeouts, the messages that name them, and (``stop``) the first one
    that fired, after which the engine refuses to try again."""

    def __init__(self, timeouts: DbTimeouts, *, stop: bool) -> None:
        self.timeouts = timeouts
        self.stop = stop
        self.fired: DatabaseTimeout | None = None
        s = timeouts
        self.silent = (
            f"no answer from the database within its statement timeout of {s.statement:g} s "
            f"(LAPSEWATCH_DB_STATEMENT_TIMEOUT), nor {WATCHDOG_GRACE:g} s later: the "
            "connection was cut; check the database server and the network to it"
        )
        self.statement = (
            f"a statement ran past the database's statement timeout of {s.statement:g} s; "
            "raise LAPSEWATCH_DB_STATEMENT_TIMEOUT if the database is just slow"
        )
        self.lock = (
            f"waited past the lock timeout of {s.lock:g} s for a lock another connection "
            "holds; raise LAPSEWATCH_DB_LOCK_TIMEOUT, or end what holds the lock"
        )
        self.connect = (
            f"no connection to the database within its connect timeout of "
            f"{_connect_seconds(s)} s; check that it is up and reachable, or raise "
            "LAPSEWATCH_DB_CONNECT_TIMEOUT for a slow network"
        )

    def timed_out(self, message: str) -> DatabaseTimeout:
        """The error to raise for ``message``; the first one is kept (``stop``)."""
        if self.stop and self.fired is None:
            self.fired = DatabaseTimeout(message)
        return DatabaseTimeout(message)

    def refuse(self) -> None:
        """After a timeout on a stopping engine: raise it again, at once."""
        if self.fired is not None:
            raise DatabaseTimeout(str(self.fired.args[0]))

    def classify(self, error: BaseException, waited: float | None) -> str | None:
        """The message of a timeout the driver reported (``None``: not a timeout);
        ``waited``: seconds the failed statement ran, when known."""
        name = type(error).__name__
        code = getattr(error, "sqlstate", None)
        if name == "ConnectionTimeout":  # psycopg: connect_timeout expired
            return self.connect
        if code == "55P03":  # lock_not_available: lock_timeout
            return self.lock
        if code == "57014" and "statement timeout" in str(error):  # query_canceled
            return self.statement
        # SQLite: SQLITE_BUSY after busy_timeout (not an instant conflict between snapshots).
        locked = name == "OperationalError" and "database is locked" in str(error)
        if locked and waited is not None and waited >= 0.9 * self.timeouts.lock:
            return self.lock
        return None


_ENGINES: weakref.WeakKeyDictionary[Engine, _Timeouts] = weakref.WeakKeyDictionary()
_STARTED = "lapsewatch.started"
"""Key in a connection's ``info``: when its current statement began (monotonic)."""


def timed_out(engine: Engine) -> DatabaseTimeout | None:
    """The first timeout that fired on ``engine`` (made with ``stop_on_timeout``)."""
    state = _ENGINES.get(engine)
    return state.fired if state is not None else None


def describe(error: SQLAlchemyError) -> str:
    """A database error in one line: what the driver said, without the statement and
    its parameters (SQLAlchemy's own text dumps both)."""
    if isinstance(error, StatementError) and error.orig is not None:
        original = error.orig
        first = (str(original).strip().splitlines() or [""])[0]
        return f"{type(original).__name__}: {first}"[:500]
    return (str(error).strip().splitlines() or [""])[0][:500]


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


def make_engine(
    url: str = DEFAULT_DATABASE_URL,
    *,
    timeouts: DbTimeouts | None = None,
    stop_on_timeout: bool = False,
) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs use psycopg 3.

    ``stop_on_timeout``: once one of the database's timeouts fired, every new
    connection and statement fails at once with the same :class:`DatabaseTimeout`
    (see :func:`timed_out`); for a run that must stop then, not a long-lived server.
    """
    timeouts = timeouts or DbTimeouts()
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args = {
            "connect_timeout": _connect_seconds(timeouts),
            "options": (
                f"-c statement_timeout={int(timeouts.statement * 1000)} "
                f"-c lock_timeout={int(timeouts.lock * 1000)}"
            ),
        }
    engine = create_engine(url, future=True, pool_pre_ping=True, connect_args=connect_args)
    state = _Timeouts(timeouts, stop=stop_on_timeout)
    _ENGINES[engine] = state
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(timeouts.lock))
        _watch(engine, state, watchdog=False)
    else:
        _watch(engine, state, watchdog=True)
    return engine


def side_engine(engine: Engine) -> Engine:
    """Another engine on ``engine``'s database, with its timeouts and a pool of its own.

    For books kept beside a caller's transaction (rate limits, a dry run): a request
    that holds a connection of the main pool while it asks for one of these never
    waits for its own pool (thirty such requests at once would exhaust a shared one).
    """
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        return engine  # a database in memory exists once, in its engine
    state = _ENGINES.get(engine)
    return make_engine(
        engine.url.render_as_string(hide_password=False),
        timeouts=state.timeouts if state is not None else None,
    )


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


def _watch(engine: Engine, state: _Timeouts, *, watchdog: bool) -> None:
    """Turn the database's timeouts into :class:`DatabaseTimeout`; with ``watchdog``
    (PostgreSQL), cut a connection that stays silent past the statement timeout."""
    seconds = state.timeouts.statement + WATCHDOG_GRACE

    def dbapi_of(connection: Any) -> Any:
        return connection.connection.dbapi_connection

    @event.listens_for(engine, "do_connect")
    def _connect(*_args: Any) -> None:
        state.refuse()

    @event.listens_for(engine, "before_cursor_execute")
    def _before(connection: Any, *_args: Any) -> None:
        state.refuse()
        connection.info[_STARTED] = time.monotonic()
        if watchdog:
            _WATCHDOG.arm(dbapi_of(connection), seconds)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(connection: Any, *_args: Any) -> None:
        with contextlib.suppress(Exception):
            connection.info.pop(_STARTED, None)
        if watchdog:
            _WATCHDOG.disarm(dbapi_of(connection))

    @event.listens_for(engine, "handle_error")
    def _error(context: Any) -> BaseException | None:
        if isinstance(context.original_exception, DatabaseTimeout):
            return None
        waited = None
        if context.connection is not None:
            started = None
            with contextlib.suppress(Exception):  # an invalidated connection
                started = context.connection.info.pop(_STARTED, None)
            waited = None if started is None else time.monotonic() - started
            if watchdog:
                raw = None
                with contextlib.suppress(Exception):
                    raw = dbapi_of(context.connection)
                if raw is not None and _WATCHDOG.disarm(raw):
                    return state.timed_out(state.silent)
        message = state.classify(context.original_exception, waited)
        return state.timed_out(message) if message is not None else None

    if watchdog:
        dialect = engine.dialect
        for name in ("do_commit", "do_rollback", "do_ping"):
            original = getattr(dialect, name)
            setattr(dialect, name, _guarded(original, seconds, state))


def _guarded(
    original: Callable[[Any], Any], seconds: float, state: _Timeouts
) -> Callable[[Any], Any]:
    """``original`` (a dialect's commit, rollback or ping) under the watchdog: these
    talk to the server without passing the cursor events."""

    def call(dbapi_connection: Any) -> Any:
        _WATCHDOG.arm(dbapi_connection, seconds)
        try:
            result = original(dbapi_connection)
        except Exception as exc:
            if _WATCHDOG.disarm(dbapi_connection):
                raise state.timed_out(state.silent) from exc
            raise
        _WATCHDOG.disarm(dbapi_connection)
        return result

    return call
