"""From observations to one verdict with a reason. Pure: no I/O, no clock.

The rules, in the order they matter:

* Only a source that *answered* can make a verdict dangerous; an error, a
  timeout, garbage or a TLD without RDAP never does.
* A dangerous answer from any source wins over a safe one ("resolve toward
  danger"), and among dangerous answers the most authoritative source names
  it: the registry's RDAP record, then Fastly, then DNS.
* ``available`` is a claim that nobody holds the name, so it is dropped when
  the registry's RDAP record shows the domain is registered (a domain on hold
  or in redemption is also missing from the DNS, but it is not for sale).
* A registration date later than the moment the address was verified means
  somebody registered the name again: ``reregistered``, however healthy it looks.
* A past expiration date is at least ``expiring``.
* ``registered`` (safe) needs the registry's record: without it we cannot see
  expiry or re-registration, so the answer is ``unknown``, retried later.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from lapsewatch.sources.interface import Observation

__all__ = ["DANGEROUS", "Decision", "Verdict", "decide"]


class Verdict(StrEnum):
    REGISTERED = "registered"
    EXPIRING = "expiring"
    REDEMPTION = "redemption"
    PENDING_DELETE = "pending_delete"
    AVAILABLE = "available"
    REREGISTERED = "reregistered"
    FOR_SALE = "for_sale"
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
    Verdict.REGISTERED,
)
_AUTHORITY = ("rdap", "fastly", "dns")


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


@dataclass(frozen=True)
class _Candidate:
    verdict: Verdict
    source: str
    reason: str


def _day(value: datetime) -> str:
    return value.date().isoformat()


def _rdap_candidates(
    obs: Observation, verified_at: datetime | None, now: datetime
) -> list[_Candidate]:
    if obs.found is False:
        return [_Candidate(Verdict.AVAILABLE, "rdap", f"RDAP: {obs.detail}")]
    status = set(obs.status)
    found: list[_Candidate] = []

    def add(verdict: Verdict, why: str) -> None:
        found.append(_Candidate(verdict, "rdap", f"RDAP: {why}"))

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
    holds = status & {"client hold", "server hold"}
    if holds and "auto renew period" in status:
        add(Verdict.EXPIRING, f"'{sorted(holds)[0]}' during 'auto renew period': renewal unpaid")
    if not found:
        expiry = f"expires {_day(obs.expires_at)}" if obs.expires_at else "no expiration date"
        shown = ", ".join(obs.status) or "no status"
        add(Verdict.REGISTERED, f"registered ({shown}; {expiry})")
    return found


def _dns_candidates(obs: Observation) -> list[_Candidate]:
    if obs.found is False:
        return [_Candidate(Verdict.AVAILABLE, "dns", f"DNS: {obs.detail}")]
    if obs.found and "parked" in obs.status:
        return [_Candidate(Verdict.FOR_SALE, "dns", f"DNS: {obs.detail}")]
    if obs.found:
        return [_Candidate(Verdict.REGISTERED, "dns", f"DNS: {obs.detail}")]
    return []


def _token_candidates(obs: Observation) -> list[_Candidate]:
    """Fastly's (and Domainr's) vocabulary of status tokens."""
    tokens = set(obs.status)
    said = f"{obs.source}: status '{' '.join(obs.status)}'"
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
    if obs.source == "rdap":
        return _rdap_candidates(obs, verified_at, now)
    if obs.source == "dns":
        return _dns_candidates(obs)
    return _token_candidates(obs)


def _rank(candidate: _Candidate) -> tuple[int, int]:
    authority = (
        _AUTHORITY.index(candidate.source) if candidate.source in _AUTHORITY else len(_AUTHORITY)
    )
    return authority, _PRECEDENCE.index(candidate.verdict)


def _silent(observations: Sequence[Observation]) -> str:
    """Which sources could not answer, and why, for the reason line."""
    return "; ".join(f"{o.source}: {o.detail}" for o in observations if not o.answered)


def decide(
    domain: str,
    observations: Iterable[Observation],
    *,
    now: datetime,
    verified_at: datetime | None = None,
) -> Decision:
    """The verdict on ``domain`` from what the sources observed at ``now``."""
    observations = list(observations)
    answered = [o for o in observations if o.answered]
    rdap_record = next((o for o in answered if o.source == "rdap" and o.found), None)
    candidates = [c for o in answered for c in _candidates(o, verified_at, now)]
    if rdap_record is not None:
        candidates = [
            c for c in candidates if not (c.verdict is Verdict.AVAILABLE and c.source != "rdap")
        ]
    dates = {
        "registered_at": rdap_record.registered_at if rdap_record else None,
        "expires_at": rdap_record.expires_at if rdap_record else None,
    }
    dangerous = sorted((c for c in candidates if c.verdict.dangerous), key=_rank)
    if dangerous:
        top = dangerous[0]
        return Decision(domain, top.verdict, top.reason, top.source, **dates)
    if rdap_record is not None:
        registered = min((c for c in candidates if c.source == "rdap"), key=_rank)
        return Decision(domain, Verdict.REGISTERED, registered.reason, "rdap", **dates)
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
    return Decision(domain, Verdict.UNKNOWN, reason, None, **dates)
