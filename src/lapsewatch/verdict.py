"""From observations to one verdict with a reason. Pure: no I/O, no clock.

The rules, in the order they matter:

* Only a source that *answered* can make a verdict dangerous; an error, a
  timeout, garbage or a TLD without RDAP never does.
* A dangerous answer from any source wins over a safe one ("resolve toward danger"),
  and among dangerous answers the most authoritative source names it (the catalog's
  ``rank``: the registry's record by RDAP, or WHOIS, then Fastly, then DNS).
* ``available`` is a claim that nobody holds the name, so it is dropped when the
  registry's record shows the domain is registered (a domain on hold or in
  redemption is also missing from the DNS, but it is not for sale).
* A registration date later than the moment the address was verified means
  somebody registered the name again: ``reregistered``, however healthy it looks.
* A past expiration date is at least ``expiring``.
* In the auto-renew grace, name servers that share none with those of the last
  healthy check are ``expiring`` (an auction sale) when the mail hosts changed too;
  thin when the zone answers but its mail hosts could not be read.
* ``registered`` (safe) needs the registry's record: without it we cannot see
  expiry or re-registration, so the answer is ``unknown``, retried later.
* A dangerous verdict acts at once only when the registry's record shows the
  danger, or when two sources agree and none contradicts. Otherwise it is
  *thin* (``Decision.doubt``): :func:`lapsewatch.confirm.settle` turns it into a pending
  confirmation, and only a later check that says the same acts on it. A domain
  whose answers flip ends ``unknown``.
* A domain whose own verdict is not firmly dangerous, but one of whose mail hosts
  (MX) sits on another registrable domain that is dangerous, is
  ``mail_host_lapsed``: whoever buys that domain receives the mail. It is thin
  when the mail host's own verdict is thin.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from lapsewatch import source_catalog as catalog
from lapsewatch.observation import Observation

__all__ = [
    "AUTO_RENEW",
    "DANGEROUS",
    "REGISTRY_SOURCES",
    "Decision",
    "MailHostCheck",
    "Verdict",
    "decide",
    "healthy_mail_hosts",
    "healthy_nameservers",
    "in_auto_renew_grace",
    "needs_mail_hosts",
    "read_mail_hosts",
    "registry_record",
]

REGISTRY_SOURCES = catalog.names_with(catalog.Evidence.REGISTRY)
"""Sources that speak for the registry itself, most authoritative first (RDAP, WHOIS
where a TLD has no RDAP server). Only their record can show a domain is safe."""

AUTO_RENEW = "auto renew period"
"""The registry renewed an expired name on the registrar's behalf and waits (up to
45 days) to be paid: normal for a paying owner, and the window in which registrars
auction expired names to new owners."""


class Verdict(StrEnum):
    REGISTERED = "registered"
    EXPIRING = "expiring"
    REDEMPTION = "redemption"
    PENDING_DELETE = "pending_delete"
    AVAILABLE = "available"
    REREGISTERED = "reregistered"
    FOR_SALE = "for_sale"
    MAIL_HOST_LAPSED = "mail_host_lapsed"
    UNKNOWN = "unknown"

    @property
    def dangerous(self) -> bool:
        """Whether verified addresses on such a domain must be unverified."""
        return self in DANGEROUS


DANGEROUS = frozenset(
    {
        Verdict.EXPIRING,
        Verdict.REDEMPTION,
        Verdict.PENDING_DELETE,
        Verdict.AVAILABLE,
        Verdict.REREGISTERED,
        Verdict.FOR_SALE,
        Verdict.MAIL_HOST_LAPSED,
    }
)

# Within one source, which verdict names the danger when several apply.
_PRECEDENCE = (
    Verdict.REREGISTERED,
    Verdict.AVAILABLE,
    Verdict.PENDING_DELETE,
    Verdict.REDEMPTION,
    Verdict.FOR_SALE,
    Verdict.EXPIRING,
    Verdict.MAIL_HOST_LAPSED,
    Verdict.REGISTERED,
)
_AUTHORITY = {s.name: i for i, s in enumerate(catalog.by_authority())}
_DNS = catalog.names_with(catalog.Evidence.DNS)


@dataclass(frozen=True)
class Decision:
    """The verdict on one domain and the evidence-citing reason for it."""

    domain: str
    verdict: Verdict
    reason: str
    decided_by: str | None = None
    """The source whose answer named the verdict (``None`` for ``unknown``)."""
    registered_at: datetime | None = None
    expires_at: datetime | None = None
    doubt: str | None = None
    """For a dangerous verdict on thin evidence (one source alone, or contradicted):
    why it must be confirmed by a later check before it acts. ``None``: it may act."""
    pending: Verdict | None = None
    """Set by :func:`~lapsewatch.confirm.settle` on an ``unknown`` decision waiting to
    confirm this verdict."""
    confirm_at: datetime | None = None
    """When the confirming check of ``pending`` is due."""
    settled: bool = False
    """Already passed through :func:`~lapsewatch.confirm.settle` (settling again changes
    nothing)."""
    mail_hosts: tuple[MailHostCheck, ...] = ()
    """The domain's mail hosts on other registrable domains that were checked."""

    @property
    def firm(self) -> bool:
        """Whether a dangerous verdict may act now."""
        return self.verdict.dangerous and self.doubt is None


