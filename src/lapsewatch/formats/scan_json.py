"""``lapsewatch scan --format json``: a list of findings, one per package and address.

The first six keys are the contract (``package``, ``version``, ``address``,
``domain``, ``verdict``, ``reason``); the others are extra detail that may grow:
``ecosystem`` (``pypi`` or ``npm``) and ``first_published`` (the earliest release
that carried the address, which the re-registration check compares with) among them.
Notes and warnings go to stderr, so stdout is always exactly this list.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from lapsewatch.dates import isoformat
from lapsewatch.scan.findings import Finding, ScanReport

__all__ = ["evidence", "finding_dict", "first_published", "render", "report_list"]


def evidence(finding: Finding) -> list[dict[str, Any]]:
    """One line per source: what it answered, without the raw document."""
    return [
        {"source": o.source, "outcome": o.outcome.value, "detail": o.detail}
        for o in finding.observations
    ]


def first_published(finding: Finding) -> dict[str, Any] | None:
    """The release that first published the address, when known."""
    first = finding.first_published
    if first is None:
        return None
    return {"version": first.version, "published_at": isoformat(first.published_at)}


def finding_dict(finding: Finding) -> dict[str, Any]:
    return {
        "package": finding.package,
        "version": finding.version,
        "address": finding.address,
        "domain": finding.domain,
        "verdict": finding.status.value,
        "reason": finding.reason,
        "ecosystem": finding.ecosystem,
        "dangerous": finding.dangerous,
        "fields": list(finding.fields),
        "free_provider": finding.free_provider,
        "decided_by": finding.decided_by,
        "published_at": isoformat(finding.published_at),
        "first_published": first_published(finding),
        "origins": [str(origin) for origin in finding.origins],
        "evidence": evidence(finding),
    }


def report_list(report: ScanReport) -> list[dict[str, Any]]:
    return [finding_dict(f) for f in report.findings]


def render(report: ScanReport, console: Console) -> str:
    return json.dumps(report_list(report), indent=2, ensure_ascii=False) + "\n"
