"""The confirmation rule: a dangerous verdict on thin evidence waits for a second check.

Pure, like :mod:`lapsewatch.verdict`, which says when a verdict is thin
(``Decision.doubt``); this module says what happens to it: never unverify on doubt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from lapsewatch.verdict import Decision, Verdict

__all__ = ["Pending", "Record", "Settlement", "settle"]


@dataclass(frozen=True)
class Pending:
    """A dangerous verdict on thin evidence, waiting since ``since`` for its confirming check."""

    verdict: Verdict
    since: datetime


Record = Literal["pending", "confirmed", "contradicted", "superseded"]


@dataclass(frozen=True)
class Settlement:
    """The decision to act on, and what to record about the pending confirmation."""

    decision: Decision
    record: Record | None = None
    """``pending``: a new pending confirmation; ``confirmed``/``contradicted``/
    ``superseded``: the open one is resolved that way; ``None``: nothing changes."""


def settle(
    decision: Decision, pending: Pending | None, *, now: datetime, confirm_after: timedelta
) -> Settlement:
    """Apply the confirmation rule to a fresh ``decision``, given the open ``pending``.

    Never unverify on doubt: a dangerous verdict on thin evidence becomes
    ``unknown`` with a confirming check ``confirm_after`` later, and acts only
    when that check (at or after the due time) says the same verdict. A domain
    whose answers flip (pending danger, then a safe answer) ends ``unknown`` and
    is retried with backoff. Errors (``unknown``) leave the pending one open.
    """
    if decision.settled:
        return Settlement(decision)
    done = replace(decision, settled=True)
    verdict = decision.verdict
    if verdict.dangerous and decision.doubt is None:
        return Settlement(done, "superseded" if pending else None)
    if verdict.dangerous:
        if pending is not None and pending.verdict is verdict:
            if now >= pending.since + confirm_after:
                reason = (
                    f"{decision.reason} (confirmed: the same answer since "
                    f"{pending.since.isoformat(timespec='minutes')})"
                )
                return Settlement(replace(done, doubt=None, reason=reason), "confirmed")
            return Settlement(_waiting(done, pending.since + confirm_after))
        return Settlement(_waiting(done, now + confirm_after), "pending")
    if verdict is Verdict.UNKNOWN or pending is None:
        return Settlement(done)
    reason = (
        f"answers flip: {pending.verdict.value} since "
        f"{pending.since.isoformat(timespec='minutes')}, now {verdict.value} "
        f"({decision.reason}); retried, never acted on"
    )
    flipped = replace(done, verdict=Verdict.UNKNOWN, reason=reason, decided_by=None)
    return Settlement(flipped, "contradicted")


def _waiting(decision: Decision, confirm_at: datetime) -> Decision:
    reason = (
        f"{decision.verdict.value} on thin evidence ({decision.doubt}): {decision.reason}; "
        f"a confirming check at {confirm_at.isoformat(timespec='minutes')} decides"
    )
    return replace(
        decision,
        verdict=Verdict.UNKNOWN,
        reason=reason,
        decided_by=None,
        pending=decision.verdict,
        confirm_at=confirm_at,
    )
