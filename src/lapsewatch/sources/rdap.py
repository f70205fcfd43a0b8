"""RDAP (RFC 9082/9083): the registry's own record of a domain.

It is the only source that gives dates, which is what lets lapsewatch see a
domain that lapsed and was re-registered between two checks.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import idna

from lapsewatch.config import Settings
from lapsewatch.dates import parse_datetime
from lapsewatch.sources import _http
from lapsewatch.sources.bootstrap import Bootstrap, BootstrapError, load_bootstrap
from lapsewatch.sources.interface import Observation, Outcome, Source, truncate

__all__ = ["RdapSource", "normalize_status", "parse_domain_object"]

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_EPP_ALIASES = {"ok": "active"}  # RFC 8056 maps EPP "ok" to RDAP "active"


def normalize_status(value: str) -> str:
    """``"redemptionPeriod"``, ``"Redemption Period"`` → ``"redemption period"``."""
    words = _CAMEL_BOUNDARY.sub(" ", value.strip()).replace("_", " ").replace("-", " ")
    text = " ".join(words.lower().split())
    return _EPP_ALIASES.get(text, text)


def _event_dates(events: Any) -> tuple[dict[str, datetime], list[str]]:
    """The last date of each event action, and the dates we could not read."""
    dates: dict[str, datetime] = {}
    problems: list[str] = []
    if not isinstance(events, list):
        return dates, problems
    for event in events:
        if not isinstance(event, dict):
            continue
        action, raw = event.get("eventAction"), event.get("eventDate")
        if not isinstance(action, str) or not isinstance(raw, str):
            continue
        action = normalize_status(action)
        try:
            when = parse_datetime(raw)
        except ValueError:
            problems.append(f"unreadable {action} date {raw[:40]!r}")
            continue
        if action not in dates or when > dates[action]:
            dates[action] = when
    return dates, problems


def _name_of(value: str) -> str | None:
    """A name from a record as lower-case ASCII (punycode), or None when unreadable."""
    name = value.strip().rstrip(".")
    if not name:
        return None
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None


def _refusal(data: dict[str, Any], domain: str) -> str | None:
    """Why this object is not the registry's record of ``domain``, or None.

    Strict on purpose: a record is believed only when it says it is a domain
    object and names the asked domain. A record naming nothing could be any
    domain's (another domain's redemption record must not unverify this one's
    addresses), and an RFC 9083 error object is an error whatever the HTTP status.
    """
    if "errorCode" in data:
        title = data.get("title") or data.get("description") or ""
        return f"error object {str(data.get('errorCode'))[:10]} {str(title)[:80]!r} with HTTP 200"
    kind = data.get("objectClassName")
    if kind != "domain":
        shown = "no objectClassName" if kind is None else f"objectClassName {str(kind)[:30]!r}"
        return f"answer has {shown}, not a domain record"
    names = [(key, data.get(key)) for key in ("ldhName", "unicodeName") if key in data]
    if not names:
        return f"record names no domain (no ldhName or unicodeName): not trusted as {domain}'s"
    for key, value in names:
        if not isinstance(value, str):
            return f"{key} is not a string"
        if _name_of(value) != domain:
            return f"answer is about {value[:80]!r} ({key}), not {domain}"
    return None


def parse_domain_object(data: Any, domain: str) -> Observation:
    """Turn an RFC 9083 domain object into an answered observation (or an error)."""
    if not isinstance(data, dict):
        return Observation.error("rdap", domain, "answer is not an RDAP object")
    refusal = _refusal(data, domain)
    if refusal is not None:
        return Observation.error("rdap", domain, refusal)
    raw_status = data.get("status")
    status = tuple(
        dict.fromkeys(normalize_status(s) for s in raw_status if isinstance(s, str) and s.strip())
        if isinstance(raw_status, list)
        else ()
    )
    dates, problems = _event_dates(data.get("events"))
    registered = max(
        (d for a, d in dates.items() if a in ("registration", "reregistration")), default=None
    )
    nameservers = tuple(
        ns["ldhName"].lower().rstrip(".")
        for ns in data.get("nameservers") or []
        if isinstance(ns, dict) and isinstance(ns.get("ldhName"), str)
    )
    parts = [f"status {', '.join(status) or '(none)'}"]
    parts.append(
        f"expires {dates['expiration'].date()}" if "expiration" in dates else "no expiration date"
    )
    if registered is not None:
        parts.append(f"registered {registered.date()}")
    parts.extend(problems)
    return Observation(
        source="rdap",
        domain=domain,
        outcome=Outcome.ANSWERED,
        detail="; ".join(parts),
        found=True,
        status=status,
        registered_at=registered,
        expires_at=dates.get("expiration"),
        last_changed_at=dates.get("last changed"),
        nameservers=nameservers,
    )


class RdapSource(Source):
    """Ask the registry's RDAP server found through the bootstrap file."""

    name = "rdap"
    paces_requests = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        bootstrap_location: str | None = None,
        attempts: int = 3,
        max_retry_after: float = 30.0,
        deadline: float | None = None,
        max_bytes: int = _http.DEFAULT_MAX_BYTES,
    ) -> None:
        self._client = client
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._location = bootstrap_location
        self._attempts = attempts
        self._max_retry_after = max_retry_after
        self._bootstrap: Bootstrap | None = None
        self._lock = asyncio.Lock()

    async def bootstrap(self) -> Bootstrap:
        """Load the bootstrap once per source (raises :class:`BootstrapError`)."""
        if self._bootstrap is not None:  # every domain asks: no lock once it is loaded
            return self._bootstrap
        async with self._lock:
            if self._bootstrap is None:
                self._bootstrap = await load_bootstrap(self._location, self._client)
            return self._bootstrap

    async def observe(self, domain: str) -> Observation:
        try:
            bootstrap = await self.bootstrap()
        except BootstrapError as exc:
            return Observation.error(self.name, domain, f"no bootstrap: {exc}")
        urls = bootstrap.base_urls(domain)
        if not urls:
            tld = domain.rsplit(".", 1)[-1]
            return Observation.skipped(
                self.name,
                domain,
                f"no RDAP server for .{tld} in the bootstrap ({bootstrap.origin})",
            )
        url = f"{urls[0]}domain/{quote(domain)}"
        try:
            response = await _http.get(
                self._client,
                url,
                headers={"Accept": "application/rdap+json, application/json"},
                attempts=self._attempts,
                max_retry_after=self._max_retry_after,
                pacer=self.pacer,
                deadline=self._deadline,
                max_bytes=self._max_bytes,
            )
        except httpx.TransportError as exc:
            why = _http.describe_transport_error(
                exc, self._deadline or self._client.timeout.read or 0.0
            )
            return Observation.error(self.name, domain, f"{why} ({urlsplit(url).netloc})")
        return self._interpret(domain, response)

    def _interpret(self, domain: str, response: _http.Reply) -> Observation:
        host = response.host
        evidence = truncate(f"HTTP {response.status_code} {response.url}\n{response.text}")
        code = response.status_code
        if code == 404:
            return Observation(
                source=self.name,
                domain=domain,
                outcome=Outcome.ANSWERED,
                detail=f"not registered (404 from {host})",
                found=False,
                evidence=evidence,
            )
        if code != 200:
            wait = _http.retry_after_seconds(response) if code == 429 else None
            note = f", retry after {wait:g} s" if wait is not None else ""
            return Observation.error(
                self.name,
                domain,
                f"HTTP {code} from {host}{note}",
                evidence=evidence,
                retry_after=wait,
            )
        try:
            data = json.loads(response.content)
        except (ValueError, RecursionError):
            return Observation.error(
                self.name, domain, f"invalid JSON from {host}", evidence=evidence
            )
        observation = parse_domain_object(data, domain)
        return replace(observation, evidence=evidence, detail=f"{observation.detail} ({host})")


def from_settings(
    settings: Settings, client: httpx.AsyncClient, built: Mapping[str, Source]
) -> RdapSource:
    """The catalog's factory (:mod:`lapsewatch.source_catalog`)."""
    return RdapSource(
        client,
        bootstrap_location=settings.rdap_bootstrap_url,
        attempts=settings.attempts,
        max_retry_after=settings.max_retry_after,
        deadline=settings.timeout,
        max_bytes=settings.max_response_bytes,
    )