@dataclass(frozen=True)
class MailHostCheck:
    """One mail host (MX) of a domain that sits on another registrable domain, and the
    verdict on that domain (decided as any domain's, without a verification time)."""

    host: str
    domain: str
    decision: Decision


@dataclass(frozen=True)
class _Candidate:
    verdict: Verdict
    source: str
    reason: str
    doubt: str | None = None  # thin whatever else is seen; None: as _doubt judges


def _day(value: datetime) -> str:
    return value.date().isoformat()


def _registry_candidates(
    obs: Observation, verified_at: datetime | None, now: datetime
) -> list[_Candidate]:
    """What the registry's record says, from RDAP or WHOIS alike (WHOIS emits RDAP's
    status words; ``expired`` is a WHOIS registry's word for a past expiry)."""
    label = catalog.label(obs.source)
    if obs.found is False:
        return [_Candidate(Verdict.AVAILABLE, obs.source, f"{label}: {obs.detail}")]
    status = set(obs.status)
    found: list[_Candidate] = []

    def add(verdict: Verdict, why: str) -> None:
        found.append(_Candidate(verdict, obs.source, f"{label}: {why}"))

    if obs.registered_at and verified_at and obs.registered_at > verified_at:
        add(
            Verdict.REREGISTERED,
            f"registered {_day(obs.registered_at)}, after the address was verified "
            f"on {_day(verified_at)}",
        )
    if "pending delete" in status:
        add(Verdict.PENDING_DELETE, "status 'pending delete': the registry will release it")
    if status & {"redemption period", "pending restore"}:
        add(Verdict.REDEMPTION, "status 'redemption period': the registration has lapsed")
    if obs.expires_at and obs.expires_at <= now:
        add(Verdict.EXPIRING, f"expired on {_day(obs.expires_at)}")
    elif "expired" in status:
        add(Verdict.EXPIRING, "status 'expired': the registration has run out")
    holds = status & {"client hold", "server hold"}
    if holds and "auto renew period" in status:
        add(Verdict.EXPIRING, f"'{sorted(holds)[0]}' during 'auto renew period': renewal unpaid")
    if not found:
        expiry = f"expires {_day(obs.expires_at)}" if obs.expires_at else "no expiration date"
        shown = ", ".join(obs.status) or "no status"
        add(Verdict.REGISTERED, f"registered ({shown}; {expiry})")
    return found


def registry_record(observations: Iterable[Observation]) -> Observation | None:
    """The registry's own record of the domain (see :data:`REGISTRY_SOURCES`): an
    answered observation that found it, RDAP's first; ``None`` without one."""
    records = [o for o in observations if o.source in REGISTRY_SOURCES and o.answered and o.found]
    return min(records, key=lambda o: REGISTRY_SOURCES.index(o.source), default=None)


def _ns(name: str) -> str:
    return name.strip().rstrip(".").lower()


def read_mail_hosts(observations: Iterable[Observation]) -> tuple[str, ...] | None:
    """The mail hosts the DNS source read in this check (``None``: not read, or no
    answer), normalised, best preference first."""
    for o in observations:
        if o.source in _DNS and o.answered and o.mail_hosts is not None:
            return tuple(dict.fromkeys(_ns(h) for h in o.mail_hosts))
    return None


