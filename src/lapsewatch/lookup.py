"""Check one address or domain now, with every configured source.

This is the single-domain path behind ``lapsewatch domain``; the check cycle
uses the same three steps (parse, observe, decide) for many domains at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lapsewatch import domains
from lapsewatch.config import Settings
from lapsewatch.mail_hosts import MailHostChecks
from lapsewatch.sources import Observation, Source, observe_relevant, open_sources
from lapsewatch.sources.interface import Deadline
from lapsewatch.verdict import Decision, Verdict, decide

__all__ = ["DomainReport", "check", "check_all", "observe_all"]


@dataclass(frozen=True)
class DomainReport:
    """What ``lapsewatch domain`` prints."""

    input: str
    parsed: domains.EmailDomain
    decision: Decision
    observations: tuple[Observation, ...]


async def observe_all(
    sources: list[Source], domain: str, deadline: float | Deadline = 60.0
) -> tuple[Observation, ...]:
    """Ask every relevant source at once; one slow or failing source is that source's error."""
    return await observe_relevant(sources, domain, deadline)


async def check(
    text: str,
    settings: Settings,
    *,
    verified_at: datetime | None = None,
    now: datetime | None = None,
    free_providers: domains.FreeProviders | None = None,
) -> DomainReport:
    """Parse ``text`` (raises :class:`~lapsewatch.domains.DomainError`) and check its domain."""
    reports = await check_all(
        [text], settings, verified_at=verified_at, now=now, free_providers=free_providers
    )
    return reports[0]


async def check_all(
    texts: Sequence[str],
    settings: Settings,
    *,
    verified_at: datetime | None = None,
    now: datetime | None = None,
    free_providers: domains.FreeProviders | None = None,
) -> list[DomainReport]:
    """Check several inputs concurrently with one set of sources (parse all first)."""
    parsed = [domains.parse(text, free_providers=free_providers) for text in texts]
    async with open_sources(settings) as sources:
        mail_hosts = MailHostChecks(sources, deadline=settings.domain_deadline)
        try:
            reports = await asyncio.gather(
                *(
                    _check_parsed(
                        text, p, sources, verified_at, now, settings.domain_deadline, mail_hosts
                    )
                    for text, p in zip(texts, parsed, strict=True)
                )
            )
        finally:
            await mail_hosts.aclose()
    return list(reports)


async def _check_parsed(
    text: str,
    parsed: domains.EmailDomain,
    sources: list[Source],
    verified_at: datetime | None,
    now: datetime | None,
    deadline: float,
    mail_hosts: MailHostChecks,
) -> DomainReport:
    if parsed.free_provider:
        decision = Decision(
            parsed.domain,
            Verdict.REGISTERED,
            f"{parsed.domain} is a well-known mail provider; not checked",
        )
        return DomainReport(text, parsed, decision, ())
    # One deadline for the domain's whole check: its sources and its mail hosts.
    whole = Deadline.after(deadline)
    observations = await observe_all(sources, parsed.domain, whole)
    at = now or datetime.now(UTC)
    decision = decide(
        parsed.domain,
        observations,
        now=at,
        verified_at=verified_at,
        mail_hosts=await mail_hosts.for_domain(parsed.domain, observations, at, whole),
    )
    return DomainReport(text, parsed, decision, observations)
