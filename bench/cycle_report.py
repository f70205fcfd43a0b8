"""What ``bench/cycle.py`` reports per database (and per worker count): the ``Run``
dataclass, whose fields are the JSON's keys, and ``print_results``, the table printed
at the end with its notes, per-server counts, learned rates and the baseline.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import IO, Any


@dataclass
class Run:
    database: str
    addresses: int
    domains_checked: int = 0
    import_seconds: float = 0.0
    addresses_per_second: float = 0.0
    cycle_seconds: float = 0.0
    domains_per_second: float = 0.0
    ceiling_fraction: float = 0.0
    ceiling_requests_per_domain: float = 1.0
    responses_429: int = 0
    responses_429_client: int = 0
    requests_at_world: int = 0
    fraction_429: float = 0.0
    peak_rss_mb: float = 0.0
    db_writes_per_second: float = 0.0
    db_commits_per_second: float = 0.0
    cpu_seconds: float = 0.0
    cycle_cpu_ms_per_domain: float = 0.0
    """CPU of the checker process per domain in the measured cycle (with latency)."""
    cpu_ms_per_domain: float = 0.0
    """The same in a second pass over ``--cpu-sample`` domains with no latency and no rate
    limit: what parsing, deciding and applying cost, without the waiting."""
    cpu_sample_domains: int = 0
    world_cpu_seconds: float = 0.0
    baseline_speedup: float = 0.0
    verdicts: dict[str, int] = field(default_factory=dict)
    unverified: int = 0
    requests_per_second: dict[str, float] = field(default_factory=dict)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    world_pacing: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    workers: int = 0
    """Celery worker processes that ran the cycle (0: one process, ``run_cycle``)."""
    worker_peak_rss_mb: list[float] = field(default_factory=list)
    enqueue_seconds: float = 0.0
    world: str = "uniform"
    limit_seconds: float = 0.0
    """The physical floor: the largest, over the world's servers, of the requests that
    server admitted divided by its quota."""
    limit_fraction: float = 0.0
    """``limit_seconds / cycle_seconds``: 1.0 is every server's quota used all the time."""
    limit_server: str = ""
    """The server whose quota sets ``limit_seconds``."""
    world_servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per server of the world, during the cycle: quota, latency, admitted, refused."""
    learned_rates: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """What the cycle learned per server (table ``server_rates``) when it ended."""


def _label(run: Run) -> str:
    """The run's column in the table."""
    return f"{run.database}, {run.workers} workers" if run.workers else run.database


def _key(run: Run) -> str:
    """The run's key in the JSON's ``runs``."""
    return f"{run.database}-{run.workers}-workers" if run.workers else run.database


def _peak_rss(run: Run) -> str:
    if not run.workers:
        return f"{run.peak_rss_mb:.0f} MB"
    return ", ".join(f"{mb:.0f}" for mb in run.worker_peak_rss_mb) + " MB (each worker)"


