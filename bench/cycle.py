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
import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
GENERATOR_VERSION = 5
"""Bump when the generated files change, so cached ones are not reused."""

# Free providers as most registries see them: a few giants and a long tail.
FREE_PROVIDERS = (
    ("gmail.com", 50),
    ("yahoo.com", 8),
    ("hotmail.com", 7),
    ("outlook.com", 7),
    ("icloud.com", 5),
    ("qq.com", 4),
    ("163.com", 3),
    ("proton.me", 3),
    ("protonmail.com", 2),
    ("gmx.de", 2),
    ("web.de", 2),
    ("mail.ru", 2),
    ("yandex.ru", 2),
    ("aol.com", 1),
    ("live.com", 1),
    ("me.com", 1),
)
CUSTOM_TLDS: tuple[tuple[str, float], ...] = (
    ("com", 57),
    ("org", 12),
    ("net", 10),
    ("io", 8),
    ("dev", 5),
    ("de", 5),
    ("jp", 3),
)
"""The uniform world's TLDs (one RDAP server for all but :data:`WHOIS_TLDS`); the
patchwork world's are those of ``lapsewatch.world.pacing.PATCHWORK``."""
WHOIS_TLDS: tuple[str, ...] = ("jp",)
"""The uniform world's TLDs without RDAP: its WHOIS server answers for them."""
# Listed (non-default) domains, as fractions of the custom domains.
LAPSED_STATES = (
    ("expiring", 0.006),
    ("redemption", 0.005),
    ("pending_delete", 0.003),
    ("available", 0.006),
    ("reregistered", 0.005),
    ("for_sale", 0.003),
)
FAILING = (
    ({"rdap": "500"}, 0.004),
    ({"dns": "servfail"}, 0.004),
    ({"rdap": "timeout"}, 0.0005),
)
VERIFIED_FRACTION = 0.92


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generated:
    registry: Path
    scenario: Path
    addresses: int
    accounts: int
    custom_domains: int
    listed_domains: int
    free_addresses: int


def _zipf_cum_weights(n: int, s: float) -> list[float]:
    total = 0.0
    cumulative: list[float] = []
    for rank in range(1, n + 1):
        total += 1.0 / rank**s
        cumulative.append(total)
    return cumulative


