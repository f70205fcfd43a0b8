"""Writing a chunk: its changed rows by bulk insert and update, an event each, in one transaction.

Bulk Core statements through the driver's own ``executemany`` (SQLAlchemy's
per-row handling costs more than SQLite's insert itself), new ids known
without a lookup where SQLite allows it, and SQLite tuned for a big import (a
bigger cache, fewer WAL checkpoints, the write lock taken up front). It knows
nothing of lines or rules: :mod:`lapsewatch.accounts.import_reconcile` decides
what changes, this module writes the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from lapsewatch.accounts import tokens
from lapsewatch.accounts.import_validate import LineProblem
from lapsewatch.dates import isoformat
from lapsewatch.store.db import dialect_insert, lock_for_writing
from lapsewatch.store.models import Account, Domain, Email, Event, UTCDateTime

ACTOR = "import"
"""The actor of the events an import writes."""

_IN_BATCH = 1000
"""Values per ``IN (...)``: far below SQLite's and PostgreSQL's bind limits."""
_SQLITE_CACHE_KIB = 128 * 1024
_SQLITE_CHECKPOINT_PAGES = 16384
"""WAL pages (64 MiB) before a chunk's commit copies them into the database file.

With SQLite's default (1,000) nearly every chunk's commit checkpoints, and
each checkpoint waits for two fsyncs: a third of a big import's time here.
"""

_MAIL_FIELDS = (
    "domain",
    "free_provider",
    "primary",
    "verified",
    "verified_at",
    "unverified_at",
    "unverify_reason",
    "unverify_detail",
)


@dataclass(slots=True)
class _Acct:
    id: int | None
    username: str
    """As stored: a line may spell it in another case, it is matched by ``key``."""
    key: str
    owner: str
    totp: bool
    projects: list[str]
    original: tuple[bool, list[str]] | None
    """As stored before this chunk; ``None`` for an account this chunk creates."""
    line: int = 0
    """The line that created or last changed it."""
    created_with: list[_Mail] = field(default_factory=list)
    """New account: the addresses its creating line gave (listed in ``account.created``)."""


@dataclass(slots=True)
class _Mail:
    id: int | None
    account: str
    """Its account's username key."""
    username: str
    """Its account's username, for messages."""
    owner: str
    """Its account's owner."""
    address: str
    """As stored (or as first given): a case variant is the same address, by ``key``."""
    key: str
    fields: dict[str, Any]
    original: dict[str, Any] | None
    line: int = 0
    in_created: bool = False
    """Listed in its account's ``account.created`` event: no ``email.added`` of its own."""


def _by_key(account: _Acct) -> str:
    return account.key


def _by_address_key(mail: _Mail) -> str:
    return mail.key


def _by_line(account: _Acct) -> int:
    return account.line