def _grace_sale(
    record: Observation,
    observations: Sequence[Observation],
    known_nameservers: Sequence[str],
    known_mail_hosts: Sequence[str],
) -> _Candidate | str | None:
    """The auto-renew-grace name-server rule: an ``expiring`` candidate, the reason of
    an ``unknown`` (no DNS answer), or ``None``.

    A name sold at auction in the grace keeps its dates; other name servers serve it,
    and the buyer's zone lacks the previous owner's mail hosts. An owner moving DNS
    hosting keeps them, so with ``known_mail_hosts`` the rule needs them changed too;
    if the zone answers but not for its mail hosts, thin (a move must show the same
    mail hosts to be let off); with no DNS answer at all, ``unknown`` (retried).
    Without them (none read yet, no mail host at all) or a DNS source: name servers alone.
    """
    if AUTO_RENEW not in record.status or not known_nameservers or not record.nameservers:
        return None
    before_ns = {_ns(n) for n in known_nameservers}
    now_ns = {_ns(n) for n in record.nameservers}
    if before_ns & now_ns:
        return None
    moved = f"were {', '.join(sorted(before_ns))}; now {', '.join(sorted(now_ns))}"
    label = catalog.label(record.source)
    said = f"{label}: name servers changed during '{AUTO_RENEW}' ({moved})"
    sold = "an expired name sold at auction keeps its dates but not its name servers"
    dns = [o for o in observations if o.source in _DNS]
    if not known_mail_hosts or not dns:
        return _Candidate(Verdict.EXPIRING, record.source, f"{said}: {sold}")
    hosts = read_mail_hosts(observations)
    unread = "the mail hosts could not be read to tell a sale from a move of DNS hosting"
    if hosts is None and not any(o.answered for o in dns):
        return f"{said} and {unread} (no DNS answer): retried"  # our resolver, maybe
    if hosts is None:  # the zone answers, but not for its mail: confirmed, then acted on
        why, doubt = f"{said}; {unread}", "mail hosts unreadable"
        return _Candidate(Verdict.EXPIRING, record.source, why, doubt=doubt)
    before = {_ns(h) for h in known_mail_hosts}
    if set(hosts) == before:
        return None  # the owner moved DNS hosting and kept the mail
    return _Candidate(
        Verdict.EXPIRING,
        record.source,
        f"{label}: name servers and mail hosts changed during '{AUTO_RENEW}' (name servers "
        f"{moved}; mail hosts were {', '.join(sorted(before))}; now "
        f"{', '.join(hosts) or 'none'}): {sold} or mail",
    )


def needs_mail_hosts(
    observations: Iterable[Observation],
    known_nameservers: Sequence[str],
    known_mail_hosts: Sequence[str],
) -> bool:
    """Whether :func:`decide` would wait for mail hosts this check did not read (the
    grace name-server rule, :func:`_grace_sale`): the caller reads them and decides."""
    observations = list(observations)
    record = registry_record(observations)
    sale = record and _grace_sale(record, observations, known_nameservers, known_mail_hosts)
    return isinstance(sale, str) or (isinstance(sale, _Candidate) and sale.doubt is not None)


def in_auto_renew_grace(observations: Iterable[Observation]) -> bool:
    """Whether the registry's record shows the auto-renew grace (see :data:`AUTO_RENEW`)."""
    record = registry_record(observations)
    return record is not None and AUTO_RENEW in record.status


def healthy_nameservers(
    decision: Decision, observations: Iterable[Observation]
) -> tuple[str, ...] | None:
    """The registry's name servers worth remembering for :func:`decide`'s
    ``known_nameservers``: from a ``registered`` verdict outside the grace; ``None``
    when this check should not replace what is known."""
    if decision.verdict is not Verdict.REGISTERED:
        return None
    observations = list(observations)
    if in_auto_renew_grace(observations):
        return None
    record = registry_record(observations)
    if record is None or not record.nameservers:
        return None
    return tuple(sorted({_ns(n) for n in record.nameservers}))


def healthy_mail_hosts(
    decision: Decision, observations: Iterable[Observation]
) -> tuple[str, ...] | None:
    """The mail hosts worth remembering for :func:`decide`'s ``known_mail_hosts`` (and
    for the mail-host checks of a check that does not read them): those the DNS source
    read at a ``registered`` check outside the grace, best preference first (``()``:
    no mail host: a null MX, or no MX and no address); ``None`` when this check should
    not replace what is known."""
    if decision.verdict is not Verdict.REGISTERED:
        return None
    observations = list(observations)
    if in_auto_renew_grace(observations):
        return None
    return read_mail_hosts(observations)


