"""Which domains are due: behind at least one verified, non-free address, not
leased by a worker, and never checked (or without a ``domains`` row) or past
their next due time. Oldest first, in a bounded batch (:func:`select_due`) or
streamed page by page for a whole cycle (:func:`due_pages`).

This module owns the rule: :func:`count_due_query`, :func:`scheduled`,
:func:`is_due` and :func:`without_row` are what the report counts and lists, so
"due now" anywhere is what ``lapsewatch check`` checks."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.orm import Session

from lapsewatch.schedule import Policy, reads_mail_hosts
from lapsewatch.store.db import in_values
from lapsewatch.store.models import Domain, Email

__all__ = [
    "DueDomain",
    "count_due",
    "count_due_query",
    "due_now",
    "due_pages",
    "is_due",
    "known_due",
    "scheduled",
    "select_due",
    "stream_due",
    "without_row",
]


@dataclass(frozen=True)
class DueDomain:
    name: str
    earliest_verified_at: datetime | None
    """The oldest ``Email.trusted_since`` (adding or verification) among its verified
    addresses: the most exposed one decides whether a registration date counts as
    a re-registration."""
    known_nameservers: tuple[str, ...] = ()
    """The registry's name servers at the last healthy check outside the auto-renew
    grace: a sale during the grace changes them (``verdict.decide``)."""
    known_mail_hosts: tuple[str, ...] = ()
    """The mail hosts (MX targets) read at the last healthy check outside the grace: the
    grace rule compares them, and a check that does not read the MX uses them."""
    mail_hosts_read_at: datetime | None = None
    """When ``known_mail_hosts`` was read (``None``: never)."""

    def read_mail_hosts(self, policy: Policy, now: datetime) -> bool:
        """Whether this check reads the MX (never read, or ``policy.mail_hosts_interval``
        ago)."""
        return reads_mail_hosts(policy, self.mail_hosts_read_at, now)


def select_due(
    session: Session,
    *,
    now: datetime,
    limit: int | None,
    everything: bool = False,
    names: list[str] | None = None,
    include_leased: bool = False,
) -> list[DueDomain]:
    """Due domains (``everything``: all behind a verified address), never leased ones."""
    verified = (
        select(Email.domain, func.min(Email.trusted_since).label("earliest"))
        .where(*_watched())
        .group_by(Email.domain)
        .subquery()
    )
    # From the addresses, not the domains table: an address whose domain row is
    # missing (added by another path) is due at once rather than forgotten.
    query = (
        select(verified.c.domain, verified.c.earliest, *_KNOWN)
        .outerjoin(Domain, Domain.name == verified.c.domain)
        .order_by(Domain.next_due_at.is_not(None), Domain.next_due_at, verified.c.domain)
    )
    if not include_leased:
        query = query.where(_not_leased(now))
    if not everything:
        query = query.where(is_due(now))
    if names is not None:
        query = query.where(verified.c.domain.in_(in_values(names)))
    if limit is not None:
        query = query.limit(limit)
    return [known_due(row.domain, row.earliest, row) for row in session.execute(query)]


_KNOWN = (Domain.nameservers, Domain.mail_hosts, Domain.mail_hosts_read_at)
"""What the ``domains`` row knows that the check compares against (``_due``)."""


def due_now(session: Session, name: str, now: datetime) -> None:
    """Make ``name`` due at ``now`` (a check that was to happen elsewhere did not: an
    address verified while its registry was silent); the next cycle run checks it."""
    domain = session.get(Domain, name, with_for_update=True)
    if domain is None:
        session.add(Domain(name=name, consecutive_failures=0, next_due_at=now))
    elif domain.next_due_at is None or domain.next_due_at > now:
        domain.next_due_at = now


def known_due(name: str, earliest: datetime | None, known: Any) -> DueDomain:
    """The due domain with what its ``domains`` row knows (``known``: a row with
    :data:`_KNOWN`, or the ``Domain`` itself): the grace rule and a mail-host domain
    registered again compare against it. One-off checks (the status endpoint,
    check-now) use it too, whether or not a verified address is behind the domain."""
    if known is None:
        return DueDomain(name, earliest)
    return DueDomain(
        name,
        earliest,
        tuple(known.nameservers or ()),
        tuple(known.mail_hosts or ()),
        known.mail_hosts_read_at,
    )


_AnySelect = Select[*tuple[Any, ...]]

DEFAULT_PAGE = 2000
"""Due domains read per query while streaming: bounded memory, short read transactions."""


def _behind(names: list[str]) -> Select[str, datetime | None]:
    """For these domains: the oldest verification of a verified, non-free address."""
    return (
        select(Email.domain, func.min(Email.trusted_since))
        .where(Email.domain.in_(names), *_watched())
        .group_by(Email.domain)
    )


def due_pages(
    engine: Engine,
    *,
    now: datetime,
    limit: int | None,
    everything: bool = False,
    page: int = DEFAULT_PAGE,
) -> Generator[list[DueDomain]]:
    """What :func:`select_due` selects, read page by page instead of all at once.

    Each page is its own short query (keyset pagination), so memory stays
    bounded however many domains are due, no read transaction is held open
    while the results are written (SQLite's WAL can be checkpointed), and
    domains applied meanwhile are never read twice. The order is
    :func:`select_due`'s: domains never checked (or whose row is missing) by
    name, then the oldest due. With ``everything``, every domain is read by
    name instead (due times change as domains are applied, so ordering by them
    would meet a domain twice).
    """
    left = limit

    def take(found: list[DueDomain]) -> list[DueDomain]:
        nonlocal left
        if left is not None:
            found = found[:left]
            left -= len(found)
        return found

    for phase in _phases(now, everything, engine.dialect.name):
        streams = [_Stream(query) for query in phase]
        while left is None or left > 0:
            with engine.connect() as connection:
                names = _merge(connection, streams, page)
                if not names:
                    break
                found = _still_behind(connection, names)
            found = take(found)
            if found:
                yield found


def stream_due(
    engine: Engine,
    *,
    now: datetime,
    limit: int | None,
    everything: bool = False,
    page: int = DEFAULT_PAGE,
) -> Iterator[DueDomain]:
    """:func:`due_pages`, one domain at a time."""
    for found in due_pages(engine, now=now, limit=limit, everything=everything, page=page):
        yield from found


def count_due(engine: Engine, *, now: datetime, everything: bool = False) -> int:
    """How many domains :func:`due_pages` would yield (without a limit)."""
    with engine.connect() as connection:
        with_row, without = connection.execute(count_due_query(now, everything=everything)).one()
    return int(with_row) + int(without)


def count_due_query(now: datetime, *, everything: bool = False) -> Select[int, int]:
    """One statement counting what :func:`count_due` counts, on any connection.

    Two disjoint counts whose sum is the total: ``domains`` rows in
    :func:`scheduled` (due, unless ``everything``), and :func:`without_row`
    (never checked, so always due). Apart, because a caller listing due domains
    can skip the search for rowless ones, a scan of the addresses, when there are
    none. The database counts; no row reaches Python.
    """
    rows = select(func.count()).select_from(Domain).where(scheduled(now))
    if not everything:
        rows = rows.where(is_due(now))
    orphans = select(func.count()).select_from(without_row().subquery())
    return select(rows.scalar_subquery(), orphans.scalar_subquery())


def scheduled(now: datetime) -> ColumnElement[bool]:
    """A ``domains`` row the cycle checks once due: a watched address depends on it
    (a free provider's domain, or one whose addresses are all unverified, is not
    checked), and no worker holds it now (a leased domain is being checked)."""
    behind = select(Email.id).where(Email.domain == Domain.name, *_watched()).exists()
    return and_(behind, _not_leased(now))


def is_due(now: datetime) -> ColumnElement[bool]:
    """Never checked, or past its next due time."""
    return or_(Domain.next_due_at.is_(None), Domain.next_due_at <= now)


def without_row() -> Select[str]:
    """Domains of watched addresses that have no ``domains`` row (added by another
    path): due at once rather than forgotten. Unordered; add ``ORDER BY`` to page."""
    return select(Email.domain).where(*_watched(), _without_domain_row()).group_by(Email.domain)


def _not_leased(now: datetime) -> ColumnElement[bool]:
    return or_(Domain.lease_until.is_(None), Domain.lease_until < now)


def _watched() -> tuple[ColumnElement[bool], ...]:
    """An address whose domain is checked: verified, and not at a free provider."""
    return Email.verified.is_(True), Email.free_provider.is_(False)


def _without_domain_row() -> ColumnElement[bool]:
    return ~select(Domain.name).where(Domain.name == Email.domain).exists()


_Query = Callable[[tuple[Any, ...] | None, int], _AnySelect]


class _Stream:
    """One keyset-paginated query (rows start with a name), read ahead a page at a time."""

    def __init__(self, query: _Query) -> None:
        self.query = query
        self.buffer: deque[tuple[Any, ...]] = deque()
        self.key: tuple[Any, ...] | None = None
        self.done = False

    def fill(self, connection: Connection, page: int) -> None:
        if self.done or len(self.buffer) >= page:
            return
        rows = [tuple(row) for row in connection.execute(self.query(self.key, page))]
        self.buffer.extend(rows)
        if rows:
            self.key = rows[-1]
        self.done = len(rows) < page  # a short page: nothing more (re-asking would rescan)


def _merge(connection: Connection, streams: list[_Stream], page: int) -> list[str]:
    """The next ``page`` names of the streams, merged by name (one stream: its order)."""
    for stream in streams:
        stream.fill(connection, page)
    if len(streams) == 1:
        buffer = streams[0].buffer
        return [buffer.popleft()[0] for _ in range(min(page, len(buffer)))]
    names: list[str] = []
    while len(names) < page:
        ready = [s for s in streams if s.buffer]
        if not ready:
            break
        first = min(ready, key=lambda s: str(s.buffer[0][0]))
        name = first.buffer.popleft()[0]
        if not names or names[-1] != name:
            names.append(name)
        if not first.buffer:
            first.fill(connection, page)
    return names


def _still_behind(connection: Connection, names: list[str]) -> list[DueDomain]:
    """The domains among ``names`` still behind a verified, non-free address, in order."""
    listed = in_values(names)
    earliest: dict[str, datetime | None] = dict(connection.execute(_behind(listed)).all())
    query = select(Domain.name, *_KNOWN).where(Domain.name.in_(listed))
    known = {row.name: row for row in connection.execute(query)}
    return [known_due(name, earliest[name], known.get(name)) for name in names if name in earliest]


def _phases(now: datetime, everything: bool, dialect: str) -> list[tuple[_Query, ...]]:
    def orphans(key: tuple[Any, ...] | None, page: int) -> _AnySelect:
        query = without_row().order_by(Email.domain).limit(page)
        if key is not None:
            query = query.where(Email.domain > key[0])
        return query

    def by_name(*conditions: ColumnElement[bool]) -> _Query:
        def query(key: tuple[Any, ...] | None, page: int) -> _AnySelect:
            statement = (
                select(Domain.name)
                .where(_not_leased(now), *conditions)
                .order_by(Domain.name)
                .limit(page)
            )
            if key is not None:
                statement = statement.where(Domain.name > key[0])
            return statement

        return query

    def oldest_due(key: tuple[Any, ...] | None, page: int) -> _AnySelect:
        statement = (
            select(Domain.name, Domain.next_due_at)
            .where(_not_leased(now), Domain.next_due_at.is_not(None), Domain.next_due_at <= now)
            .order_by(Domain.next_due_at, Domain.name)
            .limit(page)
        )
        if key is not None:
            name, due_at = key
            statement = statement.where(
                Domain.next_due_at >= due_at,
                or_(Domain.next_due_at > due_at, Domain.name > name),
            )
        return statement

    # Each phase's streams are merged by name.
    if everything:
        return [(orphans, by_name())]
    return [(orphans, by_name(_never_checked(dialect))), (oldest_due,)]


def _never_checked(dialect: str) -> ColumnElement[bool]:
    """``next_due_at IS NULL``; on SQLite written so that it walks the primary key in
    name order rather than sorting every never-checked domain for each page (a
    unary ``+`` keeps SQLite from using the ``next_due_at`` index for it)."""
    if dialect == "sqlite":
        return literal_column("+domains.next_due_at").is_(None).self_group()
    return Domain.next_due_at.is_(None)
