"""Per-server pacing: the learning rule, Retry-After, pins, the store, the checker's use."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import Engine

from lapsewatch.config import ConfigError, Settings
from lapsewatch.pace import Learned, NotSent, Pin, Pins, Policy, ServerPacer, load_pins
from lapsewatch.pace.limited import Limited
from lapsewatch.pace.pacer import open_pacer, policy_from_settings, shared_pace, tracing
from lapsewatch.pace.policy import ServerBucket, cut_rate, raised_rate, start_for
from lapsewatch.pace.shared import LocalBuckets
from lapsewatch.pace.store import load_rates, save_rates
from lapsewatch.sources.interface import Observation, Outcome, Source


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the rule ---------------------------------------------------------------------------------


def test_slow_start_then_recovery_then_probing() -> None:
    policy = Policy()
    assert raised_rate(10, None, policy) == 15  # slow start: x1.5
    assert raised_rate(900, None, policy) == 1000  # never above the maximum
    # Below 90% of the refused rate: a quarter of the gap at a time.
    assert raised_rate(50, 100, policy) == pytest.approx(50 + 0.25 * 40)
    # Near it: 1% an epoch, probing.
    assert raised_rate(95, 100, policy) == pytest.approx(95.95)
    assert cut_rate(100, policy) == 70
    assert cut_rate(0.6, policy) == 0.5  # never below the minimum


def test_a_refusal_cuts_once_per_cooldown_and_remembers_the_ceiling() -> None:
    bucket = ServerBucket(Learned(100.0), Policy())
    bucket.refused(10.0, None)
    assert (bucket.rate, bucket.ceiling) == (70.0, 100.0)
    bucket.refused(10.5, None)  # the rest of the same volley
    assert bucket.rate == 70.0
    bucket.refused(11.2, None)
    assert bucket.rate == pytest.approx(49.0)
    bucket.raise_(11.5)  # within an epoch of the cut: no change
    assert bucket.rate == pytest.approx(49.0)
    bucket.raise_(12.3)
    assert bucket.rate == pytest.approx(49.0 + 0.25 * (0.9 * 70 - 49))


def test_a_refusal_of_a_request_sent_before_the_last_cut_cuts_no_more() -> None:
    """Refusals still coming in for requests sent at the old rate, after the cooldown
    (a backlog), once cut a server three times in two seconds."""
    bucket = ServerBucket(Learned(100.0), Policy())
    bucket.refused(10.0, None, sent=9.9)
    assert (bucket.rate, bucket.ceiling) == (70.0, 100.0)
    bucket.refused(11.5, None, sent=9.95)  # past the cooldown, but sent before the cut
    assert (bucket.rate, bucket.ceiling) == (70.0, 100.0)
    bucket.refused(11.6, None, sent=11.0)  # sent at the new rate: that one counts
    assert bucket.rate == pytest.approx(49.0)
    assert bucket.ceiling == 70.0


def test_a_refusal_near_the_ceiling_cuts_gently_a_lower_one_hard() -> None:
    policy = Policy()
    bucket = ServerBucket(Learned(98.0, ceiling=100.0), policy)
    bucket.refused(10.0, None)  # at 98% of the known ceiling: only the probe overshot
    assert bucket.rate == pytest.approx(88.2)
    assert bucket.ceiling == 98.0
    bucket.refused(11.5, None)  # refused again right there: the limit moved, cut hard
    assert bucket.rate == pytest.approx(88.2 * 0.7)
    far = ServerBucket(Learned(60.0, ceiling=100.0), policy)
    far.refused(10.0, None)
    assert far.rate == pytest.approx(42.0)


def test_buckets_space_requests_at_the_rate_and_honour_retry_after() -> None:
    bucket = ServerBucket(Learned(10.0), Policy(burst=0.0))
    waits = [bucket.reserve(0.0, horizon=10)[1] for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    bucket.refused(0.0, retry_after=3.0)
    assert bucket.reserve(0.0, horizon=2.0) == (False, 3.0)  # not yet
    assert bucket.reserve(0.0, horizon=10) == (True, 3.0)


def test_a_pinned_server_learns_nothing_but_still_pauses() -> None:
    bucket = ServerBucket(Learned(10.0), Policy(), pinned=4.0)
    bucket.refused(5.0, retry_after=2.0)
    bucket.raise_(100.0)
    assert bucket.rate == 4.0
    assert bucket.reserve(5.0, horizon=10) == (True, 2.0)


def test_a_source_cap_keeps_serving_when_waiters_give_up() -> None:
    """A request whose domain's deadline cancels it while it queues for the cap has
    taken no slot: the cap keeps serving those behind it at its rate."""
    from lapsewatch.pace.limited import _Cap

    cap = _Cap(20.0)
    served: list[float] = []

    async def one(start: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await cap.acquire()
                served.append(asyncio.get_running_loop().time() - start)

    async def scenario() -> None:
        start = asyncio.get_running_loop().time()
        for _ in range(6):  # 30 new requests every half second, each waiting 1 s at most
            for _ in range(30):
                asyncio.get_running_loop().create_task(one(start))
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)

    asyncio.run(scenario())
    late = [t for t in served if t >= 2.0]
    assert len(late) >= 15  # still about 20/s in the last second, not 0
    assert len(served) <= 20 * 4 + 3  # never above the rate (plus its burst)


# -- pins -------------------------------------------------------------------------------------


def test_pins_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "pace.json"
    path.write_text(
        json.dumps({"rdap.example:443": 40, "whois.nic.it": {"rate": 2}, "big:443": {"max": 9}})
    )
    pins = load_pins(str(path))
    assert pins.get("RDAP.example:443") == Pin(rate=40.0)
    assert pins.get("whois.nic.it:43") == Pin(rate=2.0)  # a bare host: every port
    assert pins.get("big:443") == Pin(maximum=9.0)
    assert pins.get("other:443") is None
    for bad in ('{"x": -1}', '{"x": {"speed": 1}}', "[1]", "not json"):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="LAPSEWATCH_PACE_FILE"):
            load_pins(str(path))
    with pytest.raises(ConfigError):
        load_pins(str(tmp_path / "missing.json"))


def test_settings_read_the_pace_variables() -> None:
    settings = Settings.from_env(
        {
            "LAPSEWATCH_PACE_START": "3",
            "LAPSEWATCH_PACE_MAX_WAIT": "4",
            "LAPSEWATCH_RATE_RDAP": "100",
            "LAPSEWATCH_PACE_REDIS": "off",
        }
    )
    assert (settings.pace, settings.pace_start, settings.pace_max_wait) == ("server", 3.0, 4.0)
    assert settings.source_caps == {"rdap": 100.0}  # only the caps that were set
    assert Settings.from_env({}).source_caps == {}
    assert shared_pace(settings).pace_redis == "off"
    assert shared_pace(Settings()).pace_redis == Settings().broker_url


# -- the pacer --------------------------------------------------------------------------------


def _pacer(clock: Clock, **kwargs: object) -> ServerPacer:
    policy = Policy(burst=0.0)
    return ServerPacer(
        LocalBuckets(policy, clock=clock),
        policy=policy,
        clock=clock,
        **kwargs,  # type: ignore[arg-type]
    )


def test_waiters_get_their_slots_in_arrival_order_and_a_gone_one_gets_none() -> None:
    """One reserver per server hands the slots out: in arrival order, many per turn of
    the event loop, none to a request whose domain gave up while it waited.

    Slots 20 ms apart (50/s): each waiter sleeps from when it resumes, so on a loaded
    machine (pytest -n) two slots 5 ms apart once woke in swapped order."""
    policy = Policy(burst=0.0)
    pacer = ServerPacer(LocalBuckets(policy), policy=policy, known={"a:1": Learned(50.0)})
    order: list[int] = []

    async def one(index: int) -> None:
        await pacer.acquire("a:1", "rdap")
        order.append(index)

    async def scenario() -> None:
        tasks = [asyncio.create_task(one(i)) for i in range(40)]
        await asyncio.sleep(0)
        tasks[5].cancel()  # gave up while queued
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    assert order == [i for i in range(40) if i != 5]
    assert pacer._queues["a:1"].dispatcher is None  # nobody left: the reserver is gone


def test_a_request_whose_observation_holds_a_slot_goes_first() -> None:
    """The next request of an observation that already holds a concurrency slot (the MX
    after the NS, a retry) is served before requests of domains not yet started."""
    policy = Policy(burst=0.0)
    pacer = ServerPacer(LocalBuckets(policy), policy=policy, known={"a:1": Learned(50.0)})
    order: list[str] = []

    async def new(index: int) -> None:
        await pacer.acquire("a:1", "dns")
        order.append(f"new{index}")

    async def holding() -> None:
        async with tracing() as trace:
            trace.slot = True
            await pacer.acquire("a:1", "dns")
            order.append("holding")

    async def scenario() -> None:
        first = [asyncio.create_task(new(i)) for i in range(40)]
        await asyncio.sleep(0)
        await asyncio.gather(asyncio.create_task(holding()), *first)

    asyncio.run(scenario())
    # 50/s and slots reserved 0.2 s ahead: the first 10 were handed out at once; then
    # it goes next, not behind the other 30 queued before it.
    assert order.index("holding") <= 11, order


def _real_pacer(rate: float) -> ServerPacer:
    """A pacer on the real clock: how long its queue is held is measured in its sleeps."""
    policy = Policy(burst=0.0)
    return ServerPacer(LocalBuckets(policy), policy=policy, known={"a:1": Learned(rate)})


def test_an_epoch_held_by_the_rate_raises_it_a_refusal_cuts() -> None:
    """A queue held by the server's rate for a whole epoch, with clean answers: the rate
    is the limit, so it grows (slow start: by half)."""
    pacer = _real_pacer(10.0)

    async def scenario() -> tuple[float, float, float]:
        buckets = pacer.buckets
        assert isinstance(buckets, LocalBuckets)
        waiting = [asyncio.create_task(pacer.acquire("a:1", "rdap")) for _ in range(30)]
        raised = 10.0
        for _ in range(40):  # 10/s: the queue outlasts the epoch
            await asyncio.sleep(0.05)
            raised = buckets.buckets["a:1"].rate
            if raised > 10.0:
                break
        for task in waiting:
            task.cancel()
        pacer.refused("a:1", 2.0)
        await asyncio.sleep(0)
        cut = buckets.buckets["a:1"].rate
        learned = await pacer.learned()
        await pacer.aclose()
        return raised, cut, learned["a:1"][1].rate

    raised, cut, saved = asyncio.run(scenario())
    assert raised == 15.0
    assert cut == pytest.approx(10.5)
    assert saved == cut


def test_a_brief_queue_does_not_raise_the_rate() -> None:
    """A few requests at once (a burst of new domains) queue for a moment, well under the
    rate over the epoch: the rate is not the limit and stays (raised on such bursts, a
    resolver's rate grew to twice its quota, and the next burst was refused)."""
    pacer = _real_pacer(10.0)

    async def scenario() -> float:
        buckets = pacer.buckets
        assert isinstance(buckets, LocalBuckets)
        await asyncio.gather(*(pacer.acquire("a:1", "rdap") for _ in range(5)))
        await asyncio.sleep(1.1)
        await pacer.acquire("a:1", "rdap")  # a new epoch: it was clean, but not busy
        rate = buckets.buckets["a:1"].rate
        await pacer.aclose()
        return rate

    assert asyncio.run(scenario()) == 10.0


def test_timeouts_cut_the_rate() -> None:
    clock = Clock()
    pacer = _pacer(clock, known={"a:1": Learned(100.0)})

    async def scenario() -> float:
        await pacer.acquire("a:1", "rdap")
        for _ in range(4):
            pacer.answered("a:1", 5.0, timed_out=True)
        for _ in range(10):
            pacer.answered("a:1", 0.05, timed_out=False)
        clock.now += 1.5
        await pacer.acquire("a:1", "rdap")
        buckets = pacer.buckets
        assert isinstance(buckets, LocalBuckets)
        return buckets.buckets["a:1"].rate

    assert asyncio.run(scenario()) == 70.0


def test_slow_answers_cut_the_rate_but_set_no_ceiling() -> None:
    """Only a refusal is the server's word on its quota; slow answers may be our own
    busy event loop, and a ceiling set from them held a server far below its quota."""
    bucket = ServerBucket(Learned(60.0), Policy())
    bucket.cut(10.0)
    assert bucket.rate == pytest.approx(42.0)
    assert bucket.ceiling is None
    bucket.raise_(11.5)
    assert bucket.rate == pytest.approx(63.0)  # still the slow start
    bucket.refused(13.0, None)
    assert bucket.ceiling == pytest.approx(63.0)


def test_a_new_server_starts_at_its_sources_rate() -> None:
    policy = policy_from_settings(Settings())
    assert (start_for(policy, "dns"), start_for(policy, "whois")) == (100.0, 2.0)
    assert start_for(policy, "rdap") == start_for(policy, "fastly") == 10.0
    every = policy_from_settings(Settings.from_env({"LAPSEWATCH_PACE_START": "7"}))
    assert start_for(every, "dns") == start_for(every, "rdap") == 7.0


def test_a_request_to_a_server_paused_too_long_is_not_sent() -> None:
    clock = Clock()
    pacer = _pacer(clock, known={"slow:1": Learned(1.0)}, max_wait=2.0)

    async def scenario() -> None:
        await pacer.acquire("slow:1", "rdap")
        pacer.refused("slow:1", 60.0)  # Retry-After: 60 s, more than a domain waits
        with pytest.raises(NotSent, match="pause of more than 2 s"):
            await pacer.acquire("slow:1", "rdap")

    asyncio.run(scenario())
    assert pacer.not_sent == 1


# -- through Limited: a timeout is not retried inline ----------------------------------------


class Hanging(Source):
    """A source that asks its server twice (as a retry would) and times out the first time."""

    name = "rdap"
    paces_requests: ClassVar[bool] = True

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent = 0

    async def observe(self, domain: str) -> Observation:
        assert self.pacer is not None
        for _ in range(3):
            try:
                await self.pacer.request("hang:443")
            except NotSent as exc:
                return Observation.error(self.name, domain, exc.reason)
            self.sent += 1
            self.clock.now += 5.0  # the whole request timeout went by
            self.pacer.timed_out("hang:443")
        return Observation.error(self.name, domain, "no answer")


class Flaky(Hanging):
    """Fails fast (a reset, a 503) and waits out a long backoff before each retry."""

    async def observe(self, domain: str) -> Observation:
        assert self.pacer is not None
        for _ in range(3):
            try:
                await self.pacer.request("flaky:443")
            except NotSent as exc:
                return Observation.error(self.name, domain, exc.reason)
            self.sent += 1
            self.clock.now += 6.0  # a backoff longer than the request timeout
        return Observation.error(self.name, domain, "connection reset")


def test_a_timed_out_server_is_not_retried_inline() -> None:
    clock = Clock()
    pacer = _pacer(clock, timeout=5.0)
    source = Hanging(clock)
    limited = Limited(source, concurrency=2, pacer=pacer)
    observation = asyncio.run(limited.observe("x.example"))
    assert source.sent == 1
    assert observation.outcome is Outcome.ERROR
    assert "not retried now" in observation.detail
    assert pacer._epochs["hang:443"].timeouts == 1  # one hang, counted once


def test_a_reserver_cancelled_before_it_ran_leaves_nobody_waiting() -> None:
    pacer = ServerPacer(LocalBuckets(Policy()), policy=Policy())

    async def scenario() -> BaseException | None:
        waiter = asyncio.create_task(pacer.acquire("a:443", "rdap"))
        await asyncio.sleep(0)  # queued, its reserver created but not yet run
        await pacer.aclose()
        outcome = (await asyncio.gather(waiter, return_exceptions=True))[0]
        await asyncio.wait_for(pacer.acquire("a:443", "rdap"), 2.0)  # a new reserver serves
        return outcome if isinstance(outcome, BaseException) else None

    assert isinstance(asyncio.run(scenario()), NotSent)


def test_a_refusal_right_after_a_cut_for_slowness_still_sets_the_ceiling() -> None:
    bucket = ServerBucket(Learned(100.0), Policy())
    bucket.cut(10.0)  # slow answers: no ceiling
    bucket.refused(10.5, None)  # within the cooldown: no second cut, but a ceiling
    assert bucket.rate == pytest.approx(70.0)
    assert bucket.ceiling == pytest.approx(100.0)


class Refused(Hanging):
    """Each observation sends one request; the server's 429 comes back when the test
    opens that domain's gate."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.gates: dict[str, asyncio.Event] = {}

    async def observe(self, domain: str) -> Observation:
        assert self.pacer is not None
        await self.pacer.request("busy:443")
        self.sent += 1
        await self.gates.setdefault(domain, asyncio.Event()).wait()
        self.pacer.refused(None, "busy:443")
        return Observation.error(self.name, domain, "429")


def test_a_refusal_names_when_its_request_went_out() -> None:
    """Limited passes the refused request's send time to the pacer: a 429 that comes
    back after a cut, to a request sent before it, cuts no more."""
    clock = Clock()
    pacer = _pacer(clock)
    source = Refused(clock)
    limited = Limited(source, concurrency=4, pacer=pacer)

    async def until_sent(count: int) -> None:
        for _ in range(100):
            if source.sent >= count:
                return
            await asyncio.sleep(0)
        raise AssertionError("not sent")

    async def scenario() -> tuple[float, float]:
        buckets = pacer.buckets
        assert isinstance(buckets, LocalBuckets)
        early = asyncio.create_task(limited.observe("early.example"))
        await until_sent(1)
        clock.now += 0.1
        late = asyncio.create_task(limited.observe("late.example"))
        await until_sent(2)
        source.gates["late.example"].set()  # refused at once: the cut
        await late
        await asyncio.sleep(0)
        cut = buckets.buckets["busy:443"].rate
        clock.now += 5.0  # past the cooldown, the early request's 429 comes back
        source.gates["early.example"].set()
        await early
        await asyncio.sleep(0)
        return cut, buckets.buckets["busy:443"].rate

    cut, after = asyncio.run(scenario())
    assert cut == pytest.approx(7.0)
    assert after == cut


def test_a_pause_between_attempts_is_not_a_timeout() -> None:
    clock = Clock()
    pacer = _pacer(clock, timeout=5.0)
    source = Flaky(clock)
    limited = Limited(source, concurrency=2, pacer=pacer)
    observation = asyncio.run(limited.observe("x.example"))
    assert source.sent == 3
    assert observation.detail == "connection reset"
    assert pacer.not_sent == 0


# -- the store --------------------------------------------------------------------------------


def test_learned_rates_are_kept_in_the_store(engine: Engine) -> None:
    at = datetime(2026, 11, 30, tzinfo=UTC)
    save_rates(engine, {"a:443": ("rdap", Learned(12.5, 20.0)), "b:53": ("dns", Learned(300))}, at)
    save_rates(engine, {"a:443": ("rdap", Learned(14.0, 20.0))}, at)
    assert load_rates(engine) == {"a:443": Learned(14.0, 20.0), "b:53": Learned(300.0)}


def test_a_cycle_starts_where_the_last_one_ended(engine: Engine, tmp_path: Path) -> None:
    save_rates(engine, {"known:443": ("rdap", Learned(42.0, 60.0))})
    pins = tmp_path / "pins.json"
    pins.write_text(json.dumps({"pinned:443": 3}))
    settings = Settings(pace_redis="off", pace_file=str(pins))

    async def cycle() -> dict[str, tuple[str, Learned]]:
        async with open_pacer(settings, engine) as pacer:
            assert pacer.pins.get("pinned:443") == Pin(rate=3.0)
            await pacer.acquire("known:443", "rdap")
            await pacer.acquire("new:443", "rdap")
            await pacer.acquire("pinned:443", "rdap")
            buckets = pacer.buckets
            assert isinstance(buckets, LocalBuckets)
            assert buckets.buckets["known:443"].rate == 42.0  # where the last cycle ended
            assert buckets.buckets["new:443"].rate == 10.0  # an RDAP server never seen
            assert buckets.buckets["pinned:443"].rate == 3.0
            pacer.refused("known:443", None)
            return await pacer.learned()

    learned = asyncio.run(cycle())
    assert "pinned:443" not in learned  # a pin is configuration, not something learned
    stored = load_rates(engine)
    assert stored["known:443"] == Learned(pytest.approx(29.4), 42.0)  # type: ignore[arg-type]
    assert stored["new:443"].rate == 10.0
    assert "pinned:443" not in stored


def test_pins_are_unused_without_a_file() -> None:
    assert len(Pins()) == 0
