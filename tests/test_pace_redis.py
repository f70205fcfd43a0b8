"""Per-server limits shared through the real Redis: N processes behave as one client."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from lapsewatch.pace import Learned, Pin, Policy, ServerPacer
from lapsewatch.pace.policy import ServerBucket
from lapsewatch.pace.shared import RedisBuckets
from tests.services import REDIS_URL


def _prefix() -> str:
    return f"lapsewatch-test:{uuid.uuid4().hex[:8]}:"


async def _forget(buckets: RedisBuckets) -> None:
    keys = [key async for key in buckets.client.scan_iter(match=buckets.prefix + "*")]
    if keys:
        await buckets.client.delete(*keys)


@pytest.mark.redis
@pytest.mark.usefixtures("require_redis")
def test_two_processes_share_one_bucket_per_server() -> None:
    policy = Policy(burst=0.0)
    prefix = _prefix()
    start = Learned(2.0)

    async def slot(client: RedisBuckets, server: str) -> tuple[float, float, float]:
        """(asked, wait, answered): the wait counts from when Redis took the call,
        somewhere between asked and answered."""
        asked = time.monotonic()
        wait = (await client.reserve(server, start, None, 60))[1]
        return asked, wait, time.monotonic()

    async def scenario() -> tuple[list[tuple[float, float, float]], Learned, float]:
        # Two clients, as two worker processes would have.
        one = RedisBuckets(REDIS_URL, policy, prefix=prefix)
        two = RedisBuckets(REDIS_URL, policy, prefix=prefix)
        try:
            slots = [
                await slot(one, "big:443"),
                await slot(two, "big:443"),
                await slot(one, "big:443"),
                await slot(two, "small:443"),  # its own bucket
            ]
            await one.refused("big:443", start, None, 30.0)  # one is told to back off...
            reserved, paused = await two.reserve("big:443", start, None, 1.0)  # ...two too
            assert not reserved
            learned = (await two.learned(["big:443"]))["big:443"]
            return slots, learned, paused
        finally:
            await _forget(one)
            await one.aclose()
            await two.aclose()

    slots, learned, paused = asyncio.run(scenario())
    # The first slot on each server is now; at 2/s the next ones on "big" come 0.5 s
    # apart, whichever process reserves them. Compared as slots, not as waits: on a
    # loaded machine the second call may start 60 ms after the first.
    assert slots[0][1] == pytest.approx(0.0, abs=0.05)
    assert slots[3][1] == pytest.approx(0.0, abs=0.05)  # "small" has its own bucket
    first_asked, _, first_answered = slots[0]
    for index in (1, 2):
        asked, wait, answered = slots[index]
        earliest, latest = asked + wait - first_answered, answered + wait - first_asked
        assert earliest - 0.02 <= 0.5 * index <= latest + 0.02, slots
    assert learned == Learned(1.4, 2.0)  # cut for both
    assert paused > 25


Rates = list[tuple[float, float | None]]
OLD = 10.0
"""Seconds before the refusal that an ``old`` step's request went out (before the last cut)."""


def _in_python(policy: Policy, steps: list[str]) -> Rates:
    """``(rate, ceiling)`` after each step, one step a second, in this process."""
    local = ServerBucket(Learned(10.0), policy)
    expected = []
    for index, step in enumerate(steps):
        now = float(index)
        if step == "raise":
            local.raise_(now)
        elif step == "cut":
            local.cut(now)
        else:
            local.refused(now, None, sent=now - OLD if step == "old" else now)
        expected.append((local.rate, local.ceiling))
    return expected


def _in_redis(policy: Policy, steps: list[str]) -> Rates:
    """The same steps through the Lua script (real Redis, its own clock)."""

    async def shared() -> Rates:
        buckets = RedisBuckets(REDIS_URL, policy, prefix=_prefix())
        rates: Rates = []
        try:
            for step in steps:
                if step == "raise":
                    await buckets.raise_("s:1", Learned(10.0), None)
                elif step == "cut":
                    await buckets.cut("s:1", Learned(10.0), None)
                else:
                    age = OLD if step == "old" else 0.0
                    await buckets.refused("s:1", Learned(10.0), None, None, age)
                learned = (await buckets.learned(["s:1"]))["s:1"]
                rates.append((learned.rate, learned.ceiling))
        finally:
            await _forget(buckets)
            await buckets.aclose()
        return rates

    return asyncio.run(shared())


