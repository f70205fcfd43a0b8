"""The distributed cycle of ``bench/cycle.py --workers N``, as docs/scaling.md deploys it:
``N`` Celery workers (``lapsewatch worker --pool solo``, Redis as the broker) fed by
``enqueue_due``, measured from outside: the bench database polled until nothing due is
left, ``/proc`` for the workers' CPU and memory, pg_stat_database for the writes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cycle_children import _child_env, run_child
from cycle_registry import log

BROKER_IDLE_SECONDS = 60.0
"""How long the broker may hold no task while due domains stay unchecked before the
distributed cycle is called finished with leftovers (a task failed; nothing re-sends it)."""


def _proc_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    [0] the state, [1] the parent, [11:15] utime, stime, cutime, cstime in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: with ``--pool solo`` the worker alone, but a prefork
    worker's pool children do the checking and must be counted too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its descendants, the reaped ones included (cutime, cstime)."""
    ticks = 0
    for each in _proc_tree(pid):
        fields = _proc_fields(each)
        if fields is not None:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree_peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of ``pid`` and its descendants, summed."""
    total = 0
    for each in _proc_tree(pid):
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("VmHWM:"))
    return total / 1024


class Workers:
    """``lapsewatch worker --pool solo`` processes, each in its own process group and
    logging to a file (a pipe nobody reads would block it). ``stop()`` always ends them."""

    def __init__(self, count: int, env: dict[str, str], logs: Path) -> None:
        self.count = count
        self.env = env
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [logs / f"worker-{index}.log" for index in range(count)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for index, path in enumerate(self.logs):
            command = [sys.executable, "-m", "lapsewatch", "worker", "--pool", "solo"]
            # --concurrency 1: a solo worker still reserves `concurrency` tasks at once, and a
            # chunk reserved by a busy worker waits while another worker idles.
            command += ["--concurrency", "1", "--hostname", f"bench{index}@%h"]
            with path.open("wb") as output:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        env=_child_env(self.env),
                        start_new_session=True,
                    )
                )

    def check_alive(self) -> None:
        for process, path in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = path.read_text(errors="replace")[-2000:]
                raise SystemExit(f"worker {process.pid} exited ({process.returncode}):\n{tail}")

    def wait_ready(self, deadline: float) -> None:
        """Until every worker logged ``ready.``: its start-up is not the cycle's time."""
        while not all(" ready." in path.read_text(errors="replace") for path in self.logs):
            self.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("the workers were not ready within --timeout")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        return sum(_tree_cpu_seconds(process.pid) for process in self.processes)

    def peak_rss_mb(self) -> list[float]:
        return [_tree_peak_rss_mb(process.pid) for process in self.processes]

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown finishes the task at hand), SIGKILL after 30 s."""
        for process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _broker(url: str) -> Any:
    """A Redis client whose every call is bounded."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)


def _flush_broker(url: str) -> None:
    """Empty the broker's database: tasks left by an earlier run would be checked too."""
    import redis

    client = _broker(url)
    try:
        client.flushdb()
    except redis.RedisError as error:
        raise SystemExit(f"--broker-url {url}: {error}") from None
    finally:
        client.close()


def _broker_busy(url: str) -> int:
    """Tasks on the broker: queued (kombu's list ``celery``) or delivered and not yet
    acknowledged (its hash ``unacked``; tasks are acknowledged late, when done)."""
    client = _broker(url)
    try:
        return int(client.llen("celery")) + int(client.hlen("unacked"))
    finally:
        client.close()


_BEHIND = (
    "EXISTS (SELECT 1 FROM emails e WHERE e.domain = d.name AND e.verified AND NOT e.free_provider)"
)
# Due at `start`, or leased (a worker has it): not done yet. `count_due` would leave out the
# leased ones, and counts what is due *now* (a failed check is rescheduled, so not due now).
_PENDING = (
    "SELECT count(*) FROM domains d WHERE (d.next_due_at IS NULL OR d.next_due_at <= %(start)s "
    f"OR d.lease_until > now()) AND {_BEHIND}"
)
# Verified addresses whose domain has no row yet: due at once, as in `count_due`.
_ORPHANS = (
    "SELECT count(DISTINCT e.domain) FROM emails e WHERE e.verified AND NOT e.free_provider "
    "AND NOT EXISTS (SELECT 1 FROM domains d WHERE d.name = e.domain)"
)
_CHECKED = "SELECT count(*) FROM domains WHERE last_checked_at >= %(start)s"
_VERDICTS = (
    "SELECT last_verdict, count(*) FROM domains WHERE last_checked_at >= %(start)s "
    "GROUP BY last_verdict"
)
_UNVERIFIED = "SELECT count(*) FROM emails WHERE unverified_at >= %(start)s"


