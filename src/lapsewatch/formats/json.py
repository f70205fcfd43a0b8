"""JSON output: the stable machine-readable contract of each command."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lapsewatch.dates import isoformat

if TYPE_CHECKING:  # the commands that only dump JSON need not import every source
    from lapsewatch.lookup import DomainReport

__all__ = ["domain_report", "dumps"]


def domain_report(report: DomainReport) -> dict[str, Any]:
    """Keys: input, domain, verdict, reason, free_provider, observations (+ details);
    ``mail_hosts``: the mail hosts on other registrable domains that were checked, each
    with its domain's verdict and reason."""
    decision = report.decision
    return {
        "input": report.input,
        "domain": report.parsed.domain,
        "host": report.parsed.host,
        "verdict": decision.verdict.value,
        "dangerous": decision.verdict.dangerous,
        "reason": decision.reason,
        "decided_by": decision.decided_by,
        "free_provider": report.parsed.free_provider,
        "registered_at": isoformat(decision.registered_at),
        "expires_at": isoformat(decision.expires_at),
        "mail_hosts": [
            {
                "host": m.host,
                "domain": m.domain,
                "verdict": m.decision.verdict.value,
                "dangerous": m.decision.verdict.dangerous,
                "firm": m.decision.firm,
                "reason": m.decision.reason,
                "decided_by": m.decision.decided_by,
            }
            for m in decision.mail_hosts
        ],
        "observations": [o.to_dict() for o in report.observations],
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
