"""When a domain is next due. Pure: the clock comes in as an argument.

* every domain behind a verified address: every ``interval`` (30 days);
* near a known expiration date (7 days before to 45 days after): daily, and the
  regular check is pulled forward so that the window is not skipped;
* during the registry's auto-renew grace (the record says ``auto renew period``):
  daily. The registry has already pushed the expiry date a year ahead, so the
  window above would not see it, yet this is when registrars hold, auction and
  hand expired names to new owners (docs/window.md measures it);
* with no known expiration date (registries that publish none, like DENIC):
  every ``no_expiry_interval`` (14 days), so a 30-day redemption is not missed;
* after a failed check (``unknown``): 1 h, doubling, capped at 7 days;
* a dangerous verdict on thin evidence: its confirming check, ``confirm`` (60
  minutes) later (see :func:`lapsewatch.verdict.settle`).

A domain's mail hosts (MX) are read at most once per ``interval``
(:func:`reads_mail_hosts`); the checks between use the stored ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from lapsewatch.config import Settings
from lapsewatch.verdict import Verdict

__all__ = ["Policy", "next_check", "reads_mail_hosts"]


@dataclass(frozen=True)
class Policy:
    interval: timedelta = timedelta(days=30)
    near_before: timedelta = timedelta(days=7)
    near_after: timedelta = timedelta(days=45)
    near_interval: timedelta = timedelta(days=1)
    retry_first: timedelta = timedelta(hours=1)
    retry_cap: timedelta = timedelta(days=7)
    confirm: timedelta = timedelta(minutes=60)
    """How long a dangerous verdict on thin evidence waits for its confirming check."""
    no_expiry_interval: timedelta = timedelta(days=14)
    """The regular interval for a domain whose registry publishes no expiration date."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            interval=timedelta(days=settings.check_interval_days),
            near_before=timedelta(days=settings.near_expiry_before_days),
            near_after=timedelta(days=settings.near_expiry_after_days),
            confirm=timedelta(minutes=settings.confirm_minutes),
        )


def next_check(
    policy: Policy,
    *,
    now: datetime,
    verdict: Verdict,
    expires_at: datetime | None,
    failures: int,
    confirm_at: datetime | None = None,
    in_grace: bool = False,
) -> datetime:
    """The next check of a domain just checked at ``now``.

    ``failures`` counts consecutive failed checks including this one;
    ``confirm_at`` is when a pending confirmation's check is due, which wins;
    ``in_grace``: the registry's record shows the auto-renew grace.
    """
    if confirm_at is not None:
        return max(confirm_at, now)
    if verdict is Verdict.UNKNOWN:
        exponent = min(max(failures, 1) - 1, 32)  # the cap applies long before 2**32
        backoff: timedelta = min(policy.retry_first * (2**exponent), policy.retry_cap)
        return now + backoff
    if in_grace:
        return now + min(policy.near_interval, policy.interval)
    if expires_at is None:
        return now + min(policy.no_expiry_interval, policy.interval)
    regular = now + policy.interval
    window_start = expires_at - policy.near_before
    window_end = expires_at + policy.near_after
    if window_start <= now <= window_end:
        return now + min(policy.near_interval, policy.interval)
    if now < window_start < regular:
        return window_start
    return regular


def reads_mail_hosts(policy: Policy, read_at: datetime | None, now: datetime) -> bool:
    """Whether a check at ``now`` reads the domain's mail hosts (its MX): never read
    (``read_at`` is ``None``), or read ``interval`` ago or more. A check that does not
    uses the stored ones; the grace name-server rule reads them when it needs them."""
    return read_at is None or now - read_at >= policy.interval
