"""A domain's mail hosts on other registrable domains (issue #12).

Mail for ``alice@alice.example`` goes to the hosts its MX records name. When one
of them sits on another registrable domain (``mx1.old-mail.example``) and that
domain lapses, whoever buys it receives the mail, password resets included. So
the DNS source reads the MX records, and each mail-host domain that is not the
domain itself and not a well-known mail provider (``data/mail_providers.txt``,
plus the free-provider list) is checked too, through the same sources — at most
once per :class:`MailHostChecks` (one per cycle), however many domains share it
(without reading that domain's own MX: nothing uses it). A check that does not
read the domain's MX (read at most once per ``Policy.mail_hosts_interval``, 90 days,
``schedule.reads_mail_hosts``) checks the mail hosts stored from the last read.
The verdict on the domain is then decided with them (``verdict.decide``'s
``mail_hosts``). A mail-host domain's check is never more than that domain's
error: it cannot stop the cycle.

A cycle keeps a mail-host domain's ``registered`` verdict on the registry's record
(table ``mail_host_verdicts``) for up to ``Policy.mail_host_keep`` (7 days), or less
when that domain would be due sooner (:func:`kept_until`), and the next runs use it
instead of asking again (:meth:`MailHostChecks.remember`): a popular mail host is
asked about about once a week, not at each hourly run where a domain behind it is
due. Danger and doubt are never kept, and replace a kept verdict (newest check wins),
as does a check of the same domain as a domain of its own that finds it dangerous
(:meth:`overruled`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, time, timedelta
from importlib.resources import files

from sqlalchemy import Engine, delete, select

from lapsewatch import domains
from lapsewatch.schedule import Policy, next_check
from lapsewatch.sources.interface import Deadline, Observation, Source, observe_relevant
from lapsewatch.store.db import dialect_insert
from lapsewatch.store.models import MailHostVerdict
from lapsewatch.verdict import (
    Decision,
    MailHostCheck,
    Verdict,
    decide,
    in_auto_renew_grace,
    read_mail_hosts,
    registry_record,
)

__all__ = [
    "MAX_MAIL_HOST_DOMAINS",
    "REREGISTRATION_DOUBT",
    "REREGISTRATION_SLACK",
    "MailHostChecks",
    "MailProviders",
    "kept_until",
    "load_kept",
    "mail_host_domains",
    "mail_providers",
    "not_read_again",
    "registered_again_acted_on",
    "registered_since_read",
    "save_kept",
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
    hosts = read_mail_hosts(observations)
    if hosts is None:
        hosts = tuple(stored)
    found: dict[str, str] = {}
    for host in hosts:
        if providers.covers(host):
            continue
        # Not "ends with the domain": a public suffix inside it (os.hedmark.no under
        # hedmark.no) makes a host under the domain a registration of its own.
        registrable = _registrable(host)
        if (
            registrable is None
            or registrable == domain
            or providers.covers(registrable)
            or registrable in found
        ):
            continue
        found[registrable] = host
        if len(found) >= limit:
            break
    return [(host, registrable) for registrable, host in found.items()]


def kept_until(
    policy: Policy, decision: Decision, observations: Sequence[Observation], checked_at: datetime
) -> datetime | None:
    """Until when a mail-host domain's verdict may stand in for asking again: a
    ``registered`` one drawn with the registry's record, for ``Policy.mail_host_keep``
    (7 days) at most, sooner when that domain would be due itself
    (``schedule.next_check``: daily near its expiry, every 3 days in its grace);
    ``None`` for anything else (danger, doubt, no record), asked again next time.

    Not until it is due (30 days far from its expiry): a domain behind it, checked on
    its own 30-day schedule, would then see a registrar's early deletion of the mail
    host's domain up to 30 days late, past the 35 days before it drops. A week late
    at most leaves the redemption period (30 days) to see it in.
    """
    if decision.verdict is not Verdict.REGISTERED or registry_record(observations) is None:
        return None
    due = next_check(
        policy,
        now=checked_at,
        verdict=decision.verdict,
        expires_at=decision.expires_at,
        failures=0,
        in_grace=in_auto_renew_grace(observations),
    )
    return min(due, checked_at + policy.mail_host_keep)


REREGISTRATION_SLACK = timedelta(days=1)
"""How much later than the MX read a date-only registration date (midnight, as WHOIS
gives it, read as UTC) must be to count; a full timestamp counts as it is."""
REREGISTRATION_DOUBT = "a mail-host domain's registration date alone"
"""Why a mail-host domain registered again is thin evidence: one registry's date
decides for every domain behind it, so a second check confirms it first."""


def registered_since_read(
    checks: Sequence[MailHostCheck],
    known_mail_hosts: Sequence[str],
    read_at: datetime | None,
    verified_at: datetime | None,
    now: datetime,
) -> tuple[MailHostCheck, ...]:
    """``checks``, where a mail-host domain was registered after the domain's MX named
    it (a host on it among the stored ``known_mail_hosts``, read at ``read_at``) made
    ``reregistered``, thin (:data:`REREGISTRATION_DOUBT`).

    The MX pointed there at ``read_at``, so the domain held then is not the one
    registered later: it lapsed and somebody registered it again, between two checks
    (a drop and a new registration can both fall inside 30 days), and now receives
    the mail. Only when an address on the domain was verified (``verified_at``, the
    oldest) before that registration: the cycle then unverifies those addresses,
    not the ones verified since (``cycle.apply``). A date more than a day in the
    future is garbage, not a registration. The caller reads the MX again before it
    acts when the stored hosts stood in (the owner may have moved the mail away and
    let that domain go: ``cycle.checker``)."""
    if not checks or read_at is None or verified_at is None:
        return tuple(checks)
    named = {d for d in map(_registrable, known_mail_hosts) if d is not None}
    return tuple(
        _registered_again(check, read_at, verified_at, now) if check.domain in named else check
        for check in checks
    )


def registered_again_acted_on(decision: Decision) -> datetime | None:
    """The latest registration date of the mail-host domains registered again that a
    ``mail_host_lapsed`` acting now rests on alone, else ``None``: the caller moves the
    MX read time up to it, so the same registration is acted on once (an embedder
    asking the status endpoint would otherwise be told again at every check)."""
    dangerous = [m.decision for m in decision.mail_hosts if m.decision.verdict.dangerous]
    if decision.verdict is not Verdict.MAIL_HOST_LAPSED or not dangerous:
        return None
    dates = [d.registered_at for d in dangerous if d.verdict is Verdict.REREGISTERED]
    if len(dates) < len(dangerous) or None in dates:
        return None
    return max(d for d in dates if d is not None)


def not_read_again(checks: Sequence[MailHostCheck]) -> tuple[MailHostCheck, ...]:
    """``checks``, a mail-host domain registered again made ``unknown`` (retried, never
    acted on): the stored mail hosts stood in, and the MX could not be read again to
    tell whether it still names that domain."""
    return tuple(_unread(check) for check in checks)


def _unread(check: MailHostCheck) -> MailHostCheck:
    if check.decision.verdict is not Verdict.REREGISTERED:
        return check
    why = f"{check.decision.reason}; the MX could not be read again to see it still names it"
    return MailHostCheck(check.host, check.domain, Decision(check.domain, Verdict.UNKNOWN, why))


@functools.lru_cache(maxsize=2048)
def _registrable(host: str) -> str | None:
    """The registrable domain of a mail host, ``None`` for one that has none. Cached:
    the same few thousand hosts come back for every domain of a cycle."""
    try:
        return domains.registrable_domain(host.strip().rstrip(".").lower())
    except ValueError:  # DomainError: an IP literal, a single label, garbage
        return None


def _registered_again(
    check: MailHostCheck, read_at: datetime, verified_at: datetime, now: datetime
) -> MailHostCheck:
    decision = check.decision
    registered = decision.registered_at
    if decision.verdict is not Verdict.REGISTERED or registered is None:
        return check
    date_only = registered.timetz().replace(tzinfo=None) == time()
    slack = REREGISTRATION_SLACK if date_only else timedelta(0)
    if registered <= read_at + slack or registered > now + REREGISTRATION_SLACK:
        return check
    registered = min(registered, now)
    if verified_at >= registered:
        return check
    reason = (
        f"registered on {registered:%Y-%m-%d}, after the MX naming {check.host} was read "
        f"on {read_at:%Y-%m-%d}: a new registration of {check.domain} ({decision.reason})"
    )
    again = replace(
        decision,
        verdict=Verdict.REREGISTERED,
        reason=reason,
        registered_at=registered,
        doubt=REREGISTRATION_DOUBT,
    )
    return MailHostCheck(check.host, check.domain, again)


class MailHostChecks:
    """Checks mail-host domains through ``sources``, each at most once in this object's
    life (a cycle, a ``lapsewatch domain`` run); the verdicts are shared. Verdicts kept
    from earlier runs (:meth:`remember`) are used instead of asking; those worth keeping
    from this run are in :attr:`kept`."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        deadline: float = 60.0,
        providers: MailProviders | None = None,
        policy: Policy | None = None,
    ) -> None:
        self._sources = list(sources)
        self._deadline = deadline
        self._providers = providers
        self._policy = policy or Policy()
        self._checks: dict[str, asyncio.Future[tuple[Decision, tuple[Observation, ...]]]] = {}
        self._remembered: dict[str, tuple[Decision, datetime]] = {}
        self.kept: dict[str, tuple[Decision, datetime, datetime]] = {}
        """``mail domain -> (decision, checked at, kept until)`` of this run's checks, for
        :func:`save_kept`; ``kept until`` is the check time for a verdict not worth
        keeping (it replaces a kept one)."""
        self.checked = 0
        """Mail-host domains asked about (each once)."""

    def remember(self, kept: Mapping[str, tuple[Decision, datetime]]) -> None:
        """Verdicts kept from earlier runs, with when they stop standing
        (:func:`load_kept`); used instead of asking until then."""
        self._remembered.update(kept)

    def overruled(self, domain: str, decision: Decision, checked_at: datetime) -> None:
        """``domain``, checked as a domain of its own, is dangerous: a verdict on it as a
        mail-host domain, kept or checked in this run, no longer stands, here or in
        later runs (other workers' runs included: the saved row says so)."""
        if not decision.verdict.dangerous or decision.verdict is Verdict.MAIL_HOST_LAPSED:
            return  # about its registration only (a lapsed mail host of its own is not)
        self._remembered.pop(domain, None)
        check = self._checks.get(domain)
        if check is not None and check.done():
            del self._checks[domain]  # the next domain behind it asks again
        kept = self.kept.get(domain)
        if kept is None or kept[1] <= checked_at:
            self.kept[domain] = (decision, checked_at, checked_at)

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
        """The verdict on ``mail_domain`` and what it rests on (asked the first time only;
        not at all when a kept verdict stands, which rests on no observation of this run)."""
        remembered = self._remembered.get(mail_domain)
        if remembered is not None and now < remembered[1]:
            return remembered[0], ()
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
            decision = decide(mail_domain, observations, now=now)
            until = kept_until(self._policy, decision, observations, now)
            self.kept[mail_domain] = (decision, now, until or now)
            return decision, observations
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


