"""The schedule, pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from lapsewatch.config import Settings
from lapsewatch.schedule import Policy, next_check
from lapsewatch.verdict import Verdict

NOW = datetime(2026, 11, 26, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = Policy()


def due(
    verdict: Verdict = Verdict.REGISTERED,
    expires: datetime | None = None,
    failures: int = 0,
    *,
    in_grace: bool = False,
) -> timedelta:
    at = next_check(
        POLICY, now=NOW, verdict=verdict, expires_at=expires, failures=failures, in_grace=in_grace
    )
    return at - NOW


def test_every_thirty_days() -> None:
    assert due(expires=NOW + 400 * DAY) == 30 * DAY
    assert due(expires=NOW + 200 * DAY) == 30 * DAY


def test_every_fourteen_days_without_an_expiration_date() -> None:
    """A registry that publishes no expiry (DENIC) still cannot hide a 30-day redemption."""
    assert due() == 14 * DAY
    assert due(Verdict.UNKNOWN, failures=1) == timedelta(hours=1)  # errors keep their backoff


def test_every_three_days_during_the_auto_renew_grace() -> None:
    """The registry pushed the expiry a year ahead; registrars act in these 45 days."""
    assert due(expires=NOW + 365 * DAY, in_grace=True) == 3 * DAY
    assert due(Verdict.UNKNOWN, expires=NOW + 365 * DAY, failures=3, in_grace=True) == 4 * (
        DAY / 24
    )


def test_daily_in_a_grace_whose_record_still_shows_the_old_expiry() -> None:
    """Inside the near window the daily check stands, grace or not: the shorter wins."""
    assert due(expires=NOW - 3 * DAY, in_grace=True) == DAY
    assert due(expires=NOW - 50 * DAY, in_grace=True) == 3 * DAY


def test_daily_near_expiry() -> None:
    assert due(expires=NOW + DAY / 2) == DAY
    assert due(expires=NOW - 40 * DAY) == DAY
    assert due(expires=NOW - 50 * DAY) == 30 * DAY


def test_regular_check_pulled_forward_to_the_window() -> None:
    """The day before the expiry, whatever the regular check would have skipped."""
    assert due(expires=NOW + 20 * DAY) == 19 * DAY
    assert due(expires=NOW + 5 * DAY) == 4 * DAY


def test_operators_set_the_cadences() -> None:
    """Each cadence comes from its own setting (README's table)."""
    settings = Settings.from_env(
        {
            "LAPSEWATCH_NEAR_EXPIRY_BEFORE_DAYS": "7",
            "LAPSEWATCH_GRACE_INTERVAL_DAYS": "1",
            "LAPSEWATCH_MAIL_HOSTS_INTERVAL_DAYS": "30",
            "LAPSEWATCH_MAIL_HOST_KEEP_DAYS": "1",
        }
    )
    policy = Policy.from_settings(settings)
    assert (policy.near_before, policy.grace_interval) == (7 * DAY, DAY)
    assert (policy.mail_hosts_interval, policy.mail_host_keep) == (30 * DAY, DAY)
    assert Policy.from_settings(Settings.from_env({})) == Policy()


def test_backoff_doubles_and_is_capped() -> None:
    hours = [due(Verdict.UNKNOWN, failures=n) / timedelta(hours=1) for n in range(1, 10)]
    assert hours[:5] == [1, 2, 4, 8, 16]
    assert max(hours) == 7 * 24


@given(
    st.sampled_from(list(Verdict)),
    st.none()
    | st.datetimes(
        timezones=st.just(UTC), min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)
    ),
    st.integers(min_value=0, max_value=10_000),
)
def test_always_in_the_future_and_within_the_interval(
    verdict: Verdict, expires: datetime | None, failures: int
) -> None:
    wait = due(verdict, expires, failures)
    assert timedelta(0) < wait <= 30 * DAY