class _BenchDatabase:
    """Read-only questions about the bench database while the workers write to it. Each is
    rolled back, so pg_stat_database's commits are the workers' alone, and bounded."""

    def __init__(self, url: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.connection = psycopg.connect(
            dsn, connect_timeout=10, options="-c statement_timeout=60000"
        )

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        try:
            return self.connection.execute(sql, params).fetchall()
        finally:
            self.connection.rollback()

    def count(self, sql: str, **params: Any) -> int:
        return int(self.rows(sql, **params)[0][0])

    def pending(self, start: datetime) -> int:
        return self.count(_PENDING, start=start) + self.count(_ORPHANS)

    def close(self) -> None:
        self.connection.close()


def _database_stats(admin_url: str, name: str, *, mine: int = 0) -> tuple[int, int]:
    """Commits and rows inserted, updated or deleted in database ``name`` so far, asked
    through the admin database so that asking counts in neither."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        # A backend reports its counts when it goes idle or exits: wait for the others to go
        # (``mine``, the bench's own connection, only reads).
        for _ in range(50):
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                (name, mine),
            ).fetchone()
            if row is None or row[0] == 0:
                break
            time.sleep(0.2)
        row = admin.execute(
            "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted "
            "FROM pg_stat_database WHERE datname = %s",
            (name,),
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _distributed_cycle(
    url: str,
    env: dict[str, str],
    args: argparse.Namespace,
    workdir: Path,
    client_rate: float,
    concurrency: int,
    timeout: float,
) -> dict[str, Any]:
    """The cycle as docs/scaling.md deploys it: ``--workers`` Celery workers sharing the
    client rate (the limit is per process), fed by ``enqueue_due``. What ``_cycle`` reports,
    measured from outside: from the first chunk enqueued until nothing that was due then is
    due, leased or on the broker."""
    count = args.workers
    worker_env = {
        **env,
        "LAPSEWATCH_BROKER_URL": args.broker_url,
        "LAPSEWATCH_CONCURRENCY": str(max(20, concurrency // count)),
        "LAPSEWATCH_CHUNK_SIZE": str(args.chunk_size),
    }
    if args.world == "uniform":  # the egress cap, split as docs/scaling.md says
        worker_env["LAPSEWATCH_RATE_RDAP"] = str(client_rate / count)
        worker_env["LAPSEWATCH_RATE_DNS"] = str(client_rate / count)
    from sqlalchemy.engine import make_url

    name = make_url(url).database or ""
    deadline = time.monotonic() + timeout
    _flush_broker(args.broker_url)
    workers = Workers(count, worker_env, workdir / "workers")
    database: _BenchDatabase | None = None
    try:
        workers.start()
        workers.wait_ready(deadline)
        cap = worker_env.get("LAPSEWATCH_RATE_RDAP")
        log(
            f"  workers: {count} ready, "
            + (f"each capped at {float(cap):g}/s per source" if cap else "no cap")
            + f", limits per server shared through Redis, concurrency "
            f"{worker_env['LAPSEWATCH_CONCURRENCY']}, chunks of {args.chunk_size:,}"
        )
        database = _BenchDatabase(url)
        start = datetime.now(UTC)
        due = database.pending(start)
        commits_before, rows_before = _database_stats(
            args.postgres_url, name, mine=database.connection.info.backend_pid
        )
        cpu_before = workers.cpu_seconds()
        enqueued = run_child("_enqueue", ["--database", url], worker_env, timeout)
        log(
            f"  workers: {due:,} domains due, {enqueued['domains']:,} enqueued in "
            f"{enqueued['tasks']:,} tasks in {enqueued['seconds']:.1f} s"
        )
        notes = _wait_until_done(database, workers, args.broker_url, start, due, deadline)
        seconds = time.time() - enqueued["started"]
        cpu_seconds = workers.cpu_seconds() - cpu_before
        peaks = workers.peak_rss_mb()
        checked = database.count(_CHECKED, start=start)
        verdicts = {str(k): int(v) for k, v in database.rows(_VERDICTS, start=start)}
        unverified = database.count(_UNVERIFIED, start=start)
        database.close()
        database = None
        workers.stop()  # before the stats: a backend reports its last counts as it exits
        commits_after, rows_after = _database_stats(args.postgres_url, name)
    finally:
        if database is not None:
            database.close()
        workers.stop()
        with suppress(SystemExit):  # leave the broker's database empty, as found
            _flush_broker(args.broker_url)
    return {
        "seconds": seconds,
        "checked": checked,
        "verdicts": verdicts,
        "unverified": unverified,
        "cpu_seconds": cpu_seconds,
        "peak_rss_mb": max(peaks),
        "worker_peak_rss_mb": peaks,
        "rows_written": rows_after - rows_before,
        "commits": commits_after - commits_before,
        "sources": {},
        "enqueue_seconds": enqueued["seconds"],
        "tasks": enqueued["tasks"],
        "notes": notes,
    }


def _wait_until_done(
    database: _BenchDatabase,
    workers: Workers,
    broker_url: str,
    start: datetime,
    due: int,
    deadline: float,
) -> list[str]:
    """Poll twice a second until every domain due at ``start`` is checked (none is due or
    leased) and the broker holds no task. Counting checked rows is cheap; the exact question
    is asked only once they add up. Returns notes (domains left when the broker went idle);
    raises past ``deadline``."""
    reported = (database.count(_CHECKED, start=start), time.monotonic())  # since enqueued
    idle_since: float | None = None
    last_checked = -1
    while True:
        workers.check_alive()
        checked = database.count(_CHECKED, start=start)
        busy = _broker_busy(broker_url)
        now = time.monotonic()
        if checked >= due and busy == 0 and database.pending(start) == 0:
            return []
        if busy == 0 and checked == last_checked:
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since > BROKER_IDLE_SECONDS:
                left = database.pending(start)
                return [f"{left:,} due domains were left unchecked: the broker went idle"]
        else:
            idle_since = None
        last_checked = checked
        if now > deadline:
            raise SystemExit(f"the workers had checked {checked:,}/{due:,} at --timeout")
        if now - reported[1] >= 10:
            rate = (checked - reported[0]) / (now - reported[1])
            log(f"  workers: {checked:,}/{due:,} domains, {rate:.0f}/s now, {busy} tasks left")
            reported = (checked, now)
        time.sleep(0.5)
