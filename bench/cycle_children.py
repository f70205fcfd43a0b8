"""The child processes of ``bench/cycle.py`` and how they are started: ``run_child`` runs
``cycle.py <role>`` with a clean environment and a time limit and reads the JSON it prints
last; the roles ``_import`` (the registry into a migrated database, timed), ``_cycle``
(``run_cycle`` measured from the inside: wall time, CPU, peak RSS, rows written),
``_baseline`` (one status request per address, as a registry runs today) and ``_enqueue``
(every due domain onto the broker for the Celery workers) are defined here and dispatched
from ``cycle.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cycle_registry import log

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "cycle.py"
"""The script every child process runs (``cycle.py <role>``): the roles are dispatched there."""


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_child(role: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cycle.py <role>`` and return the JSON it prints last; stderr passes through."""
    command = [sys.executable, str(SCRIPT), role, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_child_env(env))
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise SystemExit(f"{role} did not finish within {timeout:.0f} s (--timeout)") from None
    if process.returncode != 0:
        raise SystemExit(f"{role} failed with status {process.returncode}")
    lines = [line for line in out.splitlines() if line.strip()]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def import_main(argv: list[str]) -> None:
    """``_import``: import the registry into a migrated database, timed."""
    parser = argparse.ArgumentParser(prog="cycle.py _import")
    parser.add_argument("--database", required=True)
    parser.add_argument("--registry", required=True)
    args = parser.parse_args(argv)
    from lapsewatch.accounts.importer import import_accounts
    from lapsewatch.store import make_engine, upgrade

    engine = make_engine(args.database)
    upgrade(engine)
    size = os.path.getsize(args.registry)
    last = [time.monotonic()]
    started = time.monotonic()

    def progress(done: int) -> None:
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            log(f"  import: {done / size:.0%} of the file, {time.monotonic() - started:.0f} s")

    with open(args.registry, "rb") as stream:
        summary = import_accounts(engine, stream, name=args.registry, progress=progress)
    seconds = time.monotonic() - started
    engine.dispose()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "lines": summary.lines,
                "accounts": summary.accounts_created,
                "emails": summary.emails_added,
                "domains": summary.domains_added,
                "rejected": len(summary.rejected),
            }
        )
    )


class _WriteCounter:
    """Rows written and statements run, counted at the driver (every INSERT/UPDATE/DELETE)."""

    def __init__(self) -> None:
        self.rows = 0
        self.statements = 0
        self.commits = 0

    def after_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        verb = statement.lstrip()[:6].upper()
        if verb not in ("INSERT", "UPDATE", "DELETE"):
            return
        self.statements += 1
        count = cursor.rowcount
        if count is None or count < 0:
            count = len(parameters) if executemany else 1
        self.rows += count

    def commit(self, conn: Any) -> None:
        self.commits += 1


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cycle_main(argv: list[str]) -> None:
    """``_cycle``: one full cycle (``run_cycle(limit=None)``) measured from the inside."""
    parser = argparse.ArgumentParser(prog="cycle.py _cycle")
    parser.add_argument("--database", required=True)
    parser.add_argument("--progress-every", type=float, default=10.0)
    parser.add_argument("--profile", default=None, help="write a pyinstrument HTML profile here")
    parser.add_argument("--everything", action="store_true", help="due or not (a second pass)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many domains")
    args = parser.parse_args(argv)
    from sqlalchemy import event

    from lapsewatch.config import Settings
    from lapsewatch.cycle import run_cycle
    from lapsewatch.store import make_engine

    settings = Settings.from_env()
    engine = make_engine(args.database)
    counter = _WriteCounter()
    event.listen(engine, "after_cursor_execute", counter.after_execute)
    event.listen(engine, "commit", counter.commit)
    done = [0]
    total = [0]
    stop = threading.Event()
    started = time.monotonic()

    def on_start(count: int) -> None:
        total[0] = count
        log(f"  cycle: {count:,} domains due")

    def on_result(_result: object, _unverified: int) -> None:
        done[0] += 1

    def report() -> None:
        previous, at = 0, time.monotonic()
        while not stop.wait(args.progress_every):
            now = time.monotonic()
            rate = (done[0] - previous) / (now - at)
            previous, at = done[0], now
            log(
                f"  cycle: {done[0]:,}/{total[0]:,} domains, {rate:.0f}/s now, "
                f"{done[0] / (now - started):.0f}/s overall, RSS {_rss_mb():.0f} MB"
            )

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    profiler: Any = None
    if args.profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    summary = run_cycle(
        settings,
        engine,
        limit=args.limit,
        everything=args.everything,
        on_start=on_start,
        on_result=on_result,
    )
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    if profiler is not None:
        profiler.stop()
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False), file=sys.stderr)
    engine.dispose()
    sources: dict[str, dict[str, int]] = getattr(summary, "sources", {})
    print(
        json.dumps(
            {
                "seconds": seconds,
                "checked": summary.checked,
                "verdicts": dict(summary.verdicts),
                "unverified": summary.unverified,
                "errors": summary.errors,
                "cpu_seconds": (after.ru_utime - before.ru_utime)
                + (after.ru_stime - before.ru_stime),
                "peak_rss_mb": after.ru_maxrss / 1024,
                "rows_written": counter.rows,
                "write_statements": counter.statements,
                "commits": counter.commits,
                "sources": sources,
            }
        )
    )