def _batches(values: Iterable[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) >= _IN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


_ACCOUNTS_TABLE = cast(Table, Account.__table__)
_EMAILS_TABLE = cast(Table, Email.__table__)
_EVENTS_TABLE = cast(Table, Event.__table__)


@dataclass
class _ChunkResult:
    accounts_created: int = 0
    accounts_updated: int = 0
    emails_added: int = 0
    emails_updated: int = 0
    domains_added: int = 0
    unchanged: int = 0
    rejected: list[LineProblem] = field(default_factory=list)
    warnings: list[LineProblem] = field(default_factory=list)


class _EventSink(Protocol):
    def __call__(
        self,
        kind: str,
        line: int,
        account: int | None,
        email: int | None = None,
        domain: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None: ...


class _ChunkWriter:
    """The writing half of a chunk (``import_reconcile._Chunk``): what differs, as rows and events.

    Apart from the rules that decide the changes, so that each reads on its own:
    the chunk loads, applies its lines, then calls :meth:`write` once.
    """

    conn: Connection
    accounts: dict[str, _Acct]
    mails: dict[str, _Mail]
    domains: set[str]

    def write(self, now: datetime, source: str, result: _ChunkResult) -> None:
        """Insert and update what differs from the store, with events.

        One event per changed row, except that a new account's ``account.created``
        lists the addresses its creating line gave, instead of one ``email.added``
        each (half the rows for a typical import, and the same facts).
        """
        events: list[tuple[Any, ...]] = []

        def event(
            kind: str,
            line: int,
            account: int | None,
            email: int | None = None,
            domain: str | None = None,
            before: dict[str, Any] | None = None,
            after: dict[str, Any] | None = None,
        ) -> None:
            reason = f"{source} line {line}"
            events.append((now, ACTOR, kind, account, email, domain, before, after, reason))

        result.accounts_created += self._insert_accounts(now, event)
        result.accounts_updated += self._update_accounts(event)
        result.emails_added += self._insert_mails(event)
        result.emails_updated += self._update_mails(event, now)
        result.domains_added += self._ensure_domains()
        if events:
            keys = ("at", "actor", "kind", "account_id", "email_id", "domain", "before", "after")
            _insert(self.conn, _EVENTS_TABLE, (*keys, "reason"), events)

    def _insert_accounts(self, now: datetime, event: _EventSink) -> int:
        # In key order: neighbouring inserts touch neighbouring pages of the unique index.
        new = sorted((a for a in self.accounts.values() if a.id is None), key=_by_key)
        if not new:
            return 0
        # The keys are given, not left to the column defaults: those need SQLAlchemy's
        # per-row execution context, which this bulk insert does without.
        ids = _insert_with_ids(
            self.conn,
            _ACCOUNTS_TABLE,
            ("username_key", "username", "owner", "totp_enabled", "projects", "created_at"),
            [(a.key, a.username, a.owner, a.totp, a.projects, now) for a in new],
        )
        for account, id_ in zip(new, ids, strict=True):
            account.id = id_
        for account in sorted(new, key=_by_line):  # events in the order of the input
            after = {
                "username": account.username,
                "owner": account.owner,
                "totp": account.totp,
                "projects": account.projects,
                "emails": [_added(mail) for mail in account.created_with],
            }
            event("account.created", account.line, account.id, after=after)
        return len(new)

    def _update_accounts(self, event: _EventSink) -> int:
        updates: list[dict[str, Any]] = []
        for account in self.accounts.values():
            original = account.original
            if original is None or (account.totp, account.projects) == original:
                continue
            before: dict[str, Any] = {}
            after: dict[str, Any] = {}
            change: dict[str, Any] = {"id": account.id}
            if account.totp != original[0]:
                before["totp"], after["totp"] = original[0], account.totp
                change["totp_enabled"] = account.totp
            if account.projects != original[1]:
                before["projects"], after["projects"] = original[1], account.projects
                change["projects"] = account.projects
            updates.append(change)
            event("account.changed", account.line, account.id, before=before, after=after)
        _bulk_update(self.conn, _ACCOUNTS_TABLE, updates)
        return len(updates)

    def _insert_mails(self, event: _EventSink) -> int:
        new = sorted((m for m in self.mails.values() if m.id is None), key=_by_address_key)
        if not new:
            return 0
        rows = [
            (m.key, m.address, self.accounts[m.account].id, *(m.fields[k] for k in _MAIL_FIELDS))
            for m in new
        ]
        ids = _insert_with_ids(
            self.conn, _EMAILS_TABLE, ("address_key", "address", "account_id", *_MAIL_FIELDS), rows
        )
        for mail, id_ in zip(new, ids, strict=True):
            mail.id = id_
            if not mail.in_created:
                account_id = self.accounts[mail.account].id
                domain = mail.fields["domain"]
                event("email.added", mail.line, account_id, id_, domain, after=_added(mail))
        return len(new)

    def _update_mails(self, event: _EventSink, now: datetime) -> int:
        """Changed addresses, with an event each; an address the import unverifies loses
        its open links (:func:`tokens.revoke_sent_to`), as the cycle's unverify does."""
        updates: list[dict[str, Any]] = []
        unverified: list[int] = []
        for mail in self.mails.values():
            original = mail.original
            if original is None or mail.fields == original:
                continue
            changed = {k: v for k, v in mail.fields.items() if original[k] != v}
            if original["verified"] and not mail.fields["verified"]:
                assert mail.id is not None  # an address stored before this chunk
                unverified.append(mail.id)
            reverified = (
                original["unverify_reason"] is not None
                and not original["verified"]
                and mail.fields["verified"]
            )
            updates.append({"id": mail.id, **changed})
            event(
                "email.reverified" if reverified else "email.changed",
                mail.line,
                self.accounts[mail.account].id,
                mail.id,
                mail.fields["domain"],
                before=_jsonable({"address": mail.address, **{k: original[k] for k in changed}}),
                after=_jsonable({"address": mail.address, **changed}),
            )
        _bulk_update(self.conn, _EMAILS_TABLE, updates)
        # A reset link mailed before must not come back to life when the registry
        # verifies the address again (perhaps for the domain's next owner).
        tokens.revoke_sent_to(self.conn, unverified, now=now)
        return len(updates)

    def _ensure_domains(self) -> int:
        """A ``domains`` row (due now) for every custom domain behind an address."""
        missing = set(self.domains)
        for batch in _batches(sorted(self.domains)):
            missing.difference_update(
                self.conn.scalars(select(Domain.name).where(Domain.name.in_(batch)))
            )
        if not missing:
            return 0
        upsert = dialect_insert(self.conn.dialect.name, Domain)
        statement = upsert.on_conflict_do_nothing(index_elements=["name"])
        rows = [{"name": name, "consecutive_failures": 0} for name in sorted(missing)]
        self.conn.execute(statement, rows)
        return len(missing)


def _added(mail: _Mail) -> dict[str, Any]:
    """A new address as its event records it."""
    fields = mail.fields
    return {
        "address": mail.address,
        "primary": fields["primary"],
        "verified": fields["verified"],
        "verified_at": isoformat(fields["verified_at"]),
        "free_provider": fields["free_provider"],
    }


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: isoformat(v) if isinstance(v, datetime) else v for k, v in values.items()}


def _insert_with_ids(
    conn: Connection, table: Table, keys: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> list[int]:
    """Insert ``rows`` and return their ids, in order; ``keys[0]`` must be a unique column.

    On SQLite, under the chunk's exclusive lock, new rowids are max+1, max+2, …:
    when the maximum moved by exactly the number of rows, that is what happened
    and no lookup is needed. Otherwise the ids are looked up by the unique key.

    SQLAlchemy's ``insert().returning(table.c.id, sort_by_parameter_order=True)`` does
    the same in one line and was measured against this (issue #14; 1,000,000 addresses
    on SQLite, this machine, twice each, alternating): 78.7 and 78.8 s against 55.9 and
    55.8 s, 41% slower, past the 10% the issue allowed; its per-row parameter handling is
    what :func:`_insert` avoids.
    """
    if conn.dialect.name == "sqlite":
        highest = f"SELECT max(id) FROM {table.name}"
        before = conn.exec_driver_sql(highest).scalar() or 0
        _insert(conn, table, keys, rows)
        after = conn.exec_driver_sql(highest).scalar() or 0
        if after - before == len(rows):
            return list(range(before + 1, after + 1))
    else:
        _insert(conn, table, keys, rows)
    unique = table.c[keys[0]]
    found: dict[Any, int] = {}
    for batch in _batches([row[0] for row in rows]):
        query = select(unique, table.c.id).where(unique.in_(batch))
        found.update((key, id_) for key, id_ in conn.execute(query))
    return [found[row[0]] for row in rows]


def _column_default(column: Any) -> Any:
    """The value SQLAlchemy would insert for a column left out (scalar or callable default)."""
    default = column.default
    if default is None:
        return None
    if default.is_scalar:
        return default.arg
    if default.is_callable:
        try:
            return default.arg(None)
        except (AttributeError, KeyError, TypeError):  # it reads the row being inserted
            raise TypeError(
                f"column {column.key!r} has a default computed from the row; "
                "this bulk insert must give its value"
            ) from None
    raise TypeError(f"column {column.key!r} has a SQL default this bulk insert cannot compute")


def _insert(
    conn: Connection, table: Table, keys: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """``INSERT`` many rows through the driver's own ``executemany``.

    SQLAlchemy's per-row parameter handling costs more than SQLite's insert
    itself. The statement is still compiled by SQLAlchemy and every value goes
    through its column type's own bind processor, so what is stored is exactly
    what the ORM would store (e.g. ``UTCDateTime`` on SQLite).
    """
    dialect = conn.dialect
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
    names = list(compiled.positiontup or ()) if compiled.positional else list(compiled.params)
    count = len(rows)
    values: dict[str, Sequence[Any]] = dict(zip(keys, zip(*rows, strict=True), strict=True))
    for name in names:
        column = table.c[name]
        processor = column.type.dialect_impl(dialect).bind_processor(dialect)
        if name not in values:  # a column this import does not set: its Python default
            default = _column_default(column)
            values[name] = [default if processor is None else processor(default)] * count
        elif processor is not None:
            column_values = values[name]
            if isinstance(column.type, UTCDateTime):
                # Once per distinct value: every row of a chunk shares its clock.
                once = {v: processor(v) for v in set(column_values) if v is not None}
                values[name] = [once.get(v) for v in column_values]
            else:
                values[name] = [None if v is None else processor(v) for v in column_values]
    parameters: list[Any]
    if compiled.positional:
        parameters = list(zip(*(values[name] for name in names), strict=True))
    else:
        parameters = [
            dict(zip(names, row, strict=True))
            for row in zip(*(values[name] for name in names), strict=True)
        ]
    conn.exec_driver_sql(compiled.string, parameters)


def _bulk_update(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """``UPDATE … WHERE id = ?`` as executemany, one statement per set of changed columns."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        keys = tuple(sorted(k for k in row if k != "id"))
        params = {f"v_{k}": row[k] for k in keys}
        params["k_id"] = row["id"]
        groups.setdefault(keys, []).append(params)
    for keys, params_list in groups.items():
        statement = (
            update(table)
            .where(table.c.id == bindparam("k_id", type_=table.c.id.type))
            .values({k: bindparam(f"v_{k}", type_=table.c[k].type) for k in keys})
        )
        conn.execute(statement, params_list)


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """One chunk, all or nothing; on SQLite the write lock is taken up front.

    A deferred SQLite transaction that reads, then writes after another writer
    committed, fails at once (a WAL snapshot cannot be upgraded); ``BEGIN
    IMMEDIATE`` waits for the lock instead, under the engine's busy timeout.

    The chunk's commit checkpoints the WAL less often (the connection goes back
    to the pool with its own setting). Atomicity is unchanged: a commit is in
    the WAL, which SQLite replays after a crash; as ever with
    ``synchronous=NORMAL``, a power cut may lose the last commits (whole
    chunks), which running the import again restores.
    """
    with engine.connect() as conn:
        checkpoint = None
        if conn.dialect.name == "sqlite":
            # A bigger page cache keeps the unique indexes' hot pages in memory.
            conn.exec_driver_sql(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
            checkpoint = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={_SQLITE_CHECKPOINT_PAGES}")
        lock_for_writing(conn)
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            if checkpoint is not None:
                with suppress(SQLAlchemyError):  # a tuning knob: never hide the real error
                    conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={int(checkpoint)}")
