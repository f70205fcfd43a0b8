"""Accounts in from JSON Lines or CSV: validated line by line, applied in chunks, idempotent.

Why it is built this way:

* A bad line is reported by number and changes nothing; a good line is never
  lost because of a bad one. So every line is validated on its own first
  (pure Python), then checked against the store and the lines before it.
* Importing the same file twice changes nothing the second time: every row is
  compared with what is stored and only real differences are written, each
  with an event (a new account's ``account.created`` lists the addresses its
  line gave). A file that contradicts itself (two lines giving one address
  different values) would flip-flop on every import, so the later line is
  rejected instead.
* Security: an import changes only the accounts it owns. Each account has an
  ``owner`` (``web`` for sign-up and the admin command, ``import`` for this
  command, ``api:<key name>`` for an API key's push); a line naming an account
  of another owner, or giving an address of another owner's account, is
  rejected and changes nothing, so an API key cannot attach its address to the
  web admin (and then reset the admin's password). Usernames follow the one
  rule of :mod:`lapsewatch.names` (nothing trimmed, no look-alikes) and are
  matched by their key, addresses by theirs: ``ROOT`` is ``root``, and
  ``CTX@x.test`` is ``ctx@x.test``.
* Security: an address lapsewatch unverified stays unverified when a file
  merely repeats the old ``verified``/``verified_at`` (a nightly export from the
  registry would otherwise undo every unverify). Only a ``verified_at`` later
  than the unverify counts as the owner verifying again. That holds for a case
  variant of the address, and for an address removed and imported again:
  ``address_history`` remembers every unverify.
* A million addresses must import in under a minute on SQLite: a second
  process parses, lines are grouped in chunks, each chunk is looked up with a
  few ``IN`` queries, written with bulk Core inserts and committed in one
  transaction (never half a chunk).

Where the parts live: :mod:`~lapsewatch.accounts.import_validate` (one line to
an account or a rejection), :mod:`~lapsewatch.accounts.import_input` (input
kinds, reading and framing, the parsing process),
:mod:`~lapsewatch.accounts.import_reconcile` (a chunk: the store plus its lines
gives the changes) and :mod:`~lapsewatch.accounts.import_write` (bulk writes,
events, the transaction). This module runs them, chunk by chunk, and sums up.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lapsewatch import domains
from lapsewatch.accounts.import_input import (
    ImportInputError,
    InputKind,
    _frames,
    _Parsed,
    _parsed_elsewhere,
    _Position,
    _Reader,
    _validate,
    detect_kind,
)
from lapsewatch.accounts.import_reconcile import API_OWNER_PREFIX as API_OWNER_PREFIX
from lapsewatch.accounts.import_reconcile import _Chunk, _Seen
from lapsewatch.accounts.import_validate import CSV_COLUMNS as CSV_COLUMNS
from lapsewatch.accounts.import_validate import LineProblem, _bad_char, _LineIn, _Reject, _Validator
from lapsewatch.accounts.import_write import ACTOR, _ChunkResult, _transaction

__all__ = [
    "ACTOR",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_OWNER",
    "ImportAborted",
    "ImportInputError",
    "ImportSummary",
    "InputKind",
    "LineProblem",
    "check_owner",
    "detect_kind",
    "import_accounts",
    "import_objects",
]

DEFAULT_OWNER = "import"
"""Who owns the accounts an import creates, and so which ones it may change."""
_MAX_OWNER = 100  # accounts.owner
DEFAULT_CHUNK_SIZE = 4000
"""Addresses per transaction: big enough to amortise a commit, small enough to stay responsive."""
MAX_WARNINGS = 1000
"""Warnings kept in the summary (all are counted); a million identical ones help nobody."""

_ANALYZE_FROM = 20_000
"""PostgreSQL: rows added before the import first refreshes the planner's statistics."""


def check_owner(owner: object) -> str:
    """``owner`` if an import may own accounts under it, else ``ValueError`` saying why.

    ``import`` (the CLI's default) or ``api:<key name>`` (an API key's push, or an
    operator seeding that key's accounts). Never ``web``: the web app's accounts
    (sign-up, ``admin create-admin``) have passwords and are changed only there.
    """
    if not isinstance(owner, str):
        raise ValueError("the owner must be a string")
    if owner == DEFAULT_OWNER:
        return owner
    if owner.startswith(API_OWNER_PREFIX):
        key_name = owner.removeprefix(API_OWNER_PREFIX)
        if not key_name.strip():
            raise ValueError(f"owner {owner!r} names no API key (expected api:<key name>)")
        if len(owner) > _MAX_OWNER:
            raise ValueError(f"owner is {len(owner)} characters long; the limit is {_MAX_OWNER}")
        bad = _bad_char(owner)
        if bad:
            raise ValueError(f"owner contains the control character {bad}")
        return owner
    raise ValueError(
        f"owner {owner[:60]!r} is not one an import may have: "
        f"use {DEFAULT_OWNER!r} or 'api:<key name>' (the web app's accounts are never imported)"
    )