def generate(
    workdir: Path,
    *,
    addresses: int,
    domains: int,
    free_fraction: float,
    seed: int,
    custom_tlds: tuple[tuple[str, float], ...] = CUSTOM_TLDS,
    whois_tlds: tuple[str, ...] = WHOIS_TLDS,
) -> Generated:
    """The registry (JSONL) and the world scenario (TOML); cached in ``workdir`` by parameters."""
    key = hashlib.sha256(
        json.dumps(
            [
                GENERATOR_VERSION,
                addresses,
                domains,
                free_fraction,
                seed,
                list(custom_tlds),
                list(whois_tlds),
            ]
        ).encode()
    ).hexdigest()[:12]
    registry = workdir / f"registry-{key}.jsonl"
    scenario = workdir / f"scenario-{key}.toml"
    meta = workdir / f"meta-{key}.json"
    if registry.exists() and scenario.exists() and meta.exists():
        log(f"reusing the generated registry {registry.name}")
        return Generated(registry, scenario, **json.loads(meta.read_text()))
    rng = random.Random(seed)
    custom_addresses = addresses - round(addresses * free_fraction)
    if custom_addresses < domains:
        raise SystemExit(
            f"--domains {domains} needs at least that many custom addresses; "
            f"{addresses} addresses with --free-fraction {free_fraction} give {custom_addresses}"
        )
    log(f"generating {addresses:,} addresses on {domains:,} custom domains")
    tlds = [t for t, _ in custom_tlds]
    tld_weights = [w for _, w in custom_tlds]
    names = [f"{_word(rng)}{index}.{rng.choices(tlds, tld_weights)[0]}" for index in range(domains)]
    # Every custom domain once, then the rest Zipf-like: a few shared by many addresses.
    custom = list(range(domains))
    custom += rng.choices(
        range(domains), cum_weights=_zipf_cum_weights(domains, 1.07), k=custom_addresses - domains
    )
    is_custom = [True] * custom_addresses + [False] * (addresses - custom_addresses)
    rng.shuffle(custom)
    rng.shuffle(is_custom)
    providers = [p for p, _ in FREE_PROVIDERS]
    provider_weights = [w for _, w in FREE_PROVIDERS]

    now = datetime.now(UTC).replace(microsecond=0)
    listed: dict[str, dict[str, str]] = {}
    order = list(range(domains))
    rng.shuffle(order)
    position = 0
    for state, fraction in LAPSED_STATES:
        for index in order[position : position + max(1, round(domains * fraction))]:
            listed[names[index]] = {"state": state}
        position += max(1, round(domains * fraction))
    for fault, fraction in FAILING:
        for index in order[position : position + max(1, round(domains * fraction))]:
            listed[names[index]] = {"state": "registered", **fault}
        position += max(1, round(domains * fraction))

    accounts = 0
    custom_iter = iter(custom)
    written = 0
    free_count = 0
    with registry.open("w", encoding="utf-8") as out:
        while written < addresses:
            size = min(addresses - written, 1 if rng.random() < 0.8 else 2)
            emails = []
            for slot in range(size):
                if is_custom[written]:
                    domain = names[next(custom_iter)]
                else:
                    domain = rng.choices(providers, provider_weights)[0]
                    free_count += 1
                verified = rng.random() < VERIFIED_FRACTION
                email: dict[str, Any] = {
                    "address": f"u{written}@{domain}",
                    "primary": slot == 0,
                    "verified": verified,
                }
                if verified:
                    ago = timedelta(days=rng.uniform(30, 8 * 365))
                    email["verified_at"] = (now - ago).isoformat().replace("+00:00", "Z")
                emails.append(email)
                written += 1
            line: dict[str, Any] = {
                "username": f"user{accounts}",
                "totp": rng.random() < 0.3,
                "emails": emails,
            }
            if rng.random() < 0.3:
                line["projects"] = [f"pkg-{accounts}"]
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            accounts += 1

    served = sorted({*tlds, *(p.rsplit(".", 1)[1] for p in providers)})
    lines = [
        "# Generated by bench/cycle.py: every unlisted name is registered.",
        "[world]",
        'default_state = "registered"',
        # Mail at a well-known provider (not checked as a mail host), as most custom
        # domains have; with no MX the DNS source would ask the A record too.
        'default_mx = ["aspmx.l.google.com"]',
        f"tlds = {json.dumps(served)}",
        f"rdap_missing_tlds = {json.dumps(list(whois_tlds))}",
        "",
    ]
    for name, options in sorted(listed.items()):
        lines.append("[[domains]]")
        lines.append(f'name = "{name}"')
        lines.extend(f'{k} = "{v}"' for k, v in options.items())
        lines.append("")
    scenario.write_text("\n".join(lines), encoding="utf-8")
    info = {
        "addresses": addresses,
        "accounts": accounts,
        "custom_domains": domains,
        "listed_domains": len(listed),
        "free_addresses": free_count,
    }
    meta.write_text(json.dumps(info))
    log(f"generated {accounts:,} accounts, {len(listed):,} listed domains in the world")
    return Generated(registry, scenario, **info)


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "sa", "do", "li")


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


# ---------------------------------------------------------------------------------- the world


class WorldProcess:
    """The local world in its own process; ``stats()`` asks it for its counters."""

    def __init__(
        self,
        scenario: Path,
        *,
        latency: float,
        rate: float,
        timeout: float,
        world: str = "uniform",
    ) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "_world",
                "--scenario",
                str(scenario),
                "--latency",
                str(latency),
                "--rate",
                str(rate),
                "--world",
                world,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env({}),
        )
        self._timeout = timeout
        first = self._read_line()
        self.info: dict[str, Any] = json.loads(first)

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = self.info["env"]
        return env

    def _read_line(self) -> str:
        assert self.process.stdout is not None
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.process.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(self._timeout)
        if not result or not result[0]:
            self.stop()
            raise SystemExit("the world process did not answer")
        return result[0]

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        stats: dict[str, Any] = json.loads(self._read_line())
        return stats

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)


