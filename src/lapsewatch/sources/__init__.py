"""Domain status sources, all behind :class:`~lapsewatch.sources.interface.Source`."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

import httpx

from lapsewatch import __version__
from lapsewatch.config import Settings
from lapsewatch.source_catalog import CATALOG
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


class Factory(Protocol):
    """A catalog entry's ``factory``: the source, or ``None`` when ``settings`` cannot
    ask it (a key missing)."""

    def __call__(
        self, settings: Settings, client: httpx.AsyncClient, built: Mapping[str, Source]
    ) -> Source | None: ...


USER_AGENT = f"lapsewatch/{__version__} (+domain lapse checks)"


def build_sources(settings: Settings, client: httpx.AsyncClient) -> list[Source]:
    """The sources ``settings`` names, in that order, sharing one HTTP client.

    Each is built by its catalog entry's factory (:mod:`lapsewatch.source_catalog`), in
    the catalog's order, so that a source can use one built before it (``whois`` beside
    ``rdap`` is asked only about TLDs without an RDAP server)."""
    built: dict[str, Source] = {}
    for spec in CATALOG:
        if spec.name in settings.sources:
            module, _, function = spec.factory.partition(":")
            factory: Factory = getattr(importlib.import_module(module), function)
            source = factory(settings, client, built)
            if source is not None:
                built[spec.name] = source
    return [built[name] for name in settings.sources if name in built]


@asynccontextmanager
async def open_sources(settings: Settings) -> AsyncIterator[list[Source]]:
    """Sources with an HTTP client that is closed afterwards."""
    # Enough connections for every HTTP source's requests in flight, kept alive.
    http_sources = sum(s.http for s in CATALOG if s.name in settings.sources)
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
