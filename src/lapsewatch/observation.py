"""What a status source says about one domain: an :class:`Observation`.

Part of the pure core (the verdict decides from observations), so that the verdict
needs nothing from the sources that make them. A source never raises for a failed
lookup: an error or a skip is an observation too, carrying its reason, so the
verdict can tell "the source said so" from "the source could not say".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from lapsewatch.dates import isoformat

__all__ = ["EVIDENCE_LIMIT", "NOT_WAITED", "Observation", "Outcome", "truncate"]

EVIDENCE_LIMIT = 64 * 1024
"""Characters of a raw answer kept as evidence; enough for any sane RDAP record."""
NOT_WAITED = "not waited for at the run's end"
"""In the detail of an error observation whose request was cut short because the rest
of its run was done (:mod:`lapsewatch.pace.stragglers`; :attr:`Observation.cut`)."""


class Outcome(StrEnum):
    ANSWERED = "answered"
    """The source gave a usable answer, including "no such domain"."""
    ERROR = "error"
    """Timeout, network failure, rate limit, garbage: the source could not say."""
    SKIPPED = "skipped"
    """The source does not cover this domain (e.g. no RDAP server for the TLD)."""


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Observation:
    """One source's answer about one domain, kept as evidence."""

    source: str
    domain: str
    outcome: Outcome
    detail: str
    """One line: what came back, or why nothing usable did."""
    found: bool | None = None
    """Whether the source has the domain at all (RDAP record, DNS delegation);
    ``None`` when it cannot tell."""
    status: tuple[str, ...] = ()
    """Normalised status tokens, e.g. ``("redemption period",)`` or ``("parked",)``."""
    registered_at: datetime | None = None
    expires_at: datetime | None = None
    last_changed_at: datetime | None = None
    nameservers: tuple[str, ...] = ()
    mail_hosts: tuple[str, ...] | None = None
    """The domain's mail hosts (MX targets, lower-case, best preference first) as the
    DNS source read them; ``()`` none, ``None`` not asked or no answer."""
    evidence: str = ""
    """The raw answer (truncated to :data:`EVIDENCE_LIMIT`)."""
    retry_after: float | None = None
    """Seconds the source asked us to wait (429), for the scheduler."""
    observed_at: datetime = field(default_factory=_now)

    @property
    def answered(self) -> bool:
        return self.outcome is Outcome.ANSWERED

    @property
    def cut(self) -> bool:
        """No answer because it was not waited for (a straggler at a run's end): not even
        a failure, so a danger it might have contradicted must be confirmed later."""
        return self.outcome is Outcome.ERROR and NOT_WAITED in self.detail

    @classmethod
    def error(cls, source: str, domain: str, detail: str, **kwargs: Any) -> Observation:
        return cls(source=source, domain=domain, outcome=Outcome.ERROR, detail=detail, **kwargs)

    @classmethod
    def skipped(cls, source: str, domain: str, detail: str) -> Observation:
        return cls(source=source, domain=domain, outcome=Outcome.SKIPPED, detail=detail)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used by every output format and by the store."""
        return {
            "source": self.source,
            "domain": self.domain,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "found": self.found,
            "status": list(self.status),
            "registered_at": isoformat(self.registered_at),
            "expires_at": isoformat(self.expires_at),
            "last_changed_at": isoformat(self.last_changed_at),
            "nameservers": list(self.nameservers),
            "mail_hosts": None if self.mail_hosts is None else list(self.mail_hosts),
            "retry_after": self.retry_after,
            "observed_at": isoformat(self.observed_at),
            "evidence": self.evidence,
        }


def truncate(text: str) -> str:
    """Keep evidence bounded so one hostile server cannot fill the store, and storable:
    a NUL character (a garbage WHOIS answer) is written ``\\x00`` (PostgreSQL's text
    columns refuse it, which would fail the whole batch)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) <= EVIDENCE_LIMIT:
        return text
    return text[:EVIDENCE_LIMIT] + f"\n[... {len(text) - EVIDENCE_LIMIT} more characters]"
