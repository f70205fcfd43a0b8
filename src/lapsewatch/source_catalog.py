"""Every domain status source, described once: the only place that knows their names.

A source is one module under :mod:`lapsewatch.sources` plus one :class:`SourceSpec`
in :data:`CATALOG`. From the entry, the configuration knows the name
(``LAPSEWATCH_SOURCES``), whether it is on by default and its default rate
(``LAPSEWATCH_RATE_<NAME>``); the pacer knows where a new server of it starts; the
sources package builds it (``factory``); the verdict knows how far its word goes
(``rank``) and how to read its observations (``evidence``); reasons and reports name
it by ``label``. As pip-audit's ``VulnerabilityService``: adding a source touches no
other module.

This module sits in the pure core (it imports nothing of lapsewatch), so that
``config`` and ``verdict`` can read it; the factories are named as
``"module:function"`` and imported by :func:`lapsewatch.sources.build_sources` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "CATALOG",
    "Evidence",
    "SourceSpec",
    "by_authority",
    "default_sources",
    "known_names",
    "label",
    "names_with",
    "spec",
]


class Evidence(StrEnum):
    """What a source's observations are, which says how the verdict reads them."""

    REGISTRY = "registry"
    """The registry's own record (status words, dates, name servers): the only
    evidence that can show a domain is safe."""
    DNS = "dns"
    """The DNS: delegation, parking name servers and mail hosts."""
    STATUS_TOKENS = "status_tokens"
    """A status service's tokens (Fastly's and Domainr's vocabulary)."""


@dataclass(frozen=True)
class SourceSpec:
    """One source: its name and everything the rest of lapsewatch needs to know of it."""

    name: str
    """Its word in ``LAPSEWATCH_SOURCES`` and its observations' ``source``."""
    label: str
    """How reasons and reports name it."""
    evidence: Evidence
    rank: int
    """Authority, 0 first: when sources disagree, the lower rank's verdict stands."""
    factory: str
    """``"module:function"`` building it: ``function(settings, client, built)`` with the
    shared HTTP client and the sources built before it (by name)."""
    rate: float
    """Requests/s for the whole source with ``LAPSEWATCH_PACE=source``
    (``LAPSEWATCH_RATE_<NAME>`` overrides it)."""
    pace_start: float | None = None
    """Where a new server of this source starts when paced per server (``None``: the
    pacer's own start)."""
    default: bool = True
    """Asked unless ``LAPSEWATCH_SOURCES`` says otherwise (and its ``needs`` is set)."""
    needs: str | None = None
    """A ``LAPSEWATCH_*`` setting without which it cannot be asked (a key)."""
    http: bool = False
    """Asks over the shared HTTP client (sizes its connection pool)."""


CATALOG: tuple[SourceSpec, ...] = (
    SourceSpec(
        "rdap",
        "RDAP",
        Evidence.REGISTRY,
        rank=0,
        factory="lapsewatch.sources.rdap:from_settings",
        rate=10.0,
        http=True,
    ),
    SourceSpec(
        "dns",
        "DNS",
        Evidence.DNS,
        rank=3,
        factory="lapsewatch.sources.dns:from_settings",
        rate=50.0,
        # A resolver, usually the operator's own, answers thousands a second; started
        # at 10/s it held a whole cycle's first seconds (every domain waits for its DNS
        # answer), measured in the bench's patchwork world.
        pace_start=100.0,
    ),
    SourceSpec(
        "fastly",
        "fastly",
        Evidence.STATUS_TOKENS,
        rank=2,
        factory="lapsewatch.sources.fastly:from_settings",
        rate=10.0,
        default=False,
        needs="FASTLY_KEY",
        http=True,
    ),
    SourceSpec(
        "whois",
        "WHOIS",
        Evidence.REGISTRY,
        rank=1,
        factory="lapsewatch.sources.whois:from_settings",
        rate=2.0,
        # Port-43 servers are the strictest (a few a minute at some ccTLDs).
        pace_start=2.0,
    ),
)
"""In the order sources are built and asked; ``rank`` orders their authority."""

_BY_NAME = {s.name: s for s in CATALOG}


def spec(name: str) -> SourceSpec | None:
    return _BY_NAME.get(name)


def known_names() -> tuple[str, ...]:
    return tuple(s.name for s in CATALOG)


def default_sources(*, have: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The sources asked by default: the default ones, and those whose ``needs`` is in
    ``have`` (the settings given)."""
    return tuple(
        s.name
        for s in sorted(CATALOG, key=lambda s: not s.default)  # stable: defaults first
        if s.default or (s.needs is not None and s.needs in have)
    )


def names_with(evidence: Evidence) -> tuple[str, ...]:
    """The sources of one kind of evidence, most authoritative first."""
    return tuple(s.name for s in by_authority() if s.evidence is evidence)


def by_authority() -> tuple[SourceSpec, ...]:
    return tuple(sorted(CATALOG, key=lambda s: s.rank))


def label(name: str | None) -> str:
    """How a reason names the source ``name`` (its own name if unknown)."""
    found = _BY_NAME.get(name or "")
    return found.label if found is not None else (name or "")
