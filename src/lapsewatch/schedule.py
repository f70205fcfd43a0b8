"""When a domain is next due. Pure: the clock comes in as an argument.

* every domain behind a verified address: every ``interval`` (30 days);
* near a known expiration date (1 day before to 45 days after): daily, and the
  regular check is pulled forward so that the window is not skipped;
* during the registry's auto-renew grace (the record says ``auto renew period``):
  every ``grace_interval`` (3 days). The registry has already pushed the expiry date
  a year ahead, so the window above would not see it, yet this is when registrars
  hold, auction and hand expired names to new owners;
* with no known expiration date (registries that publish none, like DENIC):
  every ``no_expiry_interval`` (14 days), so a 30-day redemption is not missed;
* after a failed check (``unknown``): 1 h, doubling, capped at 7 days;
* a dangerous verdict on thin evidence: its confirming check, ``confirm`` (60
  minutes) later (see :func:`lapsewatch.confirm.settle`).

A domain's mail hosts (MX) are read at most once per ``mail_hosts_interval`` (90
days; :func:`reads_mail_hosts`); the checks between use the stored ones.

The cadences are what ``bench/window.py`` measured as enough (docs/window.md, change
9): 7 days of daily checks before an expiry, daily checks through the grace
and the MX every 30 days found no lapse sooner there, and cost more requests than
PyPI's own task sends.
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
    near_before: timedelta = timedelta(days=1)
    near_after: timedelta = timedelta(days=45)
    near_interval: timedelta = timedelta(days=1)
    retry_first: timedelta = timedelta(hours=1)
    retry_cap: timedelta = timedelta(days=7)
    confirm: timedelta = timedelta(minutes=60)
    """How long a dangerous verdict on thin evidence waits for its confirming check."""
    no_expiry_interval: timedelta = timedelta(days=14)
    """The regular interval for a domain whose registry publishes no expiration date."""
    grace_interval: timedelta = timedelta(days=3)
    """Between checks while the record shows the auto-renew grace."""
    mail_hosts_interval: timedelta = timedelta(days=90)
    """How often a domain's MX is read (:func:`reads_mail_hosts`)."""
    mail_host_keep: timedelta = timedelta(days=7)
    """Longest a mail-host domain's ``registered`` verdict stands in for asking again
    (``mail_hosts.kept_until``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            interval=timedelta(days=settings.check_interval_days),
            near_before=timedelta(days=settings.near_expiry_before_days),
            near_after=timedelta(days=settings.near_expiry_after_days),
            confirm=timedelta(minutes=settings.confirm_minutes),
            grace_interval=timedelta(days=settings.grace_interval_days),
            mail_hosts_interval=timedelta(days=settings.mail_hosts_interval_days),
            mail_host_keep=timedelta(days=settings.mail_host_keep_days),
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
    near = expires_at is not None and (
        expires_at - policy.near_before <= now <= expires_at + policy.near_after
    )
    if near:  # also in a grace whose record still shows the old expiry: the shorter
        return now + min(policy.near_interval, policy.interval)
    if in_grace:
        return now + min(policy.grace_interval, policy.interval)
    if expires_at is None:
        return now + min(policy.no_expiry_interval, policy.interval)
    regular = now + policy.interval
    window_start = expires_at - policy.near_before
    if now < window_start < regular:
        return window_start
    return regular


def reads_mail_hosts(policy: Policy, read_at: datetime | None, now: datetime) -> bool:
    """Whether a check at ``now`` reads the domain's mail hosts (its MX): never read
    (``read_at`` is ``None``), or read ``mail_hosts_interval`` ago or more. A check that
    does not uses the stored ones; the grace name-server rule reads them when it needs
    them."""
    return read_at is None or now - read_at >= policy.mail_hosts_interval
