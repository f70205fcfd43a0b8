"""Settings from ``LAPSEWATCH_*`` environment variables.

One frozen object read once at start-up, so every part sees the same
configuration and tests can build their own without touching ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ConfigError", "Settings"]

KNOWN_SOURCES = ("rdap", "dns", "fastly", "whois")
DEFAULT_SOURCES = ("rdap", "dns", "whois")
"""``whois`` is asked only for TLDs without an RDAP server (see ``sources.whois``)."""
DEFAULT_FASTLY_URL = "https://api.fastly.com"


class ConfigError(ValueError):
    """A ``LAPSEWATCH_*`` variable has a value we cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with safe defaults for a first run."""

    sources: tuple[str, ...] = DEFAULT_SOURCES
    rdap_bootstrap_url: str | None = None
    whois_servers: str | None = None
    """A JSON file of TLD → WHOIS server replacing the shipped table; ``None`` = shipped
    (or the copy refreshed by ``lapsewatch whois-servers update``)."""
    """URL or file path of an RFC 9224 ``dns.json``; ``None`` = the shipped copy."""
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
    rates: Mapping[str, float] = field(
        default_factory=lambda: {"rdap": 10.0, "dns": 50.0, "fastly": 10.0, "whois": 2.0}
    )
    """Requests per second allowed per source."""
    concurrency: int = 20
    """Requests in flight per source."""
    chunk_size: int = 100
    """Domains per Celery task (``check --distributed``)."""
    lease_seconds: float = 600.0
    """How long a worker holds the domains it claimed; a dead worker's claim expires."""
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
    pace_window: int = 2000
    """Domains being checked at once when pacing per server (a slow server's queue)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings; raise :class:`ConfigError` naming the bad variable."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"LAPSEWATCH_{name}")
            return value.strip() if value is not None and value.strip() else None

        fastly_key = get("FASTLY_KEY")
        sources_text = get("SOURCES")
        if sources_text is None:
            sources: tuple[str, ...] = (
                (*DEFAULT_SOURCES, "fastly") if fastly_key else DEFAULT_SOURCES
            )
        else:
            sources = _parse_sources(sources_text)
        if "fastly" in sources and not fastly_key:
            raise ConfigError(
                "LAPSEWATCH_SOURCES names fastly but LAPSEWATCH_FASTLY_KEY is not set"
            )
        return cls(
            sources=sources,
            rdap_bootstrap_url=get("RDAP_BOOTSTRAP_URL"),
            whois_servers=get("WHOIS_SERVERS"),
            dns_nameservers=_parse_nameservers(get("DNS_NAMESERVERS")),
            fastly_url=(get("FASTLY_URL") or DEFAULT_FASTLY_URL).rstrip("/"),
            fastly_key=fastly_key,
            timeout=_parse_float("TIMEOUT", get("TIMEOUT"), 5.0, minimum=0.01),
            domain_deadline=_parse_float(
                "DOMAIN_DEADLINE", get("DOMAIN_DEADLINE"), 60.0, minimum=0.01
            ),
            max_response_bytes=int(
                _parse_float(
                    "MAX_RESPONSE_BYTES", get("MAX_RESPONSE_BYTES"), 4 * 1024 * 1024, minimum=1024
                )
            ),
            confirm_minutes=_parse_float("CONFIRM_MINUTES", get("CONFIRM_MINUTES"), 60.0),
            db_connect_timeout=_parse_float(
                "DB_CONNECT_TIMEOUT", get("DB_CONNECT_TIMEOUT"), 10.0, minimum=1
            ),
            db_statement_timeout=_parse_float(
                "DB_STATEMENT_TIMEOUT", get("DB_STATEMENT_TIMEOUT"), 120.0, minimum=0.1
            ),
            db_lock_timeout=_parse_float(
                "DB_LOCK_TIMEOUT", get("DB_LOCK_TIMEOUT"), 30.0, minimum=0.1
            ),
            attempts=int(_parse_float("ATTEMPTS", get("ATTEMPTS"), 3, minimum=1)),
            max_retry_after=_parse_float("MAX_RETRY_AFTER", get("MAX_RETRY_AFTER"), 30.0),
            free_providers_file=get("FREE_PROVIDERS"),
            database_url=get("DATABASE_URL") or "sqlite:///lapsewatch.db",
            broker_url=get("BROKER_URL") or "redis://127.0.0.1:6379/0",
            check_interval_days=_parse_float(
                "CHECK_INTERVAL_DAYS", get("CHECK_INTERVAL_DAYS"), 30.0, minimum=0.001
            ),
            near_expiry_before_days=_parse_float(
                "NEAR_EXPIRY_BEFORE_DAYS", get("NEAR_EXPIRY_BEFORE_DAYS"), 1.0
            ),
            near_expiry_after_days=_parse_float(
                "NEAR_EXPIRY_AFTER_DAYS", get("NEAR_EXPIRY_AFTER_DAYS"), 45.0
            ),
            grace_interval_days=_parse_float(
                "GRACE_INTERVAL_DAYS", get("GRACE_INTERVAL_DAYS"), 3.0, minimum=0.001
            ),
            mail_hosts_interval_days=_parse_float(
                "MAIL_HOSTS_INTERVAL_DAYS", get("MAIL_HOSTS_INTERVAL_DAYS"), 90.0, minimum=0.001
            ),
            mail_host_keep_days=_parse_float(
                "MAIL_HOST_KEEP_DAYS", get("MAIL_HOST_KEEP_DAYS"), 7.0, minimum=0
            ),
            rates={
                name: _parse_float(
                    f"RATE_{name.upper()}", get(f"RATE_{name.upper()}"), default, 0.01
                )
                for name, default in (
                    ("rdap", 10.0),
                    ("dns", 50.0),
                    ("fastly", 10.0),
                    ("whois", 2.0),
                )
            },
            concurrency=int(_parse_float("CONCURRENCY", get("CONCURRENCY"), 20, minimum=1)),
            chunk_size=int(_parse_float("CHUNK_SIZE", get("CHUNK_SIZE"), 100, minimum=1)),
            lease_seconds=_parse_float("LEASE_SECONDS", get("LEASE_SECONDS"), 600.0, minimum=1),
            visibility_timeout=_parse_float(
                "VISIBILITY_TIMEOUT", get("VISIBILITY_TIMEOUT"), 3600.0, minimum=1
            ),
            # pace (per-server limits)
            pace=(get("PACE") or "server").lower(),
            source_caps={
                name: _parse_float(f"RATE_{name.upper()}", text, 10.0, 0.01)
                for name in ("rdap", "dns", "fastly", "whois")
                if (text := get(f"RATE_{name.upper()}")) is not None
            },
            pace_file=get("PACE_FILE"),
            pace_redis=get("PACE_REDIS") or "auto",
            pace_start=(
                _parse_float("PACE_START", text, 10.0, minimum=0.01)
                if (text := get("PACE_START"))
                else None
            ),
            pace_max=_parse_float("PACE_MAX", get("PACE_MAX"), 1000.0, minimum=0.01),
            pace_max_wait=_parse_float("PACE_MAX_WAIT", get("PACE_MAX_WAIT"), 10.0, minimum=0),
            pace_window=int(_parse_float("PACE_WINDOW", get("PACE_WINDOW"), 2000, minimum=1)),
        )


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
