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
"""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import chain
from pathlib import PurePath
from queue import Empty
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lapsewatch import domains
from lapsewatch.dates import isoformat, parse_datetime
from lapsewatch.names import InvalidName, address_key, check_username, username_key
from lapsewatch.store.models import Account, AddressHistory, Domain, Email, Event, UTCDateTime

__all__ = [
    "ACTOR",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_OWNER",
    "ImportAborted",
    "ImportSummary",
    "InputError",
    "InputKind",
    "LineProblem",
    "check_owner",
    "detect_kind",
    "import_accounts",
]

ACTOR = "import"
DEFAULT_OWNER = "import"
"""Who owns the accounts an import creates, and so which ones it may change."""
API_OWNER_PREFIX = "api:"
"""``api:<key name>``: the accounts an API key's pushes create and may change."""
_MAX_OWNER = 100  # accounts.owner
DEFAULT_CHUNK_SIZE = 4000
"""Addresses per transaction: big enough to amortise a commit, small enough to stay responsive."""
MAX_WARNINGS = 1000
"""Warnings kept in the summary (all are counted); a million identical ones help nobody."""

_ACCOUNT_KEYS = frozenset({"username", "totp", "projects", "emails"})
_ACCOUNT_REQUIRED = ("username", "emails")
_EMAIL_KEYS = frozenset({"address", "primary", "verified", "verified_at"})
_EMAIL_REQUIRED = ("address", "verified")
CSV_COLUMNS = ("username", "address", "primary", "verified", "verified_at", "totp", "projects")
_CSV_REQUIRED = ("username", "address", "verified")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

_MAX_ADDRESS = 320  # emails.address
_MAX_PROJECT = 200
_FUTURE_TOLERANCE = timedelta(minutes=10)
"""A verified_at beyond now (plus clock skew) is refused: it would re-verify anything."""
_IN_BATCH = 1000
"""Values per ``IN (...)``: far below SQLite's and PostgreSQL's bind limits."""
_SQLITE_CACHE_KIB = 128 * 1024
_ANALYZE_FROM = 20_000
"""PostgreSQL: rows added before the import first refreshes the planner's statistics."""
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


