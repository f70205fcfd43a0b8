"""RDAP date forms seen in the wild."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapsewatch.dates import isoformat, parse_datetime

MIDNIGHT = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "2020-01-01T00:00:00Z",
        "2020-01-01T00:00:00.000Z",
        "2020-01-01T00:00:00.000000000Z",
        "2020-01-01T02:00:00+02:00",
        "2019-12-31T19:00:00-05:00",
        "2020-01-01T02:00:00+0200",
        "2020-01-01T00:00:00",
        "2020-01-01t00:00:00z",
        "2020-01-01 00:00:00Z",
        "2020-01-01",
        " 2020-01-01T00:00Z ",
    ],
)
def test_forms(text: str) -> None:
    assert parse_datetime(text) == MIDNIGHT


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2020-13-01", "2020-01-01T25:00:00Z", "1/2/2020"]
)
def test_garbage_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the input
        parse_datetime(text)


@given(st.datetimes(timezones=st.just(UTC)))
def test_round_trip(value: datetime) -> None:
    assert parse_datetime(isoformat(value) or "") == value.replace(microsecond=0)


@given(st.text(max_size=60))
def test_never_raises_anything_but_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_datetime(text)
