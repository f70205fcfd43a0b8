"""Kill the checker, or a Celery worker, mid-cycle: the end state is the same as
that of an uninterrupted run, with no duplicate and no missing event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from lapsewatch.store import Domain, make_engine, make_sessionmaker, upgrade
from lapsewatch.world import World, demo_scenario
from tests.cli_support import lapsewatch, process_environment
from tests.cycle_support import EXPECTED_UNVERIFIED, NOW, seed, state
from tests.services import REDIS_URL


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # A hanging server outlasts the runs' 1.5 s timeout; an answer under load does not.
    with World(demo_scenario(now=NOW), hang_seconds=4.0) as running:
        yield running


@pytest.fixture
def slow_world() -> Iterator[World]:
    """The same world, each answer 0.4 s late: a worker asking it (with a 3 s timeout)
    needs many seconds for the cycle, so it is still mid-cycle when the test kills it,
    however late a loaded machine (pytest -n) lets the test look. Its answers are
    ``world``'s, and a hanging server still outlasts the timeout."""
    with World(demo_scenario(now=NOW), hang_seconds=10.0, latency=0.4) as running:
        yield running


def settings(world: World, database_url: str, **extra: str) -> dict[str, str]:
    """The ``LAPSEWATCH_*`` variables of a run against ``world``."""
    return {
        **world.env(),
        "LAPSEWATCH_DATABASE_URL": database_url,
        "LAPSEWATCH_TIMEOUT": "1.5",  # 0.5 s: an answer from a loaded CI machine timed out
        "LAPSEWATCH_ATTEMPTS": "1",
        "LAPSEWATCH_MAX_RETRY_AFTER": "0",
        **extra,
    }


def environment(world: World, database_url: str, **extra: str) -> dict[str, str]:
    """A process's whole environment: this one's, with ``settings`` for ``LAPSEWATCH_*``."""
    return process_environment(settings(world, database_url, **extra))


def checked(engine: Engine) -> int:
    with make_sessionmaker(engine)() as session:
        return (
            session.scalar(
                select(func.count()).select_from(Domain).where(Domain.last_checked_at.is_not(None))
            )
            or 0
        )


def total_domains(engine: Engine) -> int:
    with make_sessionmaker(engine)() as session:
        return session.scalar(select(func.count()).select_from(Domain)) or 0


def assert_same(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Compare part by part, so a failure names what differs."""
    for part in expected:
        assert actual[part] == expected[part], part


def fresh(database_url: str) -> Engine:
    engine = make_engine(database_url)
    upgrade(engine)
    seed(engine)
    return engine


def reference_state(world: World, tmp_path: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path / 'reference.db'}"
    engine = fresh(url)
    # The uninterrupted run needs no process of its own (tests/cli_support.py).
    run = lapsewatch("check", "--format", "json", env=settings(world, url))
    assert run.returncode == 1, run.stderr  # 1: it unverified addresses
    result = state(engine)
    engine.dispose()
    return result


def test_sigkill_mid_cycle(world: World, database_url: str, tmp_path: Path) -> None:
    expected = reference_state(world, tmp_path)
    engine = fresh(database_url)
    slow = {"LAPSEWATCH_CONCURRENCY": "1", "LAPSEWATCH_RATE_RDAP": "3", "LAPSEWATCH_RATE_DNS": "3"}
    env = environment(world, database_url, **slow)
    process = subprocess.Popen(
        [sys.executable, "-m", "lapsewatch", "check", "--format", "json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while checked(engine) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the cycle ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    interrupted = checked(engine)
    assert 0 < interrupted < total_domains(engine)

    rerun = subprocess.run(
        [sys.executable, "-m", "lapsewatch", "check", "--format", "json"],
        env=environment(world, database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert rerun.returncode in (0, 1), rerun.stderr
    assert_same(state(engine), expected)
    unverified_events = [e for e in expected["events"] if e[0] == "email.unverified"]
    assert len(unverified_events) == len(EXPECTED_UNVERIFIED)
    engine.dispose()


@pytest.mark.redis
def test_celery_worker_killed_mid_task(
    world: World, slow_world: World, database_url: str, tmp_path: Path, require_redis: None
) -> None:
    import redis

    expected = reference_state(world, tmp_path)
    engine = fresh(database_url)
    # A broker database of its own per backend: the runs may be at once (pytest -n), and
    # each flushes its database first.
    broker = REDIS_URL.rsplit("/", 1)[0] + ("/9" if database_url.startswith("sqlite") else "/10")
    redis.Redis.from_url(broker).flushdb()
    extra = {
        "LAPSEWATCH_BROKER_URL": broker,
        "LAPSEWATCH_CHUNK_SIZE": "2",
        "LAPSEWATCH_LEASE_SECONDS": "3",
        "LAPSEWATCH_VISIBILITY_TIMEOUT": "6",
        "LAPSEWATCH_CONCURRENCY": "1",
        "LAPSEWATCH_RATE_RDAP": "2",
    }
    env = environment(world, database_url, **extra)

    def start_worker(name: str, asks: World = world, **more: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lapsewatch",
                "worker",
                "--concurrency",
                "1",
                "--hostname",
                f"{name}@%h",
            ],
            env=environment(asks, database_url, **extra, **more),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{name}.log").open("wb"),
            start_new_session=True,  # its own process group, killed whole below
        )

    first = start_worker("first", asks=slow_world, LAPSEWATCH_TIMEOUT="3")  # killed below
    second: subprocess.Popen[bytes] | None = None
    third: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(2)  # let the first worker connect before there is work
        queued = subprocess.run(
            [sys.executable, "-m", "lapsewatch", "check", "--distributed", "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert queued.returncode == 0, queued.stderr
        deadline = time.monotonic() + 60
        while checked(engine) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checked(engine) >= 1, (tmp_path / "first.log").read_text()
        os.killpg(first.pid, signal.SIGKILL)  # parent and pool child, mid-task
        first.wait(timeout=10)
        assert checked(engine) < total_domains(engine)

        second = start_worker("second")
        third = start_worker("third")
        deadline = time.monotonic() + 90
        while checked(engine) < total_domains(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # let any duplicate delivery show itself
        for process in (second, third):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (second, third):
            process.wait(timeout=20)
    finally:
        for leftover in (first, second, third):
            if leftover is not None and leftover.poll() is None:
                os.killpg(leftover.pid, signal.SIGKILL)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert checked(engine) == total_domains(engine), logs[-3000:]
    assert_same(state(engine), expected)
    engine.dispose()