class InputKind(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


class InputError(ValueError):
    """The input as a whole is unusable (e.g. a CSV header with an unknown column)."""


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


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A rejected line or a warning, by physical line number in the input."""

    line: int
    message: str


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


class _Reject(Exception):
    """One line is bad; the message says why (raised before the line changes anything)."""


# ------------------------------------------------------------------ parsing


class _EmailIn(NamedTuple):
    """One address of a good line. Tuples: they cross from the parsing process cheaply."""

    address: str
    key: str
    """:func:`lapsewatch.names.address_key`: what the address is matched by."""
    domain: str
    free_provider: bool
    primary: bool | None
    """``None``: not given, keep what is stored (``False`` for a new address)."""
    verified: bool
    verified_at: datetime | None
    """``None``: not given, keep what is stored (never erase a known date)."""


class _LineIn(NamedTuple):
    line: int
    username: str
    """As :func:`lapsewatch.names.check_username` gives it (NFKC, nothing trimmed)."""
    key: str
    """:func:`lapsewatch.names.username_key`: what the account is matched by."""
    totp: bool | None
    """``None``: not given, keep what is stored; omitting a key never switches 2FA off."""
    projects: list[str] | None
    emails: list[_EmailIn]


# Addresses that need no quoting and have an ASCII host: the common case, for
# which the host alone decides the outcome of domains.parse (see _AddressParser).
_SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@([A-Za-z0-9.-]+)")


class _AddressParser:
    """``domains.parse`` with the host work cached: IDNA and the PSL cost ~60 µs a host.

    For a simple ASCII address ``parse`` validates the local part (always fine
    here, the pattern only admits atext) and then works on the host alone, so
    caching by host gives the same answer and the same error message. Anything
    else goes through ``domains.parse`` unchanged.
    """

    _MAX_CACHED = 200_000

    def __init__(self, free_providers: domains.FreeProviders) -> None:
        self._providers = free_providers
        self._free = free_providers.domains
        self._hosts: dict[str, tuple[str, str] | str] = {}

    def __call__(self, text: str) -> tuple[str, str, bool]:
        """(normalised address, registrable domain, free provider) or DomainError."""
        if len(text) <= domains.MAX_INPUT_LENGTH:
            stripped = text.strip()
            match = _SIMPLE_ADDRESS.fullmatch(stripped)
            if match is not None:
                host, domain = self._host(match[1])
                local = stripped[: match.start(1) - 1]
                return f"{local}@{host}", domain, domain in self._free
        parsed = domains.parse(text, free_providers=self._providers)
        if parsed.address is None:
            raise domains.DomainError(f"{text.strip()!r} is a domain, not an email address")
        return parsed.address, parsed.domain, parsed.free_provider

    def _host(self, host: str) -> tuple[str, str]:
        cached = self._hosts.get(host)
        if cached is None:
            try:
                parsed = domains.parse(f"x@{host}", free_providers=self._providers)
                cached = (parsed.host, parsed.domain)
            except domains.DomainError as exc:
                cached = str(exc)
            if len(self._hosts) >= self._MAX_CACHED:
                self._hosts.clear()
            self._hosts[host] = cached
        if isinstance(cached, str):
            raise domains.DomainError(cached)
        return cached


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# Unicode categories Cc (C0, DEL, C1) and Cs (lone surrogates, e.g. from "\ud800" in JSON).
_BAD_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _bad_char(text: str) -> str | None:
    match = _BAD_CHAR.search(text)
    return None if match is None else f"U+{ord(match[0]):04X}"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON allows duplicate keys and keeps the last; a file that repeats one is confused."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject(f"duplicate key {key!r}")
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


class _Validator:
    """Turns one line into a ``_LineIn`` or raises ``_Reject``; knows nothing of the store."""

    def __init__(self, free_providers: domains.FreeProviders, now: datetime) -> None:
        self.free_providers = free_providers
        self.now = now
        self.address = _AddressParser(free_providers)

    # -- fields shared by both formats

    def username(self, value: object) -> tuple[str, str]:
        """The username as stored and its key; the one rule sign-up uses, nothing trimmed.

        ``"root "``, ``root`` with a Cyrillic o or a zero-width space is refused,
        never taken for ``root``; ``ROOT`` and a full-width ``root`` have ``root``'s key.
        """
        if not isinstance(value, str):
            raise _Reject(f"username must be a string, not {_json_type(value)}")
        if not value:
            raise _Reject("username is empty")
        try:
            name = check_username(value)
        except InvalidName as exc:
            # ascii(): shows the look-alike or invisible character for what it is.
            shown = ascii(value[:60]) + ("…" if len(value) > 60 else "")
            raise _Reject(f"username {shown} is refused: {exc}") from None
        return name, username_key(name)

    def projects(self, values: Iterable[object]) -> list[str]:
        result: dict[str, None] = {}
        for value in values:
            if not isinstance(value, str):
                raise _Reject(f"projects must be strings, not {_json_type(value)}")
            name = value.strip()
            if not name:
                raise _Reject("empty project name")
            if len(name) > _MAX_PROJECT:
                raise _Reject(f"project name {name[:30]!r}… is longer than {_MAX_PROJECT}")
            bad = _bad_char(name)
            if bad:
                raise _Reject(f"project name {name!r} contains the control character {bad}")
            result[name] = None
        return list(result)

    def email(
        self,
        where: str,
        address: object,
        primary: bool | None,
        verified: bool,
        verified_at: object,
    ) -> _EmailIn:
        if not isinstance(address, str):
            raise _Reject(f"{where}address must be a string, not {_json_type(address)}")
        try:
            normalised, domain, free = self.address(address)
        except domains.DomainError as exc:
            raise _Reject(f"{where}address: {exc}") from None
        if len(normalised) > _MAX_ADDRESS:
            raise _Reject(f"{where}address is longer than {_MAX_ADDRESS} characters")
        when: datetime | None = None
        if verified_at is not None:
            if not isinstance(verified_at, str):
                raise _Reject(
                    f"{where}verified_at must be a date string or null, "
                    f"not {_json_type(verified_at)}"
                )
            try:
                when = parse_datetime(verified_at)
            except (ValueError, OverflowError) as exc:
                raise _Reject(f"{where}verified_at: {exc}") from None
            if when > self.now + _FUTURE_TOLERANCE:
                raise _Reject(f"{where}verified_at {verified_at!r} is in the future")
        return _EmailIn(normalised, address_key(normalised), domain, free, primary, verified, when)

    @staticmethod
    def check_emails(emails: Sequence[_EmailIn]) -> None:
        seen: set[str] = set()
        for email in emails:
            if email.key in seen:  # a case variant is the same address
                raise _Reject(f"{email.address} is listed twice")
            seen.add(email.key)
        primaries = [e.address for e in emails if e.primary]
        if len(primaries) > 1:
            raise _Reject(f"more than one primary address: {', '.join(primaries)}")

    # -- JSON Lines

    def from_json(self, text: str, line: int) -> _LineIn:
        try:
            data = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise _Reject(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
        except RecursionError:
            raise _Reject("not valid JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise _Reject(f"expected a JSON object, got {_json_type(data)}")
        self._keys(data, _ACCOUNT_KEYS, _ACCOUNT_REQUIRED, "")
        totp = self._optional_bool(data.get("totp"), "totp")
        projects_value = data.get("projects")
        projects: list[str] | None = None
        if projects_value is not None:
            if not isinstance(projects_value, list):
                raise _Reject(f"projects must be an array, not {_json_type(projects_value)}")
            projects = self.projects(projects_value)
        emails_value = data["emails"]
        if not isinstance(emails_value, list):
            raise _Reject(f"emails must be an array, not {_json_type(emails_value)}")
        emails: list[_EmailIn] = []
        for index, item in enumerate(emails_value):
            where = f"emails[{index}]."
            if not isinstance(item, dict):
                raise _Reject(f"emails[{index}] must be an object, not {_json_type(item)}")
            self._keys(item, _EMAIL_KEYS, _EMAIL_REQUIRED, where)
            verified = item["verified"]
            if not isinstance(verified, bool):
                raise _Reject(f"{where}verified must be true or false, not {_json_type(verified)}")
            primary = self._optional_bool(item.get("primary"), f"{where}primary")
            emails.append(
                self.email(where, item["address"], primary, verified, item.get("verified_at"))
            )
        self.check_emails(emails)
        return _LineIn(line, *self.username(data["username"]), totp, projects, emails)

    @staticmethod
    def _keys(
        data: dict[str, Any], allowed: frozenset[str], required: Sequence[str], where: str
    ) -> None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise _Reject(
                f"unknown key {where}{unknown[0]!r} (expected {', '.join(sorted(allowed))})"
            )
        for key in required:
            if data.get(key) is None:
                raise _Reject(f"missing key {where}{key!r}")

    @staticmethod
    def _optional_bool(value: object, name: str) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        raise _Reject(f"{name} must be true or false, not {_json_type(value)}")

    # -- CSV

    def from_csv(self, row: list[str], columns: dict[str, int], line: int) -> _LineIn:
        if len(row) != len(columns):
            raise _Reject(f"expected {len(columns)} fields, got {len(row)}")
        try:
            "".join(row).encode("utf-8")
        except UnicodeEncodeError:
            raise _Reject("not valid UTF-8") from None

        def cell(name: str) -> str:
            index = columns.get(name)
            return "" if index is None else row[index].strip()

        for name in _CSV_REQUIRED:
            if not cell(name):
                raise _Reject(f"{name} is empty")
        projects_text = cell("projects")
        projects = self.projects_from_csv(projects_text) if projects_text else None
        verified = self._csv_bool(cell("verified"), "verified")
        assert verified is not None  # required above
        email = self.email(
            "",
            cell("address"),
            self._csv_bool(cell("primary"), "primary"),
            verified,
            cell("verified_at") or None,
        )
        totp = self._csv_bool(cell("totp"), "totp")
        username = row[columns["username"]]  # not trimmed: "root " is not root
        return _LineIn(line, *self.username(username), totp, projects, [email])

    @staticmethod
    def _csv_bool(text: str, name: str) -> bool | None:
        if not text:
            return None
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise _Reject(f"{name} must be true/false, 1/0 or yes/no, not {text[:30]!r}")

    def projects_from_csv(self, text: str) -> list[str]:
        """``a; b;`` → ``["a", "b"]``: stray separators are not project names."""
        return self.projects(part for part in text.split(";") if part.strip())


# ------------------------------------------------------------------ reading


class _Reader:
    """Numbered byte lines of the input, with the bytes read so far (for progress)."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = iter(stream)
        self._head: list[bytes] = []
        self.bytes_read = 0

    def first_line(self) -> bytes | None:
        """The first non-blank line, without consuming anything."""
        for raw in self._stream:
            if not self._head:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is not data
            self._head.append(raw)
            if raw.strip():
                return raw
        return None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for number, raw in enumerate(chain(self._head, self._stream), 1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            self.bytes_read += len(raw)
            yield number, raw


def detect_kind(name: str | None, first_line: bytes | None) -> InputKind:
    """``.csv`` → CSV, ``.jsonl``/``.ndjson``/``.json`` → JSON Lines, else sniff.

    Sniffing picks CSV only for a header naming ``username`` and ``address``:
    anything else is read as JSON Lines, whose errors are reported line by line.
    """
    suffix = PurePath(name).suffix.lower() if name else ""
    if suffix == ".csv":
        return InputKind.csv
    if suffix in (".jsonl", ".ndjson", ".json"):
        return InputKind.jsonl
    if first_line is not None and not first_line.lstrip().startswith(b"{"):
        header = {part.strip().strip(b'"').lower() for part in first_line.split(b",")}
        if {b"username", b"address"} <= header:
            return InputKind.csv
    return InputKind.jsonl


_Parsed = tuple[int, _LineIn | str]
"""A line number and its account, or the reason it was rejected."""
_Frame = tuple[int, bytes | list[str] | str]
"""A line number and its raw JSON line, its CSV row, or an error found while framing."""


def _jsonl_frames(reader: _Reader) -> Iterator[_Frame]:
    for number, raw in reader:
        if raw.strip():
            yield number, raw


class _CsvFrames:
    """CSV rows with the physical line each starts on; the header sets ``columns``."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self.columns: dict[str, int] = {}

    def __iter__(self) -> Iterator[_Frame]:
        position = 0

        def text() -> Iterator[str]:
            nonlocal position
            for number, raw in self._reader:
                position = number
                # Undecodable bytes survive as lone surrogates: that row alone is rejected.
                yield raw.decode("utf-8", "surrogateescape")

        rows = csv.reader(text(), strict=True)
        while True:
            start = position + 1
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as exc:
                if not self.columns:
                    raise InputError(f"line {start}: unreadable CSV header: {exc}") from None
                yield start, f"not valid CSV: {exc}"
                continue
            if not any(cell.strip() for cell in row):
                continue
            if not self.columns:
                self.columns = _csv_header(row, start)
                continue
            yield start, row


def _csv_header(row: list[str], line: int) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, cell in enumerate(row):
        name = cell.strip().lower()
        if name not in CSV_COLUMNS:
            raise InputError(
                f"line {line}: unknown CSV column {cell.strip()!r} "
                f"(expected a header with {', '.join(CSV_COLUMNS)})"
            )
        if name in columns:
            raise InputError(f"line {line}: CSV column {name!r} appears twice")
        columns[name] = index
    missing = [name for name in _CSV_REQUIRED if name not in columns]
    if missing:
        raise InputError(f"line {line}: CSV header lacks the column(s) {', '.join(missing)}")
    return columns


def _validate(validator: _Validator, frame: _Frame, columns: dict[str, int]) -> _Parsed:
    number, payload = frame
    if isinstance(payload, str):
        return number, payload
    try:
        if isinstance(payload, bytes):
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, f"not valid UTF-8 (byte {exc.start + 1})"
            return number, validator.from_json(text, number)
        return number, validator.from_csv(payload, columns, number)
    except _Reject as exc:
        return number, str(exc)


# Reading and validating in a second process: the second core parses while the
# first writes. It reads the file itself and hands over validated lines through
# a bounded queue, so this process never runs a helper thread: a thread here
# would fight the writer for the GIL every time SQLite releases it.

_BLOCK = 1000
"""Lines per message: enough to amortise pickling."""
_AHEAD = 8
"""Messages the parser may run ahead: a few chunks, bounded memory."""


def _frames(
    reader: _Reader, kind: InputKind
) -> tuple[Iterable[_Frame], Callable[[], dict[str, int]]]:
    """The input's frames and (for CSV, once the header is read) its columns."""
    if kind is InputKind.jsonl:
        return _jsonl_frames(reader), dict
    frames = _CsvFrames(reader)
    return frames, lambda: frames.columns


def _parse_file(
    queue: Any,
    path: str,
    kind: InputKind,
    free_providers: domains.FreeProviders,
    now: datetime,
) -> None:
    """The parsing process: send ("lines", [parsed…], bytes read) … ("end", None, n)."""
    try:
        with open(path, "rb") as handle:
            reader = _Reader(handle)
            validator = _Validator(free_providers, now)
            frames, columns = _frames(reader, kind)
            block: list[_Parsed] = []
            for frame in frames:
                block.append(_validate(validator, frame, columns()))
                if len(block) >= _BLOCK:
                    queue.put(("lines", block, reader.bytes_read))
                    block = []
            queue.put(("lines", block, reader.bytes_read))
            queue.put(("end", None, reader.bytes_read))
    except InputError as exc:
        queue.put(("input-error", str(exc), 0))
    except Exception as exc:  # reported by the importing process
        queue.put(("error", f"{type(exc).__name__}: {exc}", 0))


class _Position:
    """Bytes of the input read so far, whichever process reads it."""

    bytes_read = 0


def _parsed_elsewhere(
    path: str, kind: InputKind, validator: _Validator, position: _Position
) -> Iterator[_Parsed]:
    context = multiprocessing.get_context("spawn")  # no fork: the caller may hold connections
    queue = context.Queue(_AHEAD)
    process = context.Process(
        target=_parse_file,
        args=(queue, path, kind, validator.free_providers, validator.now),
        name="lapsewatch-import-parser",
        daemon=True,
    )
    process.start()
    try:
        while True:
            try:
                tag, payload, position.bytes_read = queue.get(timeout=1.0)
            except Empty:
                if not process.is_alive():
                    raise RuntimeError(
                        f"the parsing process stopped (exit code {process.exitcode})"
                    ) from None
                continue
            if tag == "lines":
                yield from payload
            elif tag == "end":
                return
            elif tag == "input-error":
                raise InputError(payload)
            else:
                raise RuntimeError(f"the parsing process failed: {payload}")
    finally:
        if process.is_alive():
            process.terminate()
        process.join()
        queue.close()


# ------------------------------------------------------------------ applying


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


class _Lapse(NamedTuple):
    """An unverify ``address_history`` remembers (the address row may be gone)."""

    at: datetime
    reason: str


def _by_key(account: _Acct) -> str:
    return account.key


def _by_address_key(mail: _Mail) -> str:
    return mail.key


def _by_line(account: _Acct) -> int:
    return account.line


def _shown_owner(owner: str) -> str:
    """An owner as a rejection says it: another registry's key name is not told."""
    return "an API key" if owner.startswith(API_OWNER_PREFIX) else owner


class _Seen:
    """Which line of this run first set an address or an account field (by their keys).

    Two lines that disagree would flip a row on every import; the later one is
    rejected. Entries of a chunk are undone if the chunk is not committed.
    """

    def __init__(self) -> None:
        self.addresses: dict[str, int] = {}
        self.totp: dict[str, int] = {}
        self.projects: dict[str, int] = {}
        self._undo: list[tuple[dict[str, int], str]] = []
        """Entries made by the current chunk."""

    def address(self, key: str) -> int:
        return self.addresses.get(key, 0)

    def account(self, key: str) -> tuple[int, int]:
        return self.totp.get(key, 0), self.projects.get(key, 0)

    def mark(self, line: _LineIn) -> None:
        for email in line.emails:
            self._first(self.addresses, email.key, line.line)
        if line.totp is not None:
            self._first(self.totp, line.key, line.line)
        if line.projects is not None:
            self._first(self.projects, line.key, line.line)

    def _first(self, table: dict[str, int], key: str, line: int) -> None:
        if key not in table:
            table[key] = line
            self._undo.append((table, key))

    def commit(self) -> None:
        self._undo = []

    def discard(self) -> None:
        for table, key in self._undo:
            del table[key]
        self._undo = []


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
_MAIL_COLUMNS = (
    Email.id,
    Email.address,
    Email.address_key,
    *(getattr(Email, name) for name in _MAIL_FIELDS),
)


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


class _Chunk:
    """The part of the store one chunk touches: loaded up front, changed in memory, diffed.

    Accounts are keyed by their username key, addresses by their address key:
    a line is matched to what is stored whatever case or width it spells it in.
    """

    def __init__(self, conn: Connection, lines: Sequence[_LineIn], seen: _Seen, owner: str) -> None:
        self.conn = conn
        self.seen = seen
        self.owner = owner
        self.accounts: dict[str, _Acct] = {}
        self.mails: dict[str, _Mail] = {}
        self.primary: dict[str, str | None] = {}
        """This import's accounts: the key of each one's primary address."""
        self.lapses: dict[str, _Lapse] = {}
        """``address_history`` of the chunk's addresses that are not verified now."""
        self.domains: set[str] = set()
        self._load(
            {line.key for line in lines},
            {email.key for line in lines for email in line.emails},
        )

    def _load(self, usernames: set[str], addresses: set[str]) -> None:
        lock = self.conn.dialect.name == "postgresql"
        for batch in _batches(sorted(usernames)):
            query = select(
                Account.id,
                Account.username,
                Account.username_key,
                Account.owner,
                Account.totp_enabled,
                Account.projects,
            ).where(Account.username_key.in_(batch))
            if lock:  # the web app may change 2FA meanwhile; we compare, then write
                query = query.with_for_update(of=_ACCOUNTS_TABLE)
            for id_, username, key, owner, totp, projects in self.conn.execute(query):
                self.accounts[key] = _Acct(
                    id_, username, key, owner, totp, list(projects), (totp, list(projects))
                )
                if owner == self.owner:
                    self.primary[key] = None
        for batch in _batches(sorted(addresses)):
            self._load_mails(Email.address_key.in_(batch), lock)
        ids = sorted(
            a.id for a in self.accounts.values() if a.id is not None and a.owner == self.owner
        )
        for batch in _batches(ids):
            self._load_mails(Email.account_id.in_(batch) & Email.primary.is_(True), lock)
        # The history only matters to an address that is not verified (or not stored).
        unverified = sorted(
            key
            for key in addresses
            if key not in self.mails or not self.mails[key].fields["verified"]
        )
        for batch in _batches(unverified):
            lapses = select(
                AddressHistory.address_key,
                AddressHistory.unverified_at,
                AddressHistory.unverify_reason,
            ).where(AddressHistory.address_key.in_(batch))
            for key, at, reason in self.conn.execute(lapses):
                self.lapses[key] = _Lapse(at, reason)

    def _load_mails(self, condition: Any, lock: bool) -> None:
        query = (
            select(*_MAIL_COLUMNS, Account.username, Account.username_key, Account.owner)
            .join(Account, Account.id == Email.account_id)
            .where(condition)
        )
        if lock:  # the checker may unverify an address meanwhile: it waits for us
            query = query.with_for_update(of=_EMAILS_TABLE)
        for row in self.conn.execute(query):
            id_, address, key, *values, username, account_key, owner = row
            if key in self.mails:
                continue
            fields = dict(zip(_MAIL_FIELDS, values, strict=True))
            self.mails[key] = _Mail(
                id_, account_key, username, owner, address, key, fields, dict(fields)
            )
            if fields["primary"] and account_key in self.primary:
                self.primary[account_key] = key

    # -- one line

    def apply(self, line: _LineIn) -> tuple[bool, list[str]]:
        """Check ``line`` against the store and earlier lines; apply it if good.

        Raises ``_Reject`` before changing anything. Returns whether the line
        changed something, and its warnings.
        """
        warnings: list[str] = []
        account = self.accounts.get(line.key)
        if account is not None and account.owner != self.owner:
            raise _Reject(
                f"account {account.username!r} is not managed by this import "
                f"(owner: {_shown_owner(account.owner)}); nothing changed"
            )
        name = line.username if account is None else account.username
        totp_line, projects_line = self.seen.account(line.key)
        if account is None:
            totp = bool(line.totp)
            projects = line.projects if line.projects is not None else []
        else:
            totp = account.totp if line.totp is None else line.totp
            projects = account.projects if line.projects is None else line.projects
            if totp_line and totp != account.totp:
                raise _Reject(
                    f"totp is {str(totp).lower()} here but {str(account.totp).lower()} "
                    f"on line {totp_line}"
                )
            if projects_line and projects != account.projects:
                raise _Reject(f"projects differ from those on line {projects_line}")

        planned: list[tuple[_EmailIn, _Mail | None, dict[str, Any]]] = []
        for email in line.emails:
            mail = self.mails.get(email.key)
            earlier = self.seen.address(email.key)
            if mail is not None and mail.account != line.key:
                if mail.owner != self.owner:  # whose it is is none of this import's business
                    raise _Reject(
                        f"{email.address} belongs to an account not managed by this import; "
                        "nothing changed"
                    )
                where = f" (line {earlier})" if earlier else ""
                raise _Reject(
                    f"{email.address} belongs to another account, {mail.username!r}{where}"
                )
            fields, warning = self._fields(email, mail, self.lapses.get(email.key))
            if mail is not None and earlier and fields != mail.fields:
                raise _Reject(f"{email.address} is also on line {earlier}, with other values")
            if warning:
                warnings.append(warning)
            planned.append((email, mail, fields))

        listed = {email.key for email in line.emails}
        primaries = [email.address for email, _, fields in planned if fields["primary"]]
        demote: _Mail | None = None
        current = self.primary.get(line.key)
        if current is not None and current not in listed and primaries:
            demote = self.mails[current]
            earlier = self.seen.address(current)
            if earlier:
                raise _Reject(
                    f"{name!r} already has the primary address {demote.address} (line {earlier})"
                )
            # the file names another primary: it wins
        if len(primaries) > 1:
            raise _Reject(f"more than one primary address: {', '.join(primaries)}")

        # Every check passed: apply.
        changed = False
        creating = account is None
        if account is None:
            account = _Acct(None, name, line.key, self.owner, totp, projects, None, line.line)
            self.accounts[line.key] = account
            self.primary[line.key] = None
            changed = True
        elif totp != account.totp or projects != account.projects:
            account.totp, account.projects = totp, projects
            if account.original is not None:  # a new account's event names its creating line
                account.line = line.line
            changed = True
        for email, mail, fields in planned:
            if mail is None:
                new = _Mail(
                    None,
                    line.key,
                    name,
                    self.owner,
                    email.address,
                    email.key,
                    fields,
                    None,
                    line.line,
                    creating,
                )
                self.mails[email.key] = new
                if creating:
                    account.created_with.append(new)
                changed = True
            elif fields != mail.fields:
                mail.fields, mail.line = fields, line.line
                changed = True
            if fields["primary"]:
                self.primary[line.key] = email.key
            elif self.primary.get(line.key) == email.key:
                self.primary[line.key] = None
            if not email.free_provider:
                self.domains.add(email.domain)
        if demote is not None:
            demote.fields = {**demote.fields, "primary": False}
            demote.line = line.line
            changed = True
        self.seen.mark(line)
        return changed, warnings

    @staticmethod
    def _fields(
        email: _EmailIn, mail: _Mail | None, lapse: _Lapse | None
    ) -> tuple[dict[str, Any], str | None]:
        """The address's columns once ``email`` is applied, with the re-verification rule.

        lapsewatch's unverify counts whether the stored row records it, or only
        ``address_history`` does (``lapse``: the row was removed, or the registry
        unverified the row since): the address becomes verified again only by a
        ``verified_at`` later than every unverify.
        """
        fields: dict[str, Any]
        if mail is None:
            fields = {
                "domain": email.domain,
                "free_provider": email.free_provider,
                "primary": bool(email.primary),
                "verified": email.verified,
                "verified_at": email.verified_at,
                "unverified_at": None,
                "unverify_reason": None,
                "unverify_detail": None,
            }
        else:
            fields = dict(mail.fields)
            fields["domain"], fields["free_provider"] = email.domain, email.free_provider
            if email.primary is not None:
                fields["primary"] = email.primary
        stored_unverify = (
            mail is not None and fields["unverify_reason"] is not None and not fields["verified"]
        )
        unverifies: list[tuple[datetime | None, str]] = []
        if stored_unverify:
            since = fields["unverified_at"] or fields["verified_at"]
            unverifies.append((since, fields["unverify_reason"]))
        if lapse is not None and (mail is None or not fields["verified"]):
            unverifies.append((lapse.at, lapse.reason))
        if unverifies and email.verified:
            # lapsewatch unverified it: only a newer verification undoes that.
            when = email.verified_at
            blocking = [
                (since, reason)
                for since, reason in unverifies
                if when is None or since is None or when <= since
            ]
            if blocking:
                dated = [(at, why) for at, why in blocking if at is not None]
                since, reason = max(dated) if dated else blocking[0]
                removed = ""
                if mail is None and lapse is not None:  # removed, and imported again
                    fields.update(_lapsed(lapse), verified=False)
                    removed = " before it was removed"
                return fields, (
                    f"{email.address} stays unverified: lapsewatch unverified it "
                    f"({reason}) at {isoformat(since)}{removed}, and the import "
                    "gives no verified_at later than that"
                )
            if stored_unverify:
                fields.update(
                    verified=True,
                    verified_at=when,
                    unverified_at=None,
                    unverify_reason=None,
                    unverify_detail=None,
                )
                return fields, None
            # Only the history, and a verification after it: the registry's own, as usual.
        elif stored_unverify:
            return fields, None  # the registry agrees it is not verified; our reason is kept
        elif mail is None and lapse is not None:
            fields.update(_lapsed(lapse))  # added again unverified: as lapsewatch left it
        if mail is not None:
            fields["verified"] = email.verified
            if email.verified_at is not None:
                fields["verified_at"] = email.verified_at
        if fields["verified"] and fields["verified_at"] is None:
            return fields, (
                f"{email.address} is verified without verified_at: "
                "the re-registration check cannot apply to it"
            )
        return fields, None

    # -- writing

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
        result.emails_updated += self._update_mails(event)
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

    def _update_mails(self, event: _EventSink) -> int:
        updates: list[dict[str, Any]] = []
        for mail in self.mails.values():
            original = mail.original
            if original is None or mail.fields == original:
                continue
            changed = {k: v for k, v in mail.fields.items() if original[k] != v}
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
        dialect = self.conn.dialect.name
        statement: Any
        if dialect == "postgresql":
            statement = postgresql.insert(Domain).on_conflict_do_nothing(index_elements=["name"])
        elif dialect == "sqlite":
            statement = sqlite.insert(Domain).on_conflict_do_nothing(index_elements=["name"])
        else:
            statement = insert(Domain)
        rows = [{"name": name, "consecutive_failures": 0} for name in sorted(missing)]
        self.conn.execute(statement, rows)
        return len(missing)


def _lapsed(lapse: _Lapse) -> dict[str, Any]:
    """The unverify columns of an address added again after lapsewatch unverified it."""
    return {
        "unverified_at": lapse.at,
        "unverify_reason": lapse.reason,
        "unverify_detail": (
            f"lapsewatch unverified this address ({lapse.reason}) at {isoformat(lapse.at)}; "
            "it was removed and imported again since, without a later verification"
        ),
    }


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
            conn.exec_driver_sql("BEGIN IMMEDIATE")
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

    Raises :class:`InputError` for an unusable input (nothing imported) and
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
    source = name or "<stdin>"
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