def print_results(config: dict[str, Any], runs: list[Run], baseline: dict[str, Any]) -> None:
    out: IO[str] = sys.stdout
    print(file=out)
    print(
        f"registry: {config['addresses']:,} addresses in {config['accounts']:,} accounts, "
        f"{config['free_addresses']:,} at free providers, {config['domains']:,} custom domains "
        f"({config['listed_domains']:,} lapsed/re-registered/failing)",
        file=out,
    )
    print(
        f"world: latency {config['latency'] * 1000:g} ms, ceiling {config['rate']:g} "
        f"requests/s per source; client rate {config['client_rate']:g}/s, concurrency "
        f"{config['concurrency']}; started in {config['world_startup_seconds']:.2f} s "
        f"({config['world_startup_rss_mb']:.0f} MB)",
        file=out,
    )
    if config["workers"]:
        print(
            f"workers: {config['workers']} Celery workers (--pool solo), limits per server "
            "shared through Redis"
            + (
                f", each capped at 1/{config['workers']} of the client rate"
                if config.get("world") == "uniform"
                else ""
            )
            + "; CPU per domain sums them",
            file=out,
        )
    rows: list[tuple[str, list[str]]] = [
        ("import time", [f"{r.import_seconds:.1f} s" for r in runs]),
        ("import rate", [f"{r.addresses_per_second:,.0f} addresses/s" for r in runs]),
        ("domains checked", [f"{r.domains_checked:,}" for r in runs]),
        ("cycle wall time", [f"{r.cycle_seconds:.1f} s" for r in runs]),
        ("domains/s", [f"{r.domains_per_second:.1f}" for r in runs]),
        (
            "of the ceiling",
            [
                f"{r.ceiling_fraction:.1%} ({r.ceiling_requests_per_domain:.2f} req/domain)"
                for r in runs
            ],
        ),
        (
            "limit (floor), fraction",
            [f"{r.limit_seconds:.1f} s ({r.limit_server}), {r.limit_fraction:.1%}" for r in runs],
        ),
        (
            "requests/s rdap, dns",
            [
                f"{r.requests_per_second.get('rdap', 0):.0f}, "
                f"{r.requests_per_second.get('dns', 0):.0f}"
                for r in runs
            ],
        ),
        (
            "429/REFUSED (world)",
            [f"{r.responses_429} ({r.fraction_429:.2%} of requests)" for r in runs],
        ),
        (
            "429/REFUSED (client)",
            [f"{r.responses_429_client}" if not r.workers else "n/a" for r in runs],
        ),
        ("peak RSS (checker)", [_peak_rss(r) for r in runs]),
        ("CPU per domain", [f"{r.cycle_cpu_ms_per_domain:.3f} ms" for r in runs]),
        (
            "CPU/domain, latency 0",
            [f"{r.cpu_ms_per_domain:.3f} ms ({r.cpu_sample_domains:,} domains)" for r in runs],
        ),
        ("world CPU", [f"{r.world_cpu_seconds:.0f} s" for r in runs]),
        ("DB rows written/s", [f"{r.db_writes_per_second:,.0f}" for r in runs]),
        ("DB commits/s", [f"{r.db_commits_per_second:,.1f}" for r in runs]),
        ("unverified addresses", [f"{r.unverified:,}" for r in runs]),
        ("speed-up vs baseline", [f"{r.baseline_speedup:.0f}x" for r in runs]),
    ]
    width = max(len(label) for label, _ in rows)
    columns = [_label(r) for r in runs]
    col = max(24, *(len(v) for _, values in rows for v in values))
    print(file=out)
    print(" " * width + "  " + "".join(c.ljust(col + 2) for c in columns), file=out)
    for label, values in rows:
        print(label.ljust(width) + "  " + "".join(v.ljust(col + 2) for v in values), file=out)
    for run in runs:
        verdicts = ", ".join(f"{k} {v:,}" for k, v in sorted(run.verdicts.items()))
        print(f"verdicts ({_label(run)}): {verdicts}", file=out)
        for note in run.notes:
            print(f"note ({_label(run)}): {note}", file=out)
        for name, stats in sorted(run.world_servers.items()):
            print(
                f"server ({_label(run)}): {name}: quota {stats['quota']:g}/s, "
                f"latency {stats['latency'] * 1000:g} ms, admitted {stats['admitted']:,.0f} "
                f"({stats['admitted'] / stats['quota']:.1f} s of quota), "
                f"refused {stats['refused']:,.0f}",
                file=out,
            )
        learned = ", ".join(
            f"{server} {rate['rate']:.1f}/s" for server, rate in sorted(run.learned_rates.items())
        )
        if learned:
            print(f"learned ({_label(run)}): {learned}", file=out)
    if baseline:
        print(
            f"baseline: {baseline['sample']:,} addresses one at a time in "
            f"{baseline['seconds']:.1f} s = {baseline['seconds_per_address'] * 1000:.1f} ms each; "
            f"{config['addresses']:,} addresses = {baseline['extrapolated_seconds']:,.0f} s "
            f"({baseline['extrapolated_seconds'] / 3600:.1f} h)",
            file=out,
        )
    out.flush()
