"""Check one address or domain now, with every configured source.

This is the single-domain path behind ``lapsewatch domain``; the check cycle
uses the same three steps (parse, observe, decide) for many domains at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from lapsewatch import domains
from lapsewatch.config import Settings
from lapsewatch.sources import Observation, Source, open_sources
from lapsewatch.verdict import Decision, Verdict, decide

__all__ = ["DomainReport", "check", "observe_all"]


@dataclass(frozen=True)
class DomainReport:
    """What ``lapsewatch domain`` prints."""

    input: str
    parsed: domains.EmailDomain
    decision: Decision
    observations: tuple[Observation, ...]


async def observe_all(sources: list[Source], domain: str) -> tuple[Observation, ...]:
    """Ask every source at once; one slow source does not delay the others' start."""
    return tuple(await asyncio.gather(*(s.observe(domain) for s in sources)))


async def check(
    text: str,
    settings: Settings,
    *,
    verified_at: datetime | None = None,
    now: datetime | None = None,
    free_providers: domains.FreeProviders | None = None,
) -> DomainReport:
    """Parse ``text`` (raises :class:`~lapsewatch.domains.DomainError`) and check its domain."""
    parsed = domains.parse(text, free_providers=free_providers)
    if parsed.free_provider:
        decision = Decision(
            parsed.domain,
            Verdict.REGISTERED,
            f"{parsed.domain} is a well-known mail provider; not checked",
        )
        return DomainReport(text, parsed, decision, ())
    async with open_sources(settings) as sources:
        observations = await observe_all(sources, parsed.domain)
    decision = decide(
        parsed.domain, observations, now=now or datetime.now(UTC), verified_at=verified_at
    )
    return DomainReport(text, parsed, decision, observations)