def _dns_candidates(obs: Observation) -> list[_Candidate]:
    said = f"{catalog.label(obs.source)}: {obs.detail}"
    if obs.found is False:
        return [_Candidate(Verdict.AVAILABLE, obs.source, said)]
    if obs.found and "parked" in obs.status:
        return [_Candidate(Verdict.FOR_SALE, obs.source, said)]
    if obs.found:
        return [_Candidate(Verdict.REGISTERED, obs.source, said)]
    return []


def _token_candidates(obs: Observation) -> list[_Candidate]:
    """Fastly's (and Domainr's) vocabulary of status tokens."""
    tokens = set(obs.status)
    said = f"{catalog.label(obs.source)}: status '{' '.join(obs.status)}'"
    found: list[_Candidate] = []
    if "deleting" in tokens:
        found.append(_Candidate(Verdict.PENDING_DELETE, obs.source, said))
    if "inactive" in tokens or ("undelegated" in tokens and "active" not in tokens):
        found.append(_Candidate(Verdict.AVAILABLE, obs.source, said))
    if tokens & {"parked", "marketed"} and "active" in tokens:
        found.append(_Candidate(Verdict.FOR_SALE, obs.source, said))
    if "expiring" in tokens:
        found.append(_Candidate(Verdict.EXPIRING, obs.source, said))
    if not found and "active" in tokens:
        found.append(_Candidate(Verdict.REGISTERED, obs.source, said))
    return found


def _candidates(obs: Observation, verified_at: datetime | None, now: datetime) -> list[_Candidate]:
    """Read by the source's kind of evidence (a source not in the catalog: tokens)."""
    if obs.source in REGISTRY_SOURCES:
        return _registry_candidates(obs, verified_at, now)
    if obs.source in _DNS:
        return _dns_candidates(obs)
    return _token_candidates(obs)


def _rank(candidate: _Candidate) -> tuple[int, int]:
    """Authority first (a source not in the catalog last), then the danger's precedence."""
    return _AUTHORITY.get(candidate.source, len(_AUTHORITY)), _PRECEDENCE.index(candidate.verdict)


def _silent(observations: Sequence[Observation]) -> str:
    """Which sources could not answer, and why, for the reason line."""
    return "; ".join(f"{o.source}: {o.detail}" for o in observations if not o.answered)


def _doubt(
    top: _Candidate,
    dangerous: Sequence[_Candidate],
    candidates: Sequence[_Candidate],
    *,
    registry_record: bool,
) -> str | None:
    """Why a dangerous verdict is thin evidence, or None when it may act at once.

    It may act when the registry's own record shows the danger, or when two
    sources see danger and no answering source says the domain is fine. A
    parked name is registered by definition, so a safe answer does not
    contradict ``for_sale``.
    """
    if top.source in REGISTRY_SOURCES and registry_record:
        return None
    alarmed = list(dict.fromkeys(c.source for c in dangerous))
    calm = [
        c.source
        for c in candidates
        if not c.verdict.dangerous
        and c.source not in alarmed
        and top.verdict is not Verdict.FOR_SALE
    ]
    if len(alarmed) >= 2 and not calm:
        return None
    why = f"{top.verdict.value} rests on {alarmed[0]} alone" if len(alarmed) == 1 else ""
    if calm:
        said = f"{', '.join(dict.fromkeys(calm))} says it is registered"
        why = f"{why}; {said}" if why else f"{', '.join(alarmed)} see danger but {said}"
    return why


def _not_waited(observations: Sequence[Observation]) -> str | None:
    """Why a danger must wait when a source's answer was not waited for (cut at a run's
    end): that answer (the registry's record of a domain on hold, say) might have
    contradicted it. A timeout is a failure and counts as said; a cut is not."""
    cut = [o.source for o in observations if o.cut]
    return f"{', '.join(dict.fromkeys(cut))} not waited for" if cut else None


