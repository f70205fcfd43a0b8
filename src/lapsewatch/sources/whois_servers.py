"""Which WHOIS (port 43) server answers for a TLD.

The shipped table (``data/whois-servers.json``) is IANA's root zone database
("WHOIS Server" of each TLD) as JSON: TLD without the dot → ``"host"`` or
``"host:port"``. :func:`refresh_from_iana` rebuilds it by asking IANA's own
WHOIS server (``whois.iana.org:43``) for each TLD's ``whois:`` line and
:func:`save_table` writes it to the user's cache, which then wins over the
shipped copy. A table named by ``LAPSEWATCH_WHOIS_SERVERS`` is used exactly as
given and replaces both (a private or test world never leaks a query to the
public internet), as ``LAPSEWATCH_RDAP_BOOTSTRAP_URL`` does for RDAP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lapsewatch.sources.interface import SourceError

__all__ = [
    "ENV_VAR",
    "IANA_WHOIS",
    "WhoisServer",
    "WhoisServerError",
    "WhoisServers",
    "cached_whois_servers_path",
    "load_whois_servers",
    "parse_iana_answer",
    "parse_table",
    "refresh_from_iana",
    "save_table",
]

ENV_VAR = "LAPSEWATCH_WHOIS_SERVERS"
IANA_WHOIS = "whois.iana.org:43"
DEFAULT_PORT = 43
TABLE_MAX_BYTES = 4 * 1024 * 1024

_HOST = re.compile(r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")
_SUFFIX = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9-]{1,63})*$")


class WhoisServerError(SourceError):
    """The WHOIS server table cannot be read or is not a TLD → server mapping."""


@dataclass(frozen=True)
class WhoisServer:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return self.host if self.port == DEFAULT_PORT else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, value: str) -> WhoisServer:
        """``"whois.nic.it"``, ``"127.0.0.1:4343"`` or ``"[::1]:4343"``; ValueError otherwise."""
        text = value.strip()
        host, port = text, DEFAULT_PORT
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"bad server {value[:80]!r}")
            host, rest = text[1:end], text[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"bad server {value[:80]!r}")
                port = _port(rest[1:], value)
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = _port(port_text, value)
        if not host or (":" not in host and not _HOST.match(host)):
            raise ValueError(f"bad server host {value[:80]!r}")
        return cls(host.lower().rstrip("."), port)


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {value[:80]!r}")
    return int(text)


@dataclass(frozen=True)
class WhoisServers:
    """TLD (or longer suffix such as ``co.za``) → the registry's WHOIS server."""

    servers: Mapping[str, WhoisServer]
    origin: str = "shipped"
    wordings: Mapping[str, str] = field(default_factory=dict)
    """Suffix → the real TLD whose registry's wording its server speaks (a private or
    test registry's ``{"server": "127.0.0.1:4343", "like": "com"}`` entry)."""

    def server_for(self, domain: str) -> WhoisServer | None:
        """The server for the longest suffix of ``domain`` that has an entry."""
        labels = domain.lower().rstrip(".").split(".")
        for start in range(1, len(labels)):
            server = self.servers.get(".".join(labels[start:]))
            if server is not None:
                return server
        return None

    def wording_for(self, domain: str) -> str | None:
        """The ``like`` TLD of the longest suffix of ``domain`` that has an entry."""
        labels = domain.lower().rstrip(".").split(".")
        for start in range(1, len(labels)):
            suffix = ".".join(labels[start:])
            if suffix in self.servers:
                return self.wordings.get(suffix)
        return None

    def __len__(self) -> int:
        return len(self.servers)


def parse_table(data: Any, origin: str) -> WhoisServers:
    """Validate a ``{"tld": "host[:port]"}`` mapping (keys without dots at either end).

    A value may also be ``{"server": "host[:port]", "like": "com"}``: a private (or
    test) registry whose answers use that real TLD registry's wording.
    """
    if not isinstance(data, dict):
        raise WhoisServerError(f"{origin}: not a JSON object mapping TLDs to WHOIS servers")
    servers: dict[str, WhoisServer] = {}
    wordings: dict[str, str] = {}
    for key, value in data.items():
        like: object = None
        if isinstance(value, dict):
            like, value = value.get("like"), value.get("server")
            if like is not None and (not isinstance(like, str) or not _SUFFIX.match(like)):
                raise WhoisServerError(f"{origin}: entry {str(key)[:40]!r}: bad 'like'")
        if not isinstance(key, str) or not isinstance(value, str):
            raise WhoisServerError(f"{origin}: entry {str(key)[:40]!r} is not a string pair")
        suffix = key.strip().strip(".").lower()
        if not _SUFFIX.match(suffix):
            raise WhoisServerError(f"{origin}: {key[:40]!r} is not a TLD")
        try:
            servers[suffix] = WhoisServer.parse(value)
        except ValueError as exc:
            raise WhoisServerError(f"{origin}: .{suffix}: {exc}") from None
        if isinstance(like, str):
            wordings[suffix] = like
    return WhoisServers(servers, origin, wordings)