def _assert_same(got: Rates, expected: Rates) -> None:
    assert [r for r, _ in got] == pytest.approx([r for r, _ in expected], rel=1e-9)
    assert [c is None for _, c in got] == [c is None for _, c in expected]
    ceilings = [(g, e) for (_, g), (_, e) in zip(got, expected, strict=True) if e is not None]
    assert [g for g, _ in ceilings] == pytest.approx([e for _, e in ceilings], rel=1e-9)


@pytest.mark.redis
@pytest.mark.usefixtures("require_redis")
def test_the_lua_rule_is_the_python_rule() -> None:
    policy = Policy(epoch=0.0, cooldown=0.0, maximum=50.0)
    # A cut (slow answers) sets no ceiling, a refusal does: both rules agree on both.
    steps = ["raise", "raise", "raise", "cut", "raise", "raise", "refused", "raise", "cut"]
    steps += ["raise"] * 12
    expected = _in_python(policy, steps)
    _assert_same(_in_redis(policy, steps), expected)
    assert expected[3][1] is None  # the cut set no ceiling
    assert expected[6][1] is not None  # the refusal did


@pytest.mark.redis
@pytest.mark.usefixtures("require_redis")
def test_the_lua_rule_is_the_python_rule_near_the_ceiling() -> None:
    """The gentle cut near the ceiling and a refusal of a request sent before the last
    cut: Lua and Python agree step for step."""
    policy = Policy(epoch=0.0, cooldown=0.0, maximum=50.0)
    steps = ["raise"] * 3 + ["refused"] + ["raise"] * 20 + ["refused", "old", "raise", "raise"]
    expected = _in_python(policy, steps)
    _assert_same(_in_redis(policy, steps), expected)
    probed = expected[23][0]
    first_ceiling = expected[3][1]
    assert first_ceiling is not None
    assert probed > 0.9 * first_ceiling  # recovered, then probing past 90%
    near_cut, _ = expected[24]
    assert near_cut == pytest.approx(probed * policy.near_decrease)
    assert expected[25] == expected[24]  # the old request's refusal changed nothing


@pytest.mark.redis
@pytest.mark.usefixtures("require_redis")
def test_a_pin_holds_in_redis_too() -> None:
    policy = Policy(epoch=0.0, cooldown=0.0, burst=0.0)

    async def scenario() -> list[float]:
        buckets = RedisBuckets(REDIS_URL, policy, prefix=_prefix())
        pin = Pin(rate=3.0)
        try:
            await buckets.raise_("p:43", Learned(10.0), pin)
            await buckets.refused("p:43", Learned(10.0), pin, None)
            one = await buckets.reserve("p:43", Learned(10.0), pin, 60)
            two = await buckets.reserve("p:43", Learned(10.0), pin, 60)
            return [one[1], two[1]]
        finally:
            await _forget(buckets)
            await buckets.aclose()

    first, second = asyncio.run(scenario())
    assert second - first == pytest.approx(1 / 3, abs=0.05)  # 3/s, neither raised nor cut


def test_without_redis_a_process_paces_alone() -> None:
    policy = Policy()
    # Nothing listens on port 1: the first reservation fails over to this process's buckets.
    pacer = ServerPacer(
        RedisBuckets("redis://127.0.0.1:1/0", policy), policy=policy, known={"a:1": Learned(7.0)}
    )

    async def scenario() -> dict[str, tuple[str, Learned]]:
        try:
            await pacer.acquire("a:1", "rdap")
            pacer.refused("a:1", None)
            return await pacer.learned()
        finally:
            await pacer.aclose()

    learned = asyncio.run(scenario())
    assert learned["a:1"][1].rate == pytest.approx(4.9)


@pytest.mark.redis
@pytest.mark.usefixtures("require_redis")
def test_a_refusal_right_after_a_cut_sets_the_ceiling_in_redis_too() -> None:
    policy = Policy(cooldown=60.0)

    async def shared() -> Learned:
        buckets = RedisBuckets(REDIS_URL, policy, prefix=_prefix())
        try:
            await buckets.cut("s:1", Learned(100.0), None)  # slow answers: no ceiling
            await buckets.refused("s:1", Learned(100.0), None, None)  # within the cooldown
            return (await buckets.learned(["s:1"]))["s:1"]
        finally:
            await _forget(buckets)
            await buckets.aclose()

    learned = asyncio.run(shared())
    assert learned.rate == pytest.approx(70.0)
    assert learned.ceiling == pytest.approx(100.0)
