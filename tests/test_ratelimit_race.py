"""Reservations of one rate-limit key wait for each other on PostgreSQL, so racing
attempts cannot all reserve, all count the whole race, and all be refused."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from lapsewatch.accounts.ratelimit import RateLimiter


def test_a_second_reservation_of_a_key_waits_for_the_first(engine: Engine) -> None:
    waited: list[float] = []

    def second() -> None:
        with Session(engine) as session, session.begin():
            started = time.monotonic()
            RateLimiter.serialize(session, ["second-factor:k"])
            waited.append(time.monotonic() - started)

    with Session(engine) as first, first.begin():
        RateLimiter.serialize(first, ["second-factor:k", "second-factor:k"])
        racer = threading.Thread(target=second)
        racer.start()
        time.sleep(0.5)
        RateLimiter.serialize(first, ["other:key"])  # another key: no wait, no deadlock
    racer.join(10)
    assert waited
    if engine.dialect.name == "postgresql":
        assert waited[0] >= 0.4  # it waited for the first transaction to end
    else:
        assert waited[0] < 0.4  # SQLite: nothing to wait for here
