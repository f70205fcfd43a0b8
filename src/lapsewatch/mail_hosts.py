"""A domain's mail hosts on other registrable domains (issue #12).

Mail for ``alice@alice.example`` goes to the hosts its MX records name. When one
of them sits on another registrable domain (``mx1.old-mail.example``) and that
domain lapses, whoever buys it receives the mail, password resets included. So
the DNS source reads the MX records, and each mail-host domain that is not the
domain itself and not a well-known mail provider (``data/mail_providers.txt``,
plus the free-provider list) is checked too, through the same sources — at most
once per :class:`MailHostChecks` (one per cycle), however many domains share it
(without reading that domain's own MX: nothing uses it). A check that does not
read the domain's MX (read at most once per check interval, ``schedule.reads_mail_hosts``)
checks the mail hosts stored from the last read, so a lapsed mail-host domain is
caught at every check.
The verdict on the domain is then decided with them (``verdict.decide``'s
``mail_hosts``). A mail-host domain's check is never more than that domain's
error: it cannot stop the cycle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from importlib.resources import files

from lapsewatch import domains
from lapsewatch.sources.interface import Deadline, Observation, Source, observe_relevant
from lapsewatch.verdict import Decision, MailHostCheck, Verdict, decide

__all__ = [
    "MAX_MAIL_HOST_DOMAINS",
    "MailHostChecks",
    "MailProviders",
    "mail_host_domains",
    "mail_providers",
]

log = logging.getLogger(__name__)

MAX_MAIL_HOST_DOMAINS = 4
"""Most mail-host domains checked per domain (the first, by MX preference)."""
_FILE = "mail_providers.txt"


class MailProviders:
    """Domains of well-known mail providers: a host on one (or under one) is not checked."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = frozenset(e.strip().lower().rstrip(".") for e in entries if e.strip())

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> MailProviders:
        return cls(line.split("#", 1)[0] for line in lines)

    def covers(self, host: str) -> bool:
        labels = host.lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self.entries for i in range(len(labels)))


@functools.cache
def mail_providers() -> MailProviders:
    """The shipped list, with the free-provider list on top."""
    text = (files("lapsewatch") / "data" / _FILE).read_text(encoding="utf-8")
    shipped = MailProviders.from_lines(text.splitlines())
    return MailProviders(shipped.entries | domains.load_free_providers().domains)


def mail_host_domains(
    domain: str,
    observations: Iterable[Observation],
    providers: MailProviders | None = None,
    limit: int = MAX_MAIL_HOST_DOMAINS,
    stored: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """``(mail host, its registrable domain)`` to check for ``domain``: one host per
    registrable domain, in MX preference order, providers and the domain itself left out.
    The mail hosts are those the DNS source read; ``stored`` (the ones read before) when
    it read none this time (not asked, or no answer)."""
    providers = providers or mail_providers()
    read = (o.mail_hosts for o in observations if o.source == "dns" and o.answered)
    hosts = next((h for h in read if h is not None), None)
    if hosts is None:
        hosts = tuple(stored)
    found: dict[str, str] = {}
    for host in hosts:
        if providers.covers(host):
            continue
        try:
            registrable = domains.registrable_domain(host)
        except ValueError:  # DomainError: an IP literal, a single label, garbage
            continue
        if registrable == domain or providers.covers(registrable) or registrable in found:
            continue
        found[registrable] = host
        if len(found) >= limit:
            break
    return [(host, registrable) for registrable, host in found.items()]


class MailHostChecks:
    """Checks mail-host domains through ``sources``, each at most once in this object's
    life (a cycle, a ``lapsewatch domain`` run); the verdicts are shared."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        deadline: float = 60.0,
        providers: MailProviders | None = None,
    ) -> None:
        self._sources = list(sources)
        self._deadline = deadline
        self._providers = providers
        self._checks: dict[str, asyncio.Future[tuple[Decision, tuple[Observation, ...]]]] = {}
        self.checked = 0
        """Mail-host domains asked about (each once)."""

    async def for_domain(
        self,
        domain: str,
        observations: Iterable[Observation],
        now: datetime,
        deadline: Deadline | None = None,
        stored: Sequence[str] = (),
    ) -> tuple[MailHostCheck, ...]:
        """The domain's mail hosts on other registrable domains, with their verdicts
        (``stored``: the mail hosts to use when the observations read none).

        ``deadline``: the domain's own (its whole check's). A mail-host domain's
        verdict not known by then is ``unknown`` for this domain; its check goes on
        for the other domains that share it (under its own deadline)."""
        pairs = mail_host_domains(domain, observations, self._providers, stored=stored)
        if not pairs or not self._sources:
            return ()
        decisions = await asyncio.gather(
            *(self._decision_by(domain, d, now, deadline) for _, d in pairs)
        )
        return tuple(
            MailHostCheck(host, registrable, decision)
            for (host, registrable), decision in zip(pairs, decisions, strict=True)
        )

    async def _decision_by(
        self, domain: str, mail_domain: str, now: datetime, deadline: Deadline | None
    ) -> Decision:
        if deadline is None:
            return await self.decision(mail_domain, now)
        scope = asyncio.timeout_at(deadline.at)
        try:
            async with scope:
                return await self.decision(mail_domain, now)
        except TimeoutError:
            if not scope.expired():
                raise
        log.warning("%s: mail host domain %s: %s", domain, mail_domain, deadline.missed)
        return Decision(mail_domain, Verdict.UNKNOWN, deadline.missed)

    async def decision(self, mail_domain: str, now: datetime) -> Decision:
        return (await self.checked_domain(mail_domain, now))[0]

    async def checked_domain(
        self, mail_domain: str, now: datetime
    ) -> tuple[Decision, tuple[Observation, ...]]:
        """The verdict on ``mail_domain`` and what it rests on (asked the first time only)."""
        check = self._checks.get(mail_domain)
        if check is None:
            check = asyncio.ensure_future(self._check(mail_domain, now))
            self._checks[mail_domain] = check
            self.checked += 1
        # Shielded: a domain whose own check is cancelled does not cancel the shared one.
        return await asyncio.shield(check)

    async def _check(
        self, mail_domain: str, now: datetime
    ) -> tuple[Decision, tuple[Observation, ...]]:
        try:
            observations = await observe_relevant(
                self._sources, mail_domain, self._deadline, mail_hosts=False
            )
            return decide(mail_domain, observations, now=now), observations
        except Exception as exc:  # never more than this mail host's "unknown"
            log.warning("mail host domain %s: check failed: %s", mail_domain, exc, exc_info=exc)
            why = f"check failed: {type(exc).__name__}: {str(exc)[:200]}"
            return Decision(mail_domain, Verdict.UNKNOWN, why), ()

    async def aclose(self) -> None:
        """Cancel checks nobody waits for any more."""
        pending = [c for c in self._checks.values() if not c.done()]
        for check in pending:
            check.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