def world_main(argv: list[str]) -> None:
    """``_world``: run the world until stdin closes; answer ``stats`` lines with JSON."""
    parser = argparse.ArgumentParser(prog="cycle.py _world")
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--world", choices=("uniform", "patchwork"), default="uniform")
    args = parser.parse_args(argv)
    from lapsewatch.world import World, load_scenario
    from lapsewatch.world.pacing import Patchwork

    started = time.monotonic()
    scenario = load_scenario(args.scenario)
    world = World(scenario, latency=args.latency, rate_limit=args.rate or None, hang_seconds=6.0)
    with world, tempfile.TemporaryDirectory(prefix="lapsewatch-patchwork-") as directory:
        env = world.env()
        patchwork: Patchwork | None = None
        if args.world == "patchwork":
            # Every TLD on its own registry's RDAP or WHOIS server, each with its own quota
            # and latency; DNS and Fastly stay the world's (--latency, --rate).
            patchwork = Patchwork(scenario, Path(directory))
            patchwork.start()
            env.update(patchwork.env())
        ready = time.monotonic() - started
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "env": env,
                    "fastly_url": world.fastly_url,
                    "fastly_key": world.fastly_key,
                    "startup_seconds": ready,
                    "startup_rss_mb": rss,
                    "listed_domains": len(scenario.domains),
                }
            ),
            flush=True,
        )
        try:
            for line in sys.stdin:
                if line.strip() == "stats":
                    usage = resource.getrusage(resource.RUSAGE_SELF)
                    pacing = world.pacing_stats()
                    # Per server: its quota and what it admitted and refused (the limit floor).
                    if patchwork is not None:  # its own registries answer RDAP and WHOIS
                        pacing.pop("rdap", None)
                        pacing.pop("whois", None)
                    servers = {
                        name: {**counts, "quota": args.rate, "latency": args.latency}
                        for name, counts in pacing.items()
                    }
                    if patchwork is not None:
                        for name, stats in patchwork.stats().items():
                            key = f"{stats['protocol']}:{name}"
                            servers[key] = stats
                            pacing[key] = {
                                "admitted": stats["admitted"],
                                "refused": stats["refused"],
                            }
                    print(
                        json.dumps(
                            {
                                "pacing": pacing,
                                "servers": servers,
                                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                                "peak_rss_mb": usage.ru_maxrss / 1024,
                            }
                        ),
                        flush=True,
                    )
        finally:
            if patchwork is not None:
                patchwork.stop()


# ---------------------------------------------------------------------------------- children


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAPSEWATCH_")}
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_child(role: str, args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``cycle.py <role>`` and return the JSON it prints last; stderr passes through."""
    command = [sys.executable, str(Path(__file__).resolve()), role, *args]
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
    import logging

    from sqlalchemy import event

    # stamina logs every scheduled retry (the world's failing domains): not progress.
    logging.getLogger("stamina").setLevel(logging.ERROR)

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


# ---------------------------------------------------------------------------------- workers

BROKER_IDLE_SECONDS = 60.0
"""How long the broker may hold no task while due domains stay unchecked before the
distributed cycle is called finished with leftovers (a task failed; nothing re-sends it)."""


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


# ---------------------------------------------------------------------------------- databases


@contextmanager
def fresh_database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    """An empty database of ``kind``: a new SQLite file, or ``lapsewatch_bench`` recreated."""
    if kind == "sqlite":
        path = workdir / "bench.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    name = "lapsewatch_bench"
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
    with fresh_database(kind, workdir, args.postgres_url) as url:
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


def _patchwork_tlds() -> tuple[tuple[str, float], ...]:
    from lapsewatch.world.pacing import tld_weights

    return tld_weights()


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