def decide(
    domain: str,
    observations: Iterable[Observation],
    *,
    now: datetime,
    verified_at: datetime | None = None,
    known_nameservers: Sequence[str] = (),
    known_mail_hosts: Sequence[str] = (),
    mail_hosts: Iterable[MailHostCheck] = (),
) -> Decision:
    """The verdict on ``domain`` from what the sources observed at ``now``.

    ``mail_hosts``: the domain's mail hosts on other registrable domains, each with
    the verdict on its domain. The domain's own firm danger names the verdict; else a
    dangerous mail-host domain makes it ``mail_host_lapsed`` (a firm one at once).

    ``known_nameservers``: the registry's name servers at the last healthy check
    outside the auto-renew grace (``healthy_nameservers``), if the caller keeps them;
    ``known_mail_hosts``: the mail hosts of that check (``healthy_mail_hosts``). Name
    servers changed in the grace are ``expiring`` only if the mail hosts changed too,
    thin ``expiring`` when they could not be read (:func:`_grace_sale`).
    """
    observations = list(observations)
    answered = [o for o in observations if o.answered]
    record = registry_record(answered)
    candidates = [c for o in answered for c in _candidates(o, verified_at, now)]
    waiting: str | None = None
    if record is not None:
        sale = _grace_sale(record, observations, known_nameservers, known_mail_hosts)
        candidates += [sale] if isinstance(sale, _Candidate) else []
        waiting = sale if isinstance(sale, str) else None
        candidates = [
            c
            for c in candidates
            if not (c.verdict is Verdict.AVAILABLE and c.source not in REGISTRY_SOURCES)
        ]
    registered_at = record.registered_at if record else None
    expires_at = record.expires_at if record else None
    checked = tuple(mail_hosts)
    dangerous = sorted((c for c in candidates if c.verdict.dangerous), key=_rank)
    if dangerous:
        top = dangerous[0]
        doubt = (
            top.doubt
            or _doubt(top, dangerous, candidates, registry_record=record is not None)
            or _not_waited(observations)
        )
        # The domain's own danger names the verdict, unless it is thin and a mail
        # host's is firm (a firm danger must not wait for the thin one's confirmation).
        if doubt is None or not any(m.decision.firm for m in checked):
            return Decision(
                domain,
                top.verdict,
                top.reason,
                top.source,
                registered_at,
                expires_at,
                doubt=doubt,
                mail_hosts=checked,
            )
    lapsed = _mail_host_lapsed(domain, checked, registered_at, expires_at)
    if lapsed is not None:
        return lapsed
    if waiting is not None:
        return Decision(
            domain, Verdict.UNKNOWN, waiting, None, registered_at, expires_at, mail_hosts=checked
        )
    if record is not None:
        registered = min((c for c in candidates if c.source == record.source), key=_rank)
        return Decision(
            domain,
            Verdict.REGISTERED,
            registered.reason,
            record.source,
            registered_at,
            expires_at,
            mail_hosts=checked,
        )
    silent = _silent(observations)
    if not observations:
        reason = "no source is configured"
    elif candidates:
        seen = ", ".join(dict.fromkeys(c.source for c in candidates))
        reason = (
            f"no registry record to check expiry and re-registration ({silent}); "
            f"{seen} saw nothing wrong"
        )
    else:
        reason = f"no source could say: {silent}" if silent else "no source could say"
    return Decision(
        domain, Verdict.UNKNOWN, reason, None, registered_at, expires_at, mail_hosts=checked
    )


def _mail_host_lapsed(
    domain: str,
    checked: Sequence[MailHostCheck],
    registered_at: datetime | None,
    expires_at: datetime | None,
) -> Decision | None:
    """``mail_host_lapsed`` from the worst dangerous mail-host domain (a firm one first),
    thin when that domain's own verdict is thin; ``None`` when no mail host is in danger."""
    lapsed = [m for m in checked if m.decision.verdict.dangerous]
    if not lapsed:
        return None
    worst = min(
        lapsed,
        key=lambda m: (not m.decision.firm, _PRECEDENCE.index(m.decision.verdict), m.host),
    )
    own = worst.decision
    reason = (
        f"mail host {worst.host} is on {worst.domain}, which is {own.verdict.value}: "
        f"{own.reason}; whoever holds {worst.domain} receives {domain}'s mail"
    )
    doubt = None if own.firm else f"mail host {worst.host}: {own.doubt or 'not firm'}"
    return Decision(
        domain,
        Verdict.MAIL_HOST_LAPSED,
        reason,
        own.decided_by,
        registered_at,
        expires_at,
        doubt=doubt,
        mail_hosts=tuple(checked),
    )