def cached_whois_servers_path() -> Path:
    """Where a refreshed table is kept (beside the refreshed RDAP bootstrap)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lapsewatch" / "whois-servers.json"


def _read(text: str, origin: str) -> WhoisServers:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise WhoisServerError(f"{origin}: invalid JSON: {exc}") from None
    return parse_table(data, origin)


def load_whois_servers(location: str | None = None) -> WhoisServers:
    """The table named by ``location`` (or ``LAPSEWATCH_WHOIS_SERVERS``), used as is;
    else the refreshed copy in the cache; else the shipped one."""
    location = location if location is not None else (os.environ.get(ENV_VAR) or None)
    if location is not None:
        path = Path(location.removeprefix("file://"))
        try:
            if path.stat().st_size > TABLE_MAX_BYTES:
                raise WhoisServerError(f"{path}: larger than {TABLE_MAX_BYTES} bytes")
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WhoisServerError(f"{path}: {exc}") from None
        return _read(text, str(path))
    cached = cached_whois_servers_path()
    if cached.is_file():
        try:
            return _read(cached.read_text(encoding="utf-8"), str(cached))
        except (OSError, UnicodeDecodeError, WhoisServerError):
            pass  # a broken cache must not stop checks: fall back to the shipped copy
    text = resources.files("lapsewatch.data").joinpath("whois-servers.json").read_text()
    return _read(text, "shipped")


def save_table(servers: Mapping[str, str], path: Path | None = None) -> Path:
    """Write a refreshed table atomically (default: the cache path); returns the path."""
    target = path or cached_whois_servers_path()
    parse_table(dict(servers), "refreshed table")  # never save what we could not load
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(dict(sorted(servers.items())), indent=1) + "\n")
    temporary.replace(target)
    return target


_WHOIS_LINE = re.compile(r"^whois:[ \t]*(\S*)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_DOMAIN_LINE = re.compile(r"^domain:[ \t]*(\S+)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def parse_iana_answer(text: str, tld: str) -> str | None:
    """The ``whois:`` server in IANA's answer about ``tld``; None when it names none.

    Raises :class:`WhoisServerError` when the answer is not IANA's record of that
    TLD (a rate-limit text, another TLD's record), so a refresh never drops a
    server because of one bad answer.
    """
    domain = _DOMAIN_LINE.search(text)
    if domain is None or domain[1].strip(".").lower() != tld.lower():
        raise WhoisServerError(f"IANA's answer about .{tld} is not its record")
    match = _WHOIS_LINE.search(text)
    if match is None or not match[1]:
        return None
    host = match[1].lower().rstrip(".")
    if not _HOST.match(host):
        raise WhoisServerError(f"IANA names {host[:80]!r} for .{tld}, not a host name")
    return host


async def refresh_from_iana(
    tlds: Iterable[str],
    *,
    iana: str = IANA_WHOIS,
    timeout: float = 10.0,
    attempts: int = 2,
    concurrency: int = 2,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Ask IANA's WHOIS server for each TLD's ``whois:`` line (online; never in tests
    against the internet). A TLD whose answer failed keeps its ``previous`` entry."""
    from lapsewatch.sources.whois import WhoisQueryError, query_whois  # no import cycle

    server = WhoisServer.parse(iana)
    gate = asyncio.Semaphore(max(1, concurrency))
    found: dict[str, str] = {}
    failures: list[str] = []

    async def one(tld: str) -> None:
        async with gate:
            try:
                raw = await query_whois(
                    server, tld, timeout=timeout, deadline=timeout * attempts, attempts=attempts
                )
                host = parse_iana_answer(raw.decode("utf-8", "replace"), tld)
            except (WhoisQueryError, WhoisServerError) as exc:
                failures.append(f".{tld}: {exc}")
                if previous is not None and tld in previous:
                    found[tld] = previous[tld]
                return
            if host is not None:
                found[tld] = host

    await asyncio.gather(*(one(t.strip(".").lower()) for t in tlds))
    if failures and not found:
        raise WhoisServerError(f"no answer from {server}: {failures[0]}")
    return dict(sorted(found.items()))
