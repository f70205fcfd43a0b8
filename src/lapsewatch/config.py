"""Settings from ``LAPSEWATCH_*`` environment variables.

One frozen object read once at start-up, so every part sees the same
configuration and tests can build their own without touching ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lapsewatch.source_catalog import CATALOG, default_sources, known_names, spec

__all__ = ["ConfigError", "Settings"]

KNOWN_SOURCES = known_names()
DEFAULT_SOURCES = default_sources()
"""``whois`` is asked only for TLDs without an RDAP server (see ``sources.whois``)."""
DEFAULT_FASTLY_URL = "https://api.fastly.com"


class ConfigError(ValueError):
    """A ``LAPSEWATCH_*`` variable has a value we cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with safe defaults for a first run."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    rdap_bootstrap_url: str | None = None
    """URL or file path of an RFC 9224 ``dns.json``; ``None`` = the shipped copy."""
    whois_servers: str | None = None
    """A JSON file of TLD → WHOIS server replacing the shipped table; ``None`` = shipped
    (or the copy refreshed by ``lapsewatch whois-servers update``)."""
    dns_nameservers: tuple[tuple[str, int], ...] = ()
    """``(host, port)`` pairs; empty = the system's resolvers."""
    fastly_url: str = DEFAULT_FASTLY_URL
    fastly_key: str | None = None
    timeout: float = 5.0
    """Seconds for one request to one source, all of it (connect, headers, body): a
    server that trickles its answer is cut off at this deadline."""
    domain_deadline: float = 60.0
    """Seconds for one domain's whole check (every source, retries included); a
    source still busy then is that domain's error, never the cycle's."""
    max_response_bytes: int = 4 * 1024 * 1024
    """Largest answer read from an HTTP source, raw and decompressed."""
    confirm_minutes: float = 60.0
    """Delay of the confirming check of a dangerous verdict resting on thin evidence."""
    db_connect_timeout: float = 10.0
    """Seconds to connect to the database."""
    db_statement_timeout: float = 120.0
    """Seconds one database statement (or commit) may take before the run stops."""
    db_lock_timeout: float = 30.0
    """Seconds to wait for a row or table lock (SQLite: its busy timeout)."""
    attempts: int = 3
    """Tries per request on network errors, 429 and 5xx (bounded retry)."""
    max_retry_after: float = 30.0
    """Longest ``Retry-After`` we wait inside one check; longer means ``unknown``."""
    free_providers_file: str | None = None
    """A file replacing the shipped list of well-known free mail providers."""
    database_url: str = "sqlite:///lapsewatch.db"
    broker_url: str = "redis://127.0.0.1:6379/0"
    check_interval_days: float = 30.0
    """How often a domain behind a verified address is checked."""
    near_expiry_before_days: float = 1.0
    near_expiry_after_days: float = 45.0
    """Around a known expiration date (this window) the domain is checked daily."""
    grace_interval_days: float = 3.0
    """Between checks while the registry's record shows the auto-renew grace."""
    mail_hosts_interval_days: float = 90.0
    """How often a domain's MX is read."""
    mail_host_keep_days: float = 7.0
    """Longest a mail-host domain's ``registered`` verdict is kept between runs."""
    rates: Mapping[str, float] = field(default_factory=lambda: {s.name: s.rate for s in CATALOG})
    """Requests per second allowed per source."""
    concurrency: int = 20
    """Requests in flight per source."""
    chunk_size: int = 2000
    """Domains per Celery task (``check --distributed``). Each task opens its sources and
    ends with its slowest domain, so small chunks cost throughput (2 workers in the bench's
    patchwork world, window 500: chunks of 500 reached 85% of the floor, of 2,000 91-92%)."""
    lease_seconds: float = 900.0
    """How long a worker holds the domains it claimed; a dead worker's claim expires. Above
    a chunk's worst time: (chunk size / pace window) x the domain deadline, 600 s."""
    visibility_timeout: float = 3600.0
    """Seconds before Redis hands an unacknowledged task (dead worker) to another worker."""
    # pace (per-server limits)
    pace: str = "server"
    """``server``: each server's rate is learned (lapsewatch.pace); ``source``: one rate per
    source (``rates``), as before."""
    source_caps: Mapping[str, float] = field(default_factory=dict)
    """With ``pace = "server"``: a cap per source, only for the ``LAPSEWATCH_RATE_*`` set."""
    pace_file: str | None = None
    """JSON file pinning or capping servers' rates (see lapsewatch.pace.pins)."""
    pace_redis: str = "auto"
    """Redis URL sharing the limits between processes; ``auto``: the broker's, for workers."""
    pace_start: float | None = None
    """A new server's rate in requests/s; unset: by source (``pace.policy.START_BY_SOURCE``:
    DNS 100, WHOIS 2, the others 10)."""
    pace_max: float = 1000.0
    """The highest rate learned, in requests/s."""
    pace_max_wait: float = 10.0
    """Longest ``Retry-After`` pause waited inside a check; longer: the domain is retried later."""
    pace_window: int = 200
    """Domains being checked at once when pacing per server (a slow server's queue). Each
    open domain holds its memory until it is written (about 20 KB measured); 200 kept the
    bench's cycles as fast as 500 and 2,000 did (bench/RESULTS.md), with less memory."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings; raise :class:`ConfigError` naming the bad variable.

        A setting's default is its field's, written once above; ``LAPSEWATCH_<FIELD>``
        (the field's name in capitals; ``FREE_PROVIDERS`` for ``free_providers_file``)
        overrides it."""
        env = os.environ if environ is None else environ
        defaults: dict[str, Any] = {f.name: f.default for f in fields(cls)}

        def get(name: str) -> str | None:
            value = env.get(f"LAPSEWATCH_{name}")
            return value.strip() if value is not None and value.strip() else None

        def number(name: str, minimum: float = 0.0) -> Any:
            default = defaults[name]
            value = _parse_float(name.upper(), get(name.upper()), default, minimum)
            return int(value) if isinstance(default, int) else value

        def text(name: str) -> Any:
            return get(name.upper()) or defaults[name]

        sources_text = get("SOURCES")
        if sources_text is None:
            given = frozenset(s.needs for s in CATALOG if s.needs and get(s.needs))
            sources = default_sources(have=given)
        else:
            sources = _parse_sources(sources_text)
        for name in sources:
            needs = _needs(name)
            if needs is not None and get(needs) is None:
                raise ConfigError(
                    f"LAPSEWATCH_SOURCES names {name} but LAPSEWATCH_{needs} is not set"
                )
        pace_start = get("PACE_START")
        return cls(
            sources=sources,
            rdap_bootstrap_url=get("RDAP_BOOTSTRAP_URL"),
            whois_servers=get("WHOIS_SERVERS"),
            dns_nameservers=_parse_nameservers(get("DNS_NAMESERVERS")),
            fastly_url=text("fastly_url").rstrip("/"),
            fastly_key=get("FASTLY_KEY"),
            timeout=number("timeout", minimum=0.01),
            domain_deadline=number("domain_deadline", minimum=0.01),
            max_response_bytes=number("max_response_bytes", minimum=1024),
            confirm_minutes=number("confirm_minutes"),
            db_connect_timeout=number("db_connect_timeout", minimum=1),
            db_statement_timeout=number("db_statement_timeout", minimum=0.1),
            db_lock_timeout=number("db_lock_timeout", minimum=0.1),
            attempts=number("attempts", minimum=1),
            max_retry_after=number("max_retry_after"),
            free_providers_file=get("FREE_PROVIDERS"),
            database_url=text("database_url"),
            broker_url=text("broker_url"),
            check_interval_days=number("check_interval_days", minimum=0.001),
            near_expiry_before_days=number("near_expiry_before_days"),
            near_expiry_after_days=number("near_expiry_after_days"),
            grace_interval_days=number("grace_interval_days", minimum=0.001),
            mail_hosts_interval_days=number("mail_hosts_interval_days", minimum=0.001),
            mail_host_keep_days=number("mail_host_keep_days"),
            rates={
                s.name: _parse_float(
                    f"RATE_{s.name.upper()}", get(f"RATE_{s.name.upper()}"), s.rate, 0.01
                )
                for s in CATALOG
            },
            concurrency=number("concurrency", minimum=1),
            chunk_size=number("chunk_size", minimum=1),
            lease_seconds=number("lease_seconds", minimum=1),
            visibility_timeout=number("visibility_timeout", minimum=1),
            # pace (per-server limits)
            pace=text("pace").lower(),
            source_caps={
                s.name: _parse_float(f"RATE_{s.name.upper()}", value, s.rate, 0.01)
                for s in CATALOG
                if (value := get(f"RATE_{s.name.upper()}")) is not None
            },
            pace_file=get("PACE_FILE"),
            pace_redis=text("pace_redis"),
            pace_start=_parse_float("PACE_START", pace_start, 0.0, 0.01) if pace_start else None,
            pace_max=number("pace_max", minimum=0.01),
            pace_max_wait=number("pace_max_wait"),
            pace_window=number("pace_window", minimum=1),
        )


def _needs(name: str) -> str | None:
    found = spec(name)
    return found.needs if found is not None else None


def _parse_sources(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in KNOWN_SOURCES]
    if unknown or not names:
        raise ConfigError(
            f"LAPSEWATCH_SOURCES={text!r}: expected a comma list of {', '.join(KNOWN_SOURCES)}"
        )
    return names


def _parse_nameservers(text: str | None) -> tuple[tuple[str, int], ...]:
    if text is None:
        return ()
    servers: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):  # [::1]:5353
            host, _, rest = item[1:].partition("]")
            if rest:
                port = _parse_port(item, rest.removeprefix(":"))
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = _parse_port(item, port_text)
        if not host:
            raise ConfigError(f"LAPSEWATCH_DNS_NAMESERVERS: {item!r} has no host")
        servers.append((host, port))
    return tuple(servers)


def _parse_port(item: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"LAPSEWATCH_DNS_NAMESERVERS: {item!r} has a bad port")
    return int(text)


def _parse_float(name: str, text: str | None, default: float, minimum: float = 0.0) -> float:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"LAPSEWATCH_{name}={text!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"LAPSEWATCH_{name}={text!r} must be at least {minimum}")
    return value
