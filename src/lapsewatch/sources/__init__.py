"""Domain status sources, all behind :class:`~lapsewatch.sources.interface.Source`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from lapsewatch import __version__
from lapsewatch.config import Settings
from lapsewatch.sources._client import open_client
from lapsewatch.sources.dns import DnsSource
from lapsewatch.sources.fastly import FastlySource
from lapsewatch.sources.interface import (
    Observation,
    Outcome,
    Source,
    SourceError,
    guarded_observe,
    observe_relevant,
)
from lapsewatch.sources.rdap import RdapSource
from lapsewatch.sources.whois import WhoisSource

__all__ = [
    "DnsSource",
    "FastlySource",
    "Observation",
    "Outcome",
    "RdapSource",
    "Source",
    "SourceError",
    "WhoisSource",
    "build_sources",
    "guarded_observe",
    "observe_relevant",
    "open_sources",
]

USER_AGENT = f"lapsewatch/{__version__} (+domain lapse checks)"


def build_sources(settings: Settings, client: httpx.AsyncClient) -> list[Source]:
    """The sources ``settings`` names, in a stable order, sharing one HTTP client.

    ``whois`` beside ``rdap`` is asked only about TLDs without an RDAP server."""
    sources: list[Source] = []
    rdap: RdapSource | None = None
    for name in settings.sources:
        if name == "rdap":
            rdap = RdapSource(
                client,
                bootstrap_location=settings.rdap_bootstrap_url,
                attempts=settings.attempts,
                max_retry_after=settings.max_retry_after,
                deadline=settings.timeout,
                max_bytes=settings.max_response_bytes,
            )
            sources.append(rdap)
        elif name == "dns":
            sources.append(
                DnsSource(
                    settings.dns_nameservers, timeout=settings.timeout, attempts=settings.attempts
                )
            )
        elif name == "fastly" and settings.fastly_key:
            sources.append(
                FastlySource(
                    client,
                    base_url=settings.fastly_url,
                    key=settings.fastly_key,
                    attempts=settings.attempts,
                    max_retry_after=settings.max_retry_after,
                    deadline=settings.timeout,
                    max_bytes=settings.max_response_bytes,
                )
            )
        elif name == "whois":
            sources.append(
                WhoisSource(
                    servers_location=settings.whois_servers,
                    timeout=settings.timeout,
                    attempts=min(settings.attempts, 2),
                    deadline=settings.timeout * 2 + 1,
                )
            )
    for source in sources:
        if isinstance(source, WhoisSource):
            source.rdap = rdap  # WHOIS only where RDAP has no server
    return sources


@asynccontextmanager
async def open_sources(settings: Settings) -> AsyncIterator[list[Source]]:
    """Sources with an HTTP client that is closed afterwards."""
    # Enough connections for every HTTP source's requests in flight, kept alive.
    http_sources = sum(name in ("rdap", "fastly") for name in settings.sources)
    async with open_client(
        timeout=settings.timeout,
        max_connections=max(20, settings.concurrency * http_sources),
        user_agent=USER_AGENT,
    ) as client:
        sources = build_sources(settings, client)
        try:
            yield sources
        finally:
            for source in sources:
                await source.aclose()
