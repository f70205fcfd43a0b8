"""Benchmark one full check cycle against a local world with latency and a rate limit.

    python bench/cycle.py --addresses 1000000 --domains 200000 --latency 0.05 --rate 500 \\
        --database both --json results.json

What it does, each step printed as it goes:

1. generates a synthetic registry (JSON Lines: most addresses at free providers, the
   rest on custom domains shared Zipf-like, each custom domain used at least once)
   and a world scenario whose few percent of lapsed, re-registered and failing
   domains are listed and every other name is ``default_state = "registered"``;
2. starts that world in its own process (RDAP, DNS, Fastly with ``--latency``
   added to every answer and ``--rate`` requests/s admitted per server, 429 or
   REFUSED above);
3. per database: imports the registry with ``import_accounts`` (timed, in a child
   process), then runs ``run_cycle(limit=None)`` in another child process, which
   reports its wall time, CPU time, peak RSS, 429s seen and rows written; with
   ``--workers N`` (PostgreSQL) instead ``N`` Celery workers (``lapsewatch worker --pool
   solo``, Redis as the broker, each with 1/N of the client rate) check what
   ``enqueue_due`` sends them, measured from outside: the database until nothing due is
   left, ``/proc`` for the workers' CPU and memory, pg_stat_database for the writes;
4. the baseline a registry runs today: one status request per *address*, one at a
   time, free providers included, against the world's Fastly-compatible endpoint,
   on a sample, extrapolated to the whole registry;
5. prints the figures (side by side with ``--database both``) and writes ``--json``.

Every child process has a time limit (``--timeout``); nothing waits forever.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cycle_children import (
    baseline_main,
    cycle_main,
    enqueue_main,
    import_main,
    run_child,
)
from cycle_registry import (
    CUSTOM_TLDS,
    WHOIS_TLDS,
    Generated,
    _patchwork_tlds,
    generate,
    log,
)
from cycle_report import Run, _key, _label, print_results
from cycle_workers import _distributed_cycle
from cycle_world import WorldProcess, world_main

# ---------------------------------------------------------------------------------- databases


@contextmanager
def fresh_database(
    kind: str, workdir: Path, postgres_url: str, name: str = "lapsewatch_bench"
) -> Iterator[str]:
    """An empty database of ``kind``: a new SQLite file, or PostgreSQL's ``name`` recreated."""
    if kind == "sqlite":
        path = workdir / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def _autoanalyze(kind: str, url: str) -> Iterator[list[str]]:
    """PostgreSQL with autovacuum off (as on a test server): ANALYZE every 20 s during the
    import, and once after it, as autovacuum's autoanalyze would on a default server.

    Without table statistics the planner scans a growing table for every lookup, and
    an import (and the cycle's queries after it) becomes quadratic.
    """
    notes: list[str] = []
    if kind != "postgresql":
        yield notes
        return
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as connection:
        autovacuum = connection.execute("SHOW autovacuum").fetchone()
    stop = threading.Event()

    def analyze() -> None:
        with psycopg.connect(dsn, autocommit=True) as connection:
            while not stop.wait(20):
                connection.execute("ANALYZE")

    worker = None
    if autovacuum is not None and autovacuum[0] == "off":
        notes.append(
            "autovacuum is off on this server: the bench ran ANALYZE every 20 s during the "
            "import and once before the cycle, as autoanalyze does by default"
        )
        worker = threading.Thread(target=analyze, daemon=True)
        worker.start()
    try:
        yield notes
    finally:
        stop.set()
        if worker is not None:
            worker.join()
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute("ANALYZE")