def baseline_main(argv: list[str]) -> None:
    """``_baseline``: what a registry runs today, one status request per address in a row."""
    parser = argparse.ArgumentParser(prog="cycle.py _baseline")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--sample", type=int, required=True)
    parser.add_argument("--fastly-url", required=True)
    parser.add_argument("--fastly-key", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import httpx

    addresses: list[str] = []
    with open(args.registry, encoding="utf-8") as lines:
        for line in lines:
            addresses.extend(e["address"] for e in json.loads(line)["emails"])
    sample = random.Random(args.seed).sample(addresses, min(args.sample, len(addresses)))
    url = args.fastly_url.rstrip("/") + "/domain-management/v1/tools/status"
    statuses: dict[str, int] = {}
    errors = 0
    started = time.monotonic()
    with httpx.Client(timeout=5.0, headers={"Fastly-Key": args.fastly_key}) as client:
        for index, address in enumerate(sample):
            domain = address.split("@")[-1].lower()  # Warehouse's rule, no PSL, free included
            try:
                response = client.get(url, params={"domain": domain, "scope": "estimate"})
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            except httpx.HTTPError:
                errors += 1
            if index and index % 500 == 0:
                log(f"  baseline: {index}/{len(sample)} addresses")
    seconds = time.monotonic() - started
    print(
        json.dumps(
            {
                "sample": len(sample),
                "seconds": seconds,
                "seconds_per_address": seconds / max(1, len(sample)),
                "statuses": statuses,
                "errors": errors,
            }
        )
    )


def enqueue_main(argv: list[str]) -> None:
    """``_enqueue``: every due domain onto the broker in chunks (``enqueue_due``). ``started``
    is wall-clock time: the parent times the distributed cycle from it, as ``_cycle`` times
    ``run_cycle`` without the interpreter's start-up."""
    parser = argparse.ArgumentParser(prog="cycle.py _enqueue")
    parser.add_argument("--database", required=True)
    args = parser.parse_args(argv)
    from lapsewatch.config import Settings
    from lapsewatch.jobs import enqueue_due
    from lapsewatch.store import make_engine

    settings = Settings.from_env()
    engine = make_engine(args.database)
    started = time.time()
    queued = enqueue_due(settings, engine, limit=None)
    seconds = time.time() - started
    engine.dispose()
    print(
        json.dumps(
            {
                "started": started,
                "seconds": seconds,
                "domains": queued.domains,
                "tasks": queued.tasks,
            }
        )
    )