@dataclass(frozen=True)
class ImportSummary:
    """What an import did; counts are row changes, ``unchanged`` counts good lines."""

    lines: int = 0
    """Data lines read: non-blank JSON lines, or CSV rows after the header."""
    accounts_created: int = 0
    accounts_updated: int = 0
    emails_added: int = 0
    emails_updated: int = 0
    domains_added: int = 0
    unchanged: int = 0
    """Good lines that found the store already as they describe it."""
    rejected: tuple[LineProblem, ...] = ()
    warnings: tuple[LineProblem, ...] = ()
    """The first :data:`MAX_WARNINGS` warnings."""
    warnings_total: int = 0

    @property
    def ok(self) -> bool:
        return not self.rejected

    @property
    def changed(self) -> bool:
        return any(
            (
                self.accounts_created,
                self.accounts_updated,
                self.emails_added,
                self.emails_updated,
                self.domains_added,
            )
        )


class ImportAborted(Exception):
    """The database failed; every chunk before ``first_line`` is committed, nothing after."""

    def __init__(self, message: str, summary: ImportSummary, first_line: int) -> None:
        super().__init__(message)
        self.summary = summary
        self.first_line = first_line


def _run_chunk(
    engine: Engine,
    lines: list[_LineIn],
    seen: _Seen,
    now: datetime,
    source: str,
    owner: str,
) -> _ChunkResult:
    """Apply one chunk in one transaction; retried once if a concurrent writer raced us.

    (A sign-up that took a username or address meanwhile: on the retry the line
    finds it, owned by the web app, and is rejected.)
    """
    if not lines:
        return _ChunkResult()
    for attempt in (1, 2):
        result = _ChunkResult()
        try:
            with _transaction(engine) as conn:
                chunk = _Chunk(conn, lines, seen, owner)
                for line in lines:
                    try:
                        changed, warnings = chunk.apply(line)
                    except _Reject as exc:
                        result.rejected.append(LineProblem(line.line, str(exc)))
                        continue
                    result.unchanged += not changed
                    result.warnings.extend(LineProblem(line.line, w) for w in warnings)
                chunk.write(now, source, result)
        except IntegrityError:
            seen.discard()
            if attempt == 2:
                raise
            continue
        except BaseException:
            seen.discard()
            raise
        seen.commit()
        return result
    raise AssertionError("unreachable")  # pragma: no cover


def _chunks(records: Iterator[_Parsed], size: int) -> Iterator[list[_Parsed]]:
    chunk: list[_Parsed] = []
    addresses = 0
    for record in records:
        chunk.append(record)
        if isinstance(record[1], _LineIn):
            addresses += len(record[1].emails)
        if addresses >= size or len(chunk) >= size:
            yield chunk
            chunk, addresses = [], 0
    if chunk:
        yield chunk


@dataclass
class _Totals:
    lines: int = 0
    accounts_created: int = 0
    accounts_updated: int = 0
    emails_added: int = 0
    emails_updated: int = 0
    domains_added: int = 0
    unchanged: int = 0
    rejected: list[LineProblem] = field(default_factory=list)
    warnings: list[LineProblem] = field(default_factory=list)
    warnings_total: int = 0

    def add(self, result: _ChunkResult, parse_rejects: list[LineProblem]) -> None:
        self.accounts_created += result.accounts_created
        self.accounts_updated += result.accounts_updated
        self.emails_added += result.emails_added
        self.emails_updated += result.emails_updated
        self.domains_added += result.domains_added
        self.unchanged += result.unchanged
        self.rejected.extend(sorted(parse_rejects + result.rejected, key=lambda p: p.line))
        self.warnings_total += len(result.warnings)
        room = MAX_WARNINGS - len(self.warnings)
        self.warnings.extend(result.warnings[: max(room, 0)])

    def freeze(self) -> ImportSummary:
        return ImportSummary(
            lines=self.lines,
            accounts_created=self.accounts_created,
            accounts_updated=self.accounts_updated,
            emails_added=self.emails_added,
            emails_updated=self.emails_updated,
            domains_added=self.domains_added,
            unchanged=self.unchanged,
            rejected=tuple(self.rejected),
            warnings=tuple(self.warnings),
            warnings_total=self.warnings_total,
        )


PARALLEL_MIN_BYTES = 8 << 20
"""Below this (~50,000 addresses) a second process costs more to start than it saves."""


def _parallel_path(stream: object, parallel: bool | None) -> str | None:
    """The file a second process may read and parse, or ``None`` to parse here.

    Only a regular file can be read twice; ``None`` (auto) also wants a big
    file and a second core.
    """
    if parallel is False:
        return None
    name = getattr(stream, "name", None)
    try:
        info = os.fstat(stream.fileno())  # type: ignore[attr-defined]
        named = os.stat(name) if isinstance(name, str) else None
    except (AttributeError, OSError, ValueError):
        return None
    if named is None or not stat.S_ISREG(info.st_mode):
        return None
    if (info.st_dev, info.st_ino) != (named.st_dev, named.st_ino):
        return None
    if parallel is None and ((os.cpu_count() or 1) < 2 or info.st_size < PARALLEL_MIN_BYTES):
        return None
    return os.path.abspath(str(name))