# ---------------------------------------------------------------------------------- main


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        server: {
            k: v - before["pacing"].get(server, {}).get(k, 0)
            for k, v in counts.items()
            if isinstance(v, int)
        }
        for server, counts in after["pacing"].items()
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="One full lapsewatch cycle against a rate-limited local world, measured."
    )
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--domains", type=int, default=None, help="custom domains (addresses/5)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added per answer")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s per world server")
    parser.add_argument(
        "--client-rate",
        type=float,
        default=None,
        help="LAPSEWATCH_RATE_RDAP/_DNS for the cycle (default: --rate, the ceiling)",
    )
    parser.add_argument("--concurrency", type=int, default=None, help="LAPSEWATCH_CONCURRENCY")
    parser.add_argument(
        "--source-timeout", type=float, default=5.0, help="LAPSEWATCH_TIMEOUT for the cycle"
    )
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--postgres-database",
        default="lapsewatch_bench",
        help="the PostgreSQL database the run drops and creates (runs at once need their own)",
    )
    parser.add_argument("--baseline-sample", type=int, default=2000, help="0: no baseline")
    parser.add_argument(
        "--cpu-sample",
        type=int,
        default=20_000,
        help="domains re-checked with no latency to measure CPU per domain (0: skip)",
    )
    parser.add_argument("--free-fraction", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep generated files here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child process")
    parser.add_argument("--profile", type=Path, default=None, help="pyinstrument HTML of the cycle")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the cycle on this many Celery workers (PostgreSQL, Redis); 0: in one process",
    )
    parser.add_argument(
        "--broker-url",
        default="redis://127.0.0.1:6379/13",
        help="Redis database for --workers; flushed before and after the run",
    )
    parser.add_argument("--chunk-size", type=int, default=2000, help="domains per task (--workers)")
    parser.add_argument(
        "--pace-window",
        type=int,
        default=None,
        help="LAPSEWATCH_PACE_WINDOW: domains open at once (default: the product's)",
    )
    parser.add_argument(
        "--pace",
        choices=("server", "source"),
        default="server",
        help="LAPSEWATCH_PACE: per-server learned limits, or one rate per source (as before)",
    )
    parser.add_argument(
        "--world",
        choices=("uniform", "patchwork"),
        default="uniform",
        help="uniform: one RDAP server at --rate; patchwork: 14 RDAP servers with their own "
        "quotas (5-300/s) and latencies (20-400 ms), learned by the cycle (no per-source cap)",
    )
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    if args.workers and args.database != "postgresql":
        parser.error(
            "--workers needs --database postgresql: several processes writing at once is "
            "the deployment docs/scaling.md describes, and SQLite has one writer"
        )
    if args.workers and args.profile:
        parser.error("--profile profiles the in-process cycle; it cannot be used with --workers")
    domains = args.domains or max(1, args.addresses // 5)
    client_rate = args.client_rate or args.rate
    concurrency = args.concurrency or min(
        100, max(20, math.ceil(client_rate * (args.latency + 0.05) * 2))
    )
    expected = domains / max(1.0, client_rate) * 1.2 + (args.addresses / 5000)
    timeout = args.timeout or max(600.0, expected * 3 + 300)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lapsewatch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        generated = generate(
            workdir,
            addresses=args.addresses,
            domains=domains,
            free_fraction=args.free_fraction,
            seed=args.seed,
            custom_tlds=CUSTOM_TLDS if args.world == "uniform" else _patchwork_tlds(),
            whois_tlds=WHOIS_TLDS if args.world == "uniform" else (),  # patchwork: its own
        )
        log(
            f"starting the world: latency {args.latency * 1000:g} ms, {args.rate:g} requests/s "
            "per server"
        )
        world = WorldProcess(
            generated.scenario,
            latency=args.latency,
            rate=args.rate,
            timeout=120,
            world=args.world,
        )
        try:
            log(
                f"world up in {world.info['startup_seconds']:.2f} s, "
                f"{world.info['startup_rss_mb']:.0f} MB, {world.info['listed_domains']:,} "
                "listed domains"
            )
            databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
            runs = [
                _one_database(
                    kind, generated, world, args, workdir, client_rate, concurrency, timeout
                )
                for kind in databases
            ]
            baseline: dict[str, Any] = {}
            if args.baseline_sample > 0:
                log(f"baseline: {args.baseline_sample:,} addresses, one request at a time")
                baseline = run_child(
                    "_baseline",
                    [
                        "--registry",
                        str(generated.registry),
                        "--sample",
                        str(args.baseline_sample),
                        "--fastly-url",
                        world.info["fastly_url"],
                        "--fastly-key",
                        world.info["fastly_key"],
                        "--seed",
                        str(args.seed),
                    ],
                    {},
                    timeout,
                )
                baseline["extrapolated_seconds"] = (
                    baseline["seconds_per_address"] * generated.addresses
                )
                for run in runs:
                    if run.cycle_seconds > 0:
                        run.baseline_speedup = baseline["extrapolated_seconds"] / run.cycle_seconds
        finally:
            world.stop()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    config = {
        "addresses": args.addresses,
        "domains": domains,
        "accounts": generated.accounts,
        "free_addresses": generated.free_addresses,
        "listed_domains": generated.listed_domains,
        "latency": args.latency,
        "rate": args.rate,
        "client_rate": client_rate,
        "concurrency": concurrency,
        "workers": args.workers,
        "world_startup_seconds": world.info["startup_seconds"],
        "world_startup_rss_mb": world.info["startup_rss_mb"],
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "world": args.world,
        "pace": args.pace,
    }
    print_results(config, runs, baseline)
    if args.json:
        first = asdict(runs[0])
        document = {
            **first,
            "runs": {_key(run): asdict(run) for run in runs},
            "baseline": baseline,
            "config": config,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


def _one_database(
    kind: str,
    generated: Generated,
    world: WorldProcess,
    args: argparse.Namespace,
    workdir: Path,
    client_rate: float,
    concurrency: int,
    timeout: float,
) -> Run:
    run = Run(database=kind, addresses=generated.addresses)
    with fresh_database(kind, workdir, args.postgres_url, args.postgres_database) as url:
        log(f"{kind}: importing {generated.addresses:,} addresses")
        with _autoanalyze(kind, url) as analyzing:
            imported = run_child(
                "_import", ["--database", url, "--registry", str(generated.registry)], {}, timeout
            )
        run.notes.extend(analyzing)
        if imported["rejected"]:
            raise SystemExit(f"the import rejected {imported['rejected']} lines")
        run.import_seconds = imported["seconds"]
        run.addresses_per_second = generated.addresses / imported["seconds"]
        log(
            f"{kind}: imported in {imported['seconds']:.1f} s "
            f"({run.addresses_per_second:,.0f} addresses/s); {imported['domains']:,} domains"
        )
        env = {
            **world.env,
            "LAPSEWATCH_DATABASE_URL": url,
            "LAPSEWATCH_SOURCES": "rdap,dns,whois",
            "LAPSEWATCH_CONCURRENCY": str(concurrency),
            "LAPSEWATCH_TIMEOUT": str(args.source_timeout),
            "LAPSEWATCH_PACE": args.pace,
        }
        if args.pace_window is not None:
            env["LAPSEWATCH_PACE_WINDOW"] = str(args.pace_window)
        if args.world == "uniform":
            # Today's settings: a cap per source at the world's ceiling, under which each
            # server's rate is learned. The patchwork world has no cap: learned only.
            env["LAPSEWATCH_RATE_RDAP"] = env["LAPSEWATCH_RATE_DNS"] = str(client_rate)
        before = world.stats()
        log(f"{kind}: cycle over every due domain (client rate {client_rate:g}/s per source)")
        if args.workers:
            cycle = _distributed_cycle(url, env, args, workdir, client_rate, concurrency, timeout)
            run.workers = args.workers
            run.worker_peak_rss_mb = cycle["worker_peak_rss_mb"]
            run.enqueue_seconds = cycle["enqueue_seconds"]
            run.notes.extend(cycle["notes"])
        else:
            cycle_args = ["--database", url]
            if args.profile:
                cycle_args += ["--profile", str(args.profile.with_suffix(f".{kind}.html"))]
            cycle = run_child("_cycle", cycle_args, env, timeout)
        after = world.stats()
        run.learned_rates = _learned_rates(url)
        if args.cpu_sample > 0:
            profile = args.profile.with_suffix(f".{kind}.cpu.html") if args.profile else None
            run.cpu_sample_domains, run.cpu_ms_per_domain = _cpu_pass(
                kind, generated, env, args.cpu_sample, timeout, profile
            )
    pacing = _delta(after, before)
    run.world_pacing = pacing
    run.world = args.world
    run.world_servers = {
        name: {
            **stats,
            "admitted": stats["admitted"] - before["servers"].get(name, {}).get("admitted", 0),
            "refused": stats["refused"] - before["servers"].get(name, {}).get("refused", 0),
        }
        for name, stats in after["servers"].items()
    }
    floors = {
        name: stats["admitted"] / stats["quota"]
        for name, stats in run.world_servers.items()
        if stats.get("quota")
    }
    if floors:
        run.limit_server = max(floors, key=lambda name: floors[name])
        run.limit_seconds = floors[run.limit_server]
    run.world_cpu_seconds = after["cpu_seconds"] - before["cpu_seconds"]
    run.domains_checked = cycle["checked"]
    run.cycle_seconds = cycle["seconds"]
    run.domains_per_second = cycle["checked"] / cycle["seconds"] if cycle["seconds"] else 0.0
    # The ceiling in domains/s is the world's rate over the requests a domain needs at
    # its busiest source at that rate: two at the resolver since the DNS source reads
    # the MX too (NS and MX on a domain's first check), so R/2 domains/s, not R.
    run.ceiling_requests_per_domain = max(
        [
            stats["admitted"] / run.domains_checked
            for stats in run.world_servers.values()
            if run.domains_checked and stats.get("quota") == args.rate
        ]
        + [1.0]
    )
    run.ceiling_fraction = (
        run.domains_per_second * run.ceiling_requests_per_domain / args.rate if args.rate else 0.0
    )
    run.limit_fraction = run.limit_seconds / cycle["seconds"] if cycle["seconds"] else 0.0
    run.responses_429 = sum(p["refused"] for p in pacing.values())
    run.requests_at_world = sum(p["admitted"] + p["refused"] for p in pacing.values())
    run.fraction_429 = run.responses_429 / max(1, run.requests_at_world)
    run.sources = cycle["sources"]
    run.responses_429_client = sum(s.get("rate_limited", 0) for s in cycle["sources"].values())
    run.requests_per_second = {
        server: (p["admitted"] + p["refused"]) / cycle["seconds"] for server, p in pacing.items()
    }
    run.peak_rss_mb = cycle["peak_rss_mb"]
    run.db_writes_per_second = cycle["rows_written"] / cycle["seconds"]
    run.db_commits_per_second = cycle["commits"] / cycle["seconds"]
    run.cpu_seconds = cycle["cpu_seconds"]
    run.cycle_cpu_ms_per_domain = cycle["cpu_seconds"] * 1000 / max(1, cycle["checked"])
    run.verdicts = cycle["verdicts"]
    run.unverified = cycle["unverified"]
    log(
        f"{_label(run)}: {run.domains_checked:,} domains in {run.cycle_seconds:.1f} s = "
        f"{run.domains_per_second:.1f}/s ({run.ceiling_fraction:.1%} of the ceiling), "
        f"{run.responses_429} refused"
    )
    return run


def _learned_rates(url: str) -> dict[str, dict[str, float | None]]:
    """The table ``server_rates`` after the cycle: what it learned per server."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT server, rate, ceiling FROM server_rates"))
            return {
                str(server): {"rate": float(rate), "ceiling": ceiling}
                for server, rate, ceiling in rows
            }
    finally:
        engine.dispose()


def _cpu_pass(
    kind: str,
    generated: Generated,
    env: dict[str, str],
    sample: int,
    timeout: float,
    profile: Path | None = None,
) -> tuple[int, float]:
    """Re-check ``sample`` domains against a world with no latency and no rate limit:
    the CPU the checker spends per domain when it never waits."""
    log(f"{kind}: CPU pass: {sample:,} domains again, no latency, no rate limit")
    fast = WorldProcess(generated.scenario, latency=0.0, rate=0.0, timeout=120)
    try:
        unlimited = {
            **env,
            **fast.env,
            "LAPSEWATCH_SOURCES": env["LAPSEWATCH_SOURCES"],  # the measured cycle's sources
            "LAPSEWATCH_RATE_RDAP": "1000000",
            "LAPSEWATCH_RATE_DNS": "1000000",
            "LAPSEWATCH_RATE_WHOIS": "1000000",
            "LAPSEWATCH_PACE": "source",  # CPU without any waiting: no rate to learn
            "LAPSEWATCH_CONCURRENCY": "100",
        }
        args = ["--database", env["LAPSEWATCH_DATABASE_URL"], "--everything"]
        if profile is not None:  # where the CPU goes, apart from any waiting
            args += ["--profile", str(profile)]
        cycle = run_child("_cycle", [*args, "--limit", str(sample)], unlimited, timeout)
    finally:
        fast.stop()
    per_domain = cycle["cpu_seconds"] * 1000 / max(1, cycle["checked"])
    log(f"{kind}: CPU pass: {cycle['checked']:,} domains, {per_domain:.3f} ms of CPU each")
    return cycle["checked"], per_domain


if __name__ == "__main__":
    roles = {
        "_world": world_main,
        "_import": import_main,
        "_cycle": cycle_main,
        "_baseline": baseline_main,
        "_enqueue": enqueue_main,
    }
    if len(sys.argv) > 1 and sys.argv[1] in roles:
        roles[sys.argv[1]](sys.argv[2:])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
