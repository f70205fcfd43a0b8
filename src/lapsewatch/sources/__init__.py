"""Domain status sources, all behind :class:`~lapsewatch.sources.interface.Source`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from lapsewatch import __version__
from lapsewatch.config import Settings
from lapsewatch.sources.dns import DnsSource
from lapsewatch.sources.fastly import FastlySource
from lapsewatch.sources.interface import Observation, Outcome, Source, SourceError
from lapsewatch.sources.rdap import RdapSource

__all__ = [
    "DnsSource",
    "FastlySource",
    "Observation",
    "Outcome",
    "RdapSource",
    "Source",
    "SourceError",
    "build_sources",
    "open_sources",
]

USER_AGENT = f"lapsewatch/{__version__} (+domain lapse checks)"


def build_sources(settings: Settings, client: httpx.AsyncClient) -> list[Source]:
    """The sources ``settings`` names, in a stable order, sharing one HTTP client."""
    sources: list[Source] = []
    for name in settings.sources:
        if name == "rdap":
            sources.append(
                RdapSource(
                    client,
                    bootstrap_location=settings.rdap_bootstrap_url,
                    attempts=settings.attempts,
                    max_retry_after=settings.max_retry_after,
                )
            )
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
                )
            )
    return sources


@asynccontextmanager
async def open_sources(settings: Settings) -> AsyncIterator[list[Source]]:
    """Sources with an HTTP client that is closed afterwards."""
    timeout = httpx.Timeout(settings.timeout)
    async with httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=True,
        headers={"User-Agent": USER_AGENT},
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    ) as client:
        sources = build_sources(settings, client)
        try:
            yield sources
        finally:
            for source in sources:
                await source.aclose()