def load_kept(engine: Engine, now: datetime) -> dict[str, tuple[Decision, datetime]]:
    """The kept mail-host verdicts that still stand at ``now``, with when they stop; the
    reason says when the verdict was drawn."""
    query = select(MailHostVerdict).where(
        MailHostVerdict.good_until > now, MailHostVerdict.verdict == Verdict.REGISTERED.value
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return {
        row.domain: (
            Decision(
                row.domain,
                Verdict(row.verdict),
                f"{row.reason} (checked {row.checked_at:%Y-%m-%d %H:%M} UTC; "
                f"kept until {row.good_until:%Y-%m-%d %H:%M} UTC)",
                row.decided_by,
                row.registered_at,
            ),
            row.good_until,
        )
        for row in rows
    }


_ROWS_PER_STATEMENT = 140
"""Seven bound parameters a row: under SQLite's old limit of 999 a statement."""


def save_kept(
    engine: Engine, kept: Mapping[str, tuple[Decision, datetime, datetime]], now: datetime
) -> int:
    """Insert or replace the run's verdicts (:attr:`MailHostChecks.kept`) in one
    transaction, a row only by a newer check (several workers save at once), and
    drop the rows that stopped standing a day ago."""
    rows = [
        {
            "domain": domain[:253],
            "verdict": decision.verdict.value,
            "reason": decision.reason[:2000],
            "decided_by": decision.decided_by,
            "checked_at": checked_at,
            "good_until": until,
            "registered_at": decision.registered_at,
        }
        for domain, (decision, checked_at, until) in sorted(kept.items())
    ]
    with engine.begin() as connection:
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            statement = dialect_insert(engine.dialect.name, MailHostVerdict).values(
                rows[start : start + _ROWS_PER_STATEMENT]
            )
            statement = statement.on_conflict_do_update(
                index_elements=[MailHostVerdict.domain],
                set_={c: statement.excluded[c] for c in rows[0] if c != "domain"},
                where=MailHostVerdict.checked_at <= statement.excluded.checked_at,
            )
            connection.execute(statement)
    with engine.begin() as connection:  # apart: no lock on other rows while upserting
        old = now - timedelta(days=1)
        connection.execute(delete(MailHostVerdict).where(MailHostVerdict.good_until < old))
    return len(rows)
