"""Findings: one per package and address, with a verdict-like status and its reason.

The statuses are the nine verdicts plus what only a scan can meet: a free
provider (not checked), an unparseable address, a package with no address, a
package the index does not have, and an index that could not be read. Joining
packages with the domain observations happens here, and only here; the output
formats just print what this module produced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from lapsewatch.mail_hosts import mail_host_domains
from lapsewatch.scan.addresses import Extracted
from lapsewatch.scan.packages import Ecosystem, FirstPublished, Origin, PackageMetadata
from lapsewatch.source_catalog import label as source_label
from lapsewatch.sources import Observation
from lapsewatch.verdict import DANGEROUS, MailHostCheck, decide

__all__ = [
    "DANGEROUS_STATUSES",
    "Finding",
    "ScanReport",
    "Status",
    "finding_for_package_error",
    "findings_for_package",
    "parse_fail_on",
]


class Status(StrEnum):
    REGISTERED = "registered"
    EXPIRING = "expiring"
    REDEMPTION = "redemption"
    PENDING_DELETE = "pending_delete"
    AVAILABLE = "available"
    REREGISTERED = "reregistered"
    FOR_SALE = "for_sale"
    MAIL_HOST_LAPSED = "mail_host_lapsed"
    UNKNOWN = "unknown"
    FREE_PROVIDER = "free_provider"
    """A well-known mail provider: its domain does not lapse, so it is not checked."""
    UNPARSEABLE = "unparseable"
    """Obfuscated, malformed or not an address: reported as written, never guessed."""
    NO_ADDRESS = "no_address"
    NOT_FOUND = "not_found"
    """The index has no such package (or version): a typo, a private or a removed package."""
    METADATA_ERROR = "metadata_error"
    """The index could not be read (offline, HTTP error): nothing was checked."""

    @property
    def dangerous(self) -> bool:
        return self in DANGEROUS_STATUSES

    @property
    def severity(self) -> int:
        """0 dangerous, 1 could not tell, 2 unparseable, 3 nothing wrong: for sorting reports."""
        if self.dangerous:
            return 0
        if self.unchecked:
            return 1
        return 2 if self is Status.UNPARSEABLE else 3

    @property
    def unchecked(self) -> bool:
        """Whether this says "could not tell" rather than something about a domain."""
        return self in (Status.UNKNOWN, Status.NOT_FOUND, Status.METADATA_ERROR)


DANGEROUS_STATUSES = frozenset(Status(v.value) for v in DANGEROUS)
_ALIASES: dict[str, frozenset[Status]] = {
    "dangerous": DANGEROUS_STATUSES,
    "none": frozenset(),
    "all": frozenset(Status),
}


def parse_fail_on(text: str) -> frozenset[Status]:
    """``--fail-on``: a comma list of statuses and the aliases dangerous, none, all."""
    chosen: set[Status] = set()
    for word in (w.strip().lower().replace("-", "_") for w in text.split(",")):
        if not word:
            continue
        if word in _ALIASES:
            chosen |= _ALIASES[word]
            continue
        try:
            chosen.add(Status(word))
        except ValueError:
            known = ", ".join([*_ALIASES, *Status])
            raise ValueError(f"--fail-on: unknown status {word!r}; known: {known}") from None
    return frozenset(chosen)


@dataclass(frozen=True)
class Finding:
    """One package and one address (or one package-level problem)."""

    package: str
    version: str | None
    status: Status
    reason: str
    address: str | None = None
    """Canonical address; the text as written for ``unparseable``; ``None`` when none."""
    domain: str | None = None
    fields: tuple[str, ...] = ()
    """Metadata fields the address appeared in, e.g. ``("author_email",)``."""
    free_provider: bool = False
    decided_by: str | None = None
    published_at: datetime | None = None
    origins: tuple[Origin, ...] = ()
    observations: tuple[Observation, ...] = ()
    ecosystem: Ecosystem = "pypi"
    first_published: FirstPublished | None = None
    """The earliest release that carried this address (the ctx-pattern comparison), if known."""

    @property
    def dangerous(self) -> bool:
        return self.status.dangerous

    @property
    def qualified_name(self) -> str:
        """``npm:left-pad`` for npm, the bare name for PyPI (as the command line takes them)."""
        return self.package if self.ecosystem == "pypi" else f"{self.ecosystem}:{self.package}"


@dataclass(frozen=True)
class ScanReport:
    """Everything a scan found, and what the formats need to summarise it."""

    findings: tuple[Finding, ...]
    notes: tuple[str, ...] = ()
    packages: int = 0
    domains_asked: int = 0
    domains_cached: int = 0
    unreachable_domains: tuple[str, ...] = ()
    """Domains for which no status source answered at all (offline?)."""

    def failing(self, statuses: frozenset[Status]) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.status in statuses)

    def counts(self) -> Counter[Status]:
        return Counter(f.status for f in self.findings)

    @property
    def offline_message(self) -> str | None:
        """The one line that says "nothing could be checked, probably offline"."""
        count = len(self.unreachable_domains)
        if not count:
            return None
        noun = "domain" if count == 1 else "domains"
        return f"{count} {noun} could not be checked: no status source answered (offline?)"

    @property
    def index_message(self) -> str | None:
        """The line that says how many packages the index could not give, and why."""
        failed = [f for f in self.findings if f.status is Status.METADATA_ERROR]
        if not failed:
            return None
        noun = "package" if len(failed) == 1 else "packages"
        kinds = {f.ecosystem for f in failed}
        source = {"pypi": "the index", "npm": "the npm registry"}.get(
            next(iter(kinds)) if len(kinds) == 1 else "", "the index or the npm registry"
        )
        return f"{len(failed)} {noun} could not be read from {source} ({failed[0].reason})"


def _key(found: Extracted) -> str:
    return found.address.lower() if found.parsed is not None else found.text


def findings_for_package(
    package: PackageMetadata,
    extracted: Sequence[Extracted],
    observations: Mapping[str, tuple[Observation, ...]],
    *,
    now: datetime,
) -> list[Finding]:
    """One finding per distinct address of ``package`` (fields merged), or ``no_address``."""
    if not extracted:
        where = (
            "Author-email, Maintainer-email, Author or Maintainer"
            if package.ecosystem == "pypi"
            else "maintainers, _npmUser, author or contributors"
        )
        return [
            Finding(
                package.name,
                package.version,
                Status.NO_ADDRESS,
                f"no address in {where}",
                origins=package.origins,
                ecosystem=package.ecosystem,
            )
        ]
    grouped: dict[str, list[Extracted]] = {}
    for item in extracted:
        grouped.setdefault(_key(item), []).append(item)
    return [
        _finding(package, items[0], tuple(dict.fromkeys(i.field for i in items)), observations, now)
        for items in grouped.values()
    ]


def _finding(
    package: PackageMetadata,
    item: Extracted,
    fields: tuple[str, ...],
    observations: Mapping[str, tuple[Observation, ...]],
    now: datetime,
) -> Finding:
    parsed = item.parsed
    domain = parsed.domain if parsed else None
    seen: tuple[Observation, ...] = ()
    decided_by = None
    first = package.first_for(item.address) if parsed else None
    trusted_at = package.published_at
    if first is not None and (trusted_at is None or first.published_at < trusted_at):
        trusted_at = first.published_at
    if parsed is None:
        status, reason = Status.UNPARSEABLE, item.problem or "not an email address"
    elif parsed.free_provider:
        status = Status.FREE_PROVIDER
        reason = f"{parsed.domain} is a well-known mail provider; not checked"
    else:
        seen = observations.get(parsed.domain, ())
        decision = decide(
            parsed.domain,
            seen,
            now=now,
            verified_at=trusted_at,
            mail_hosts=_mail_hosts(parsed.domain, seen, observations, now),
        )
        status, reason = Status(decision.verdict.value), decision.reason
        decided_by = decision.decided_by
        if status is Status.REREGISTERED and decision.registered_at and trusted_at:
            reason = _reregistered(
                package, first, decision.registered_at, trusted_at, decision.decided_by
            )
    return Finding(
        package.name,
        package.version,
        status,
        reason,
        address=item.address,
        domain=domain,
        fields=fields,
        free_provider=bool(parsed and parsed.free_provider),
        decided_by=decided_by,
        published_at=package.published_at,
        origins=package.origins,
        observations=seen,
        ecosystem=package.ecosystem,
        first_published=first,
    )


def _mail_hosts(
    domain: str,
    seen: tuple[Observation, ...],
    observations: Mapping[str, tuple[Observation, ...]],
    now: datetime,
) -> tuple[MailHostCheck, ...]:
    """The domain's mail hosts on other registrable domains that were observed."""
    return tuple(
        MailHostCheck(host, mail_domain, decide(mail_domain, observations[mail_domain], now=now))
        for host, mail_domain in mail_host_domains(domain, seen)
        if mail_domain in observations
    )


