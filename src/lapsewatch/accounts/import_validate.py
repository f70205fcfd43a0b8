"""One input line to a checked account (``_LineIn``) or the reason it is rejected.

Pure Python, no store and no I/O: it runs in the parsing process as well as in
the importing one, and every line is judged on its own before it is compared
with the store, so a bad line is reported by number and changes nothing.
Usernames follow :mod:`lapsewatch.names`; addresses :mod:`lapsewatch.domains`,
with the per-host work cached.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from lapsewatch import domains
from lapsewatch.dates import parse_datetime
from lapsewatch.names import InvalidName, address_key, check_username, username_key

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


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A rejected line or a warning, by physical line number in the input."""

    line: int
    message: str


class _Reject(Exception):
    """One line is bad; the message says why (raised before the line changes anything)."""


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
        return self.from_object(data, line)

    def from_object(self, data: object, line: int) -> _LineIn:
        """One account as JSON Lines give it, already decoded (a line of a file, or an
        item the API's model has read)."""
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