def import_accounts(
    engine: Engine,
    stream: Iterable[bytes],
    *,
    name: str | None = None,
    kind: InputKind | None = None,
    free_providers: domains.FreeProviders | None = None,
    now: datetime | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    parallel: bool | None = None,
    progress: Callable[[int], None] | None = None,
    owner: str = DEFAULT_OWNER,
) -> ImportSummary:
    """Import accounts from ``stream`` (byte lines: an open binary file, stdin's buffer).

    ``owner`` owns the accounts the import creates, and the import changes no
    other: a line naming an account of another owner (the web app's ``web``,
    another API key's ``api:<name>``), or an address of such an account, is
    rejected. ``import`` (the CLI) or ``api:<key name>`` (an API key's push);
    anything else raises ``ValueError`` (see :func:`check_owner`).

    ``name`` picks the format by extension and names the input in event
    reasons; ``kind`` overrides detection. ``now`` fixes the clock (tests).
    ``parallel`` parses a regular file in a second process while this one
    writes (``None``: when the file is big and there is a second core).
    ``progress`` receives the number of bytes read after each chunk.

    Raises :class:`ImportInputError` for an unusable input (nothing imported) and
    :class:`ImportAborted` when the database fails (earlier chunks stay).
    """
    owner = check_owner(owner)
    started = now or datetime.now(UTC)
    validator = _Validator(free_providers or domains.load_free_providers(), started)
    reader = _Reader(stream)
    if kind is None:
        kind = detect_kind(name, reader.first_line())
    position: _Position | _Reader = reader
    records: Iterator[_Parsed]
    path = _parallel_path(stream, parallel)
    if path is not None:
        position = _Position()
        records = _parsed_elsewhere(path, kind, validator, position)
    else:
        frames, columns = _frames(reader, kind)
        records = (_validate(validator, frame, columns()) for frame in frames)
    return _import(engine, records, position, name or "<stdin>", owner, now, chunk_size, progress)


def import_objects(
    engine: Engine,
    objects: Iterable[object],
    *,
    name: str,
    free_providers: domains.FreeProviders | None = None,
    now: datetime | None = None,
    owner: str = DEFAULT_OWNER,
) -> ImportSummary:
    """Import accounts given as objects (each what one JSON Lines line holds, decoded),
    numbered from 1 like lines: the API passes the items its model has read, with no
    round trip through bytes. Otherwise as :func:`import_accounts`."""
    owner = check_owner(owner)
    started = now or datetime.now(UTC)
    validator = _Validator(free_providers or domains.load_free_providers(), started)
    records = (_validate_object(validator, number, item) for number, item in enumerate(objects, 1))
    return _import(engine, records, _Position(), name, owner, now, DEFAULT_CHUNK_SIZE, None)


def _validate_object(validator: _Validator, number: int, item: object) -> _Parsed:
    try:
        return number, validator.from_object(item, number)
    except _Reject as exc:
        return number, str(exc)


def _import(
    engine: Engine,
    records: Iterator[_Parsed],
    position: _Position | _Reader,
    source: str,
    owner: str,
    now: datetime | None,
    chunk_size: int,
    progress: Callable[[int], None] | None,
) -> ImportSummary:
    """Validated records, applied chunk by chunk (one transaction each), summed up."""
    seen = _Seen()
    totals = _Totals()
    analyze_at = _ANALYZE_FROM if engine.dialect.name == "postgresql" else None
    with _gc_paused():
        for chunk in _chunks(records, chunk_size):
            good = [record for _, record in chunk if isinstance(record, _LineIn)]
            bad = [LineProblem(n, record) for n, record in chunk if isinstance(record, str)]
            try:
                result = _run_chunk(engine, good, seen, now or datetime.now(UTC), source, owner)
            except SQLAlchemyError as exc:
                raise ImportAborted(
                    f"database error: {_first_line(exc)}", totals.freeze(), chunk[0][0]
                ) from exc
            totals.lines += len(chunk)
            totals.add(result, bad)
            added = totals.accounts_created + totals.emails_added
            if analyze_at is not None and added >= analyze_at:
                _analyze(engine)
                analyze_at = 2 * added
            if progress is not None:
                progress(position.bytes_read)
    return totals.freeze()


def _analyze(engine: Engine) -> None:
    """Fresh PostgreSQL planner statistics for the tables a chunk looks rows up in.

    Planned with the statistics of the (nearly) empty tables of the start, the
    lookups scan whole tables, once per chunk: the import slows down as it goes.
    Autovacuum refreshes statistics a minute or more late, or never where it is
    off; so the import does it itself each time it has doubled what it added.
    Only an optimisation: a failure is left to the next chunk to report.
    """
    with suppress(SQLAlchemyError), engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE accounts, emails, domains")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cycle collector off while importing (as it was before, afterwards).

    A chunk makes tens of thousands of short-lived objects that reference
    counting frees; the collector would scan them again and again for nothing
    (a fifth of a big import's time). Once it is back on, it frees any cycle
    made meanwhile.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _first_line(exc: SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's statement dump and help link."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