def _reregistered(
    package: PackageMetadata,
    first: FirstPublished | None,
    registered: datetime,
    trusted_at: datetime,
    source: str | None,
) -> str:
    """Name the release the comparison was made with; say so when it is not the scanned one.

    The reason starts with the source that gave the registration date (``RDAP:``, or
    ``WHOIS:`` for a TLD without RDAP), as :func:`lapsewatch.verdict.decide`'s do."""
    label = source_label(source) or "registry"
    if first is None or first.version == package.version:
        return (
            f"{label}: registered {registered.date()}, after {package.name} "
            f"{package.version} was published with this address on {trusted_at.date()}"
        )
    newer = (
        f"; the scanned {package.version} ({package.published_at.date()}) came out after the "
        "re-registration"
        if package.published_at and package.published_at > registered
        else ""
    )
    return (
        f"{label}: registered {registered.date()}, after {package.name} {first.version} first "
        f"published this address on {first.published_at.date()}{newer}: the newest release "
        "can be the new owner's own (the ctx pattern)"
    )


def finding_for_package_error(
    name: str,
    version: str | None,
    status: Status,
    reason: str,
    origins: Iterable[Origin],
    ecosystem: Ecosystem = "pypi",
) -> Finding:
    """A package whose metadata could not be had: ``not_found`` or ``metadata_error``."""
    return Finding(name, version, status, reason, origins=tuple(origins), ecosystem=ecosystem)
