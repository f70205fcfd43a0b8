"""bench/cycle.py end to end at a tiny size: it runs and reports every figure (no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    postgres_reachable,
    redis_reachable,
    require_service,
)

BENCH = Path(__file__).resolve().parent.parent / "bench" / "cycle.py"
KEYS = {
    "addresses",
    "domains_checked",
    "import_seconds",
    "cycle_seconds",
    "domains_per_second",
    "ceiling_fraction",
    "responses_429",
    "peak_rss_mb",
    "db_writes_per_second",
    "baseline_speedup",
    "cpu_ms_per_domain",
    "limit_seconds",
    "limit_fraction",
    "fraction_429",
}


def run_tiny(
    tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """The bench at 1,000 addresses with no latency; its output and its JSON results.

    On PostgreSQL, in a database of its own (the bench drops and creates it), dropped after."""
    out = tmp_path / "results.json"
    database = f"lapsewatch_bench_{uuid.uuid4().hex[:12]}"
    try:
        run = _run_bench(tmp_path, out, "--postgres-database", database, *extra)
    finally:
        if {"postgresql", "both"} & set(extra):
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    assert run.returncode == 0, run.stderr[-3000:]
    results: dict[str, Any] = json.loads(out.read_text())
    return run, results


def _run_bench(tmp_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--addresses",
            "1000",
            "--domains",
            "200",
            "--latency",
            "0",
            "--rate",
            "2000",
            "--source-timeout",
            "0.5",
            "--postgres-url",
            POSTGRES_URL,
            "--workdir",
            str(tmp_path),
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.postgres
def test_bench_runs_at_a_tiny_size(tmp_path: Path) -> None:
    """Both databases in one run, as the README's comparison runs it (one bench process,
    one world, one baseline: half the CPU of a run for each)."""
    require_service("PostgreSQL on 127.0.0.1:5432", postgres_reachable())
    run, results = run_tiny(
        tmp_path, "--baseline-sample", "20", "--cpu-sample", "50", "--database", "both"
    )
    assert set(results) >= KEYS
    assert results["addresses"] == 1000
    # Every custom domain behind a verified address was checked (a few have none verified).
    assert 150 < results["domains_checked"] <= 200
    for database in ("sqlite", "postgresql"):
        assert results["runs"][database]["domains_checked"] == results["domains_checked"]
        assert results["runs"][database]["unverified"] > 0  # the lapsed domains' addresses
    assert results["baseline"]["sample"] == 20
    assert results["cpu_sample_domains"] == 50
    for key in KEYS - {"responses_429", "fraction_429"}:
        assert results[key] > 0, key
    assert "of the ceiling" in run.stdout
    assert "speed-up vs baseline" in run.stdout
    # Its .jp domains have no RDAP: the world's WHOIS server answered for them.
    assert results["world_servers"]["whois"]["admitted"] > 0
    assert results["sources"]["whois"]["requests"] > 0


@pytest.mark.postgres
@pytest.mark.redis
def test_bench_runs_on_celery_workers_at_a_tiny_size(tmp_path: Path) -> None:
    require_service("PostgreSQL on 127.0.0.1:5432", postgres_reachable())
    require_service("Redis on 127.0.0.1:6379", redis_reachable())
    run, results = run_tiny(
        tmp_path,
        "--baseline-sample",
        "0",
        "--cpu-sample",
        "0",
        "--database",
        "postgresql",
        "--workers",
        "2",
        "--broker-url",
        REDIS_URL.rsplit("/", 1)[0] + "/14",  # not the bench's default 13, nor the tests' 0, 9
    )
    workers = results["runs"]["postgresql-2-workers"]
    assert workers["workers"] == 2
    assert 150 < workers["domains_checked"] <= 200
    assert workers["unverified"] > 0
    assert len(workers["worker_peak_rss_mb"]) == 2
    for key in ("cycle_seconds", "domains_per_second", "cpu_seconds", "db_writes_per_second"):
        assert workers[key] > 0, key
    assert "postgresql, 2 workers" in run.stdout


def test_bench_runs_the_patchwork_world_at_a_tiny_size(tmp_path: Path) -> None:
    run, results = run_tiny(
        tmp_path, "--baseline-sample", "0", "--cpu-sample", "0", "--world", "patchwork"
    )
    assert results["world"] == "patchwork"
    assert 150 < results["domains_checked"] <= 200
    servers = results["world_servers"]
    rdap = {name: stats for name, stats in servers.items() if name.startswith("rdap:")}
    assert len(rdap) >= 12  # each registry its own server, quota and latency
    assert len({stats["quota"] for stats in rdap.values()}) > 5
    assert sum(stats["admitted"] for stats in rdap.values()) > 150
    whois = {name: stats for name, stats in servers.items() if name.startswith("whois:")}
    assert len(whois) >= 3  # ccTLD registries without RDAP, at their own pace
    assert sum(stats["admitted"] for stats in whois.values()) > 0
    assert results["limit_server"] in servers
    assert results["limit_seconds"] > 0
    assert 0 < results["limit_fraction"] <= 1.5
    assert results["learned_rates"]  # what the cycle learned, kept in the store
    assert "limit (floor), fraction" in run.stdout


def test_bench_refuses_workers_on_sqlite() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--database", "sqlite", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "--workers needs --database postgresql" in run.stderr
