"""The one seam for transactions: the caller owns the unit of work, services take a session.

A command, a web request or a task opens a :func:`transaction`, passes its session
to the services it calls, and the transaction commits when the block ends; the
services never commit, roll back or begin one themselves (as in Warehouse, where
the request owns the transaction). Two things ride on the caller's commit:

* a refusal that must leave a record (a failed login, a limit hit) is raised as an
  exception the caller names in ``keep``: the transaction commits, then the
  exception goes on to be shown;
* work that must wait for the commit (handing queued mail to the sender) is
  registered with :func:`after_commit` and runs only once the data is there, never
  after a rollback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

__all__ = ["after_commit", "has_written", "savepoint", "transaction", "writing_on_sqlite"]

log = logging.getLogger(__name__)

_AFTER_COMMIT = "lapsewatch.after_commit"
"""Key in a session's ``info``: what to run once its transaction commits."""
_WROTE = "lapsewatch.wrote"
"""Key in a session's ``info``: its transaction has flushed a write."""


@contextmanager
def transaction(
    sessions: sessionmaker[Session], *, keep: tuple[type[BaseException], ...] = ()
) -> Iterator[Session]:
    """One unit of work: commit when the block ends, or when it raises one of ``keep``
    (then re-raise it); roll back on anything else."""
    with sessions() as session:
        try:
            yield session
        except keep:
            session.commit()
            raise
        except BaseException:
            session.rollback()
            raise
        session.commit()


def savepoint(session: Session) -> SessionTransaction:
    """``session.begin_nested()`` that stays inside the caller's transaction on SQLite.

    Python's sqlite3 module begins a transaction only before the first write; a
    SAVEPOINT before it would begin one of its own, and its RELEASE would commit it,
    whatever the caller does next. So on SQLite the transaction is begun first (the
    savepoint is about to write anyway).
    """
    if not writing_on_sqlite(session) and session.get_bind().dialect.name == "sqlite":
        session.connection().exec_driver_sql("BEGIN")
    return session.begin_nested()


def writing_on_sqlite(session: Session) -> bool:
    """Whether ``session`` holds SQLite's write lock: its transaction has written (its
    pending changes are flushed first). Other connections cannot write until it ends."""
    if session.get_bind().dialect.name != "sqlite" or not session.in_transaction():
        return False
    session.flush()
    dbapi = session.connection().connection.dbapi_connection
    return bool(getattr(dbapi, "in_transaction", False))


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once ``session``'s transaction commits; dropped if it rolls back,
    or if the savepoint it was registered in does.

    For what must not happen before the data is there (a sender reading the outbox)
    nor when it never will be. An action that fails is logged: the commit stands.
    """
    current = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(_AFTER_COMMIT, []).append((current, action))


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:  # a savepoint was released
        return
    for _, action in session.info.pop(_AFTER_COMMIT, []):
        try:
            action()
        except Exception:
            log.exception("an action after a commit failed (the commit stands)")


@event.listens_for(Session, "after_transaction_end")
def _forget_at_the_end(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without a commit running them (a close, a commit
    whose flush failed): what was queued must not run at the session's next commit."""
    if transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)
        session.info.pop(_WROTE, None)


@event.listens_for(Session, "after_flush")
def _note_the_write(session: Session, _context: object) -> None:
    session.info[_WROTE] = True


def has_written(session: Session) -> bool:
    """Whether ``session``'s transaction has written (its pending changes flushed first):
    on SQLite it then holds the database's write lock, on PostgreSQL row locks that a
    connection of its own could wait for."""
    if not session.in_transaction():
        return False
    if writing_on_sqlite(session):
        return True
    session.flush()
    return bool(session.info.get(_WROTE))


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, previous: SessionTransaction) -> None:
    """Drop what was registered in the transaction rolled back, or in one inside it
    (the outermost one's end drops the rest: :func:`_forget_at_the_end`)."""
    pending = session.info.get(_AFTER_COMMIT)
    if not pending:
        return

    def inside(transaction: SessionTransaction | None) -> bool:
        while transaction is not None:
            if transaction is previous:
                return True
            transaction = transaction.parent
        return False

    session.info[_AFTER_COMMIT] = [(t, a) for t, a in pending if not inside(t)]
