"""Scan a front-end-sized npm lock file against a local registry with 50 ms latency.

    python bench/scan_npm.py                    # 1,500 lock entries, 50 ms, sample 150
    python bench/scan_npm.py --packages 3000 --latency 0.1 --json out.json

What it does, each step printed as it goes:

1. generates a ``package-lock.json`` (lockfileVersion 3) of ``--packages`` entries,
   a tenth of them a second version of a name (nested ``node_modules`` copies), and
   a catalogue of realistic packuments (1-6 versions each; maintainers mostly at free
   providers, the rest on a few hundred custom domains shared Zipf-like; one ctx-pattern
   package on a re-registered domain, a few on lapsed ones);
2. starts the local world (RDAP, DNS, Fastly) and the npm registry, both adding
   ``--latency`` to every answer; the sources keep their default rate limits (the
   world's settings only: ``LAPSEWATCH_*`` of the environment are not read);
3. **cold**: one full scan with an empty cache, the default concurrency and pacing
   (per server: each RDAP server from 10/s, raised while domains queue);
4. **warm**: the same scan again, answered from the cache filled by the cold run;
5. **baseline**: the registry asked one packument at a time (``npm_concurrency=1``) on a
   sample of ``--sample`` names, extrapolated to the whole lock file;
6. prints the figures: wall time per run, packument and RDAP requests, the most
   requests any single domain got (must be 1), the verdicts.

Figures are for this machine and this world, and move with its load (the load
average is printed first); they are not asserted by any test. See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lapsewatch.config import Settings
from lapsewatch.scan import DiskCache, ScanOptions, collect, run_scan
from lapsewatch.scan.findings import ScanReport
from lapsewatch.scan.run import Phase
from lapsewatch.world import World, parse_scenario
from lapsewatch.world.npm_registry import NpmCatalog, NpmPackage, NpmRegistry, NpmRelease

FREE = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com", "qq.com")
SCENARIO = """
[world]
description = "npm scan bench: every .test name registered, a few exceptions"
default_state = "registered"
tlds = ["test"]

[[domains]]
name = "lapsed-0.test"
registered = "2010-06-01"
state = "expiring"

[[domains]]
name = "lapsed-1.test"
state = "available"

[[domains]]
name = "caught-0.test"
state = "reregistered"
"""


class _Clock:
    """Progress that notes when each phase starts: metadata vs. domain time."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    def start(self, phase: Phase, total: int) -> None:
        self.started[phase] = time.perf_counter()

    def advance(self, phase: Phase) -> None:
        pass


@dataclass(frozen=True)
class Figures:
    label: str
    seconds: float
    cpu_seconds: float
    """CPU of this process (the scan, and the world's servers on their threads)."""
    metadata_seconds: float
    packument_requests: int
    domains_asked: int
    rdap_requests: int
    max_per_domain: int
    findings: int
    verdicts: dict[str, int]


def _person(rng: random.Random, index: int, domains: list[str]) -> dict[str, str]:
    user = f"dev{index}"
    if rng.random() < 0.55:
        return {"name": user, "email": f"{user}@{rng.choice(FREE)}"}
    weights = [1 / (rank + 1) for rank in range(len(domains))]
    return {"name": user, "email": f"{user}@{rng.choices(domains, weights)[0]}"}


def generate(count: int, seed: int, now: datetime) -> tuple[NpmCatalog, dict[str, Any]]:
    """The catalogue and a package-lock.json (v3) with exactly ``count`` registry entries."""
    rng = random.Random(seed)
    domains = [f"org{i}.test" for i in range(300)] + ["lapsed-0.test", "lapsed-1.test"]
    nested = count // 10
    names = [f"@scope{i % 40}/pkg-{i}" if i % 7 == 0 else f"pkg-{i}" for i in range(count - nested)]
    packages: list[NpmPackage] = []
    lock: dict[str, Any] = {"": {"name": "bench-app", "version": "1.0.0"}}
    for index, name in enumerate(names):
        people = [_person(rng, index * 3 + k, domains) for k in range(rng.randint(1, 3))]
        if index == 0:
            people = [{"name": "figlief", "email": "figlief@caught-0.test"}]  # the ctx pattern
        start = now - timedelta(days=rng.randint(200, 3000))
        versions = [f"1.{minor}.0" for minor in range(rng.randint(2 if index < nested else 1, 6))]
        releases = [
            NpmRelease(
                v, start + timedelta(days=30 * k), author=people[0], maintainers=tuple(people)
            )
            for k, v in enumerate(versions)
        ]
        if index == 0:
            releases.append(NpmRelease("1.9.9", now - timedelta(days=2), maintainers=tuple(people)))
        packages.append(NpmPackage(name, releases))
        lock[f"node_modules/{name}"] = _entry(name, releases[-1].version)
        if index < nested:  # an older copy nested under another package
            parent = names[-1 - index]
            lock[f"node_modules/{parent}/node_modules/{name}"] = _entry(name, releases[0].version)
    document = {"name": "bench-app", "version": "1.0.0", "lockfileVersion": 3, "packages": lock}
    return NpmCatalog.of(packages), document


def _entry(name: str, version: str) -> dict[str, str]:
    base = name.rsplit("/", 1)[-1]
    return {
        "version": version,
        "resolved": f"https://registry.npmjs.org/{name}/-/{base}-{version}.tgz",
        "integrity": "sha512-" + "A" * 86 + "==",
    }


class Registry:
    """The npm registry in a child process: in this one, its threads would compete with
    the scan for the GIL and the bench would measure that, not the scan."""

    def __init__(self, catalog: NpmCatalog, latency: float) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(catalog, latency, child))
        self._process.start()
        self.registry_url: str = self._conn.recv()

    def ask(self, command: str) -> int:
        self._conn.send(command)
        return int(self._conn.recv())

    def stop(self) -> None:
        self.ask("stop")
        self._process.join(timeout=10)


def _serve(catalog: NpmCatalog, latency: float, conn: Any) -> None:
    with NpmRegistry(catalog, latency=latency) as registry:
        conn.send(registry.registry_url)
        while True:
            command = conn.recv()
            if command == "reset":
                registry.requests.reset()
            conn.send(registry.requests.total)
            if command == "stop":
                return


def one_run(
    label: str,
    lock: Path,
    world: World,
    registry: Registry,
    cache: DiskCache | None,
    concurrency: int | None = None,
) -> tuple[Figures, ScanReport]:
    settings = Settings.from_env(world.env())
    inputs = collect(
        paths=[lock], index_url="https://pypi.org/pypi", npm_registry_url=registry.registry_url
    )
    options = ScanOptions(settings, cache=cache, npm_registry_url=registry.registry_url)
    if concurrency is not None:
        options = replace(options, npm_concurrency=concurrency)
    registry.ask("reset")
    world.rdap_requests.reset()
    clock = _Clock()
    started, cpu = time.perf_counter(), time.process_time()
    report = asyncio.run(run_scan(inputs, options, clock))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    metadata = clock.started.get("domains", started + elapsed) - started
    rdap = {k: v for k, v in world.rdap_requests.as_dict().items() if "/" not in k}
    figures = Figures(
        label=label,
        seconds=elapsed,
        cpu_seconds=cpu,
        metadata_seconds=metadata,
        packument_requests=registry.ask("count"),
        domains_asked=report.domains_asked,
        rdap_requests=sum(rdap.values()),
        max_per_domain=max(rdap.values(), default=0),
        findings=len(report.findings),
        verdicts=dict(Counter(f.status.value for f in report.findings)),
    )
    print(
        f"  {label:<9} {elapsed:7.2f} s (metadata {metadata:5.2f} s, CPU {cpu:5.2f} s)  "
        f"packuments {figures.packument_requests:5d}  "
        f"RDAP {figures.rdap_requests:4d} (max {figures.max_per_domain}/domain)  "
        f"findings {figures.findings}",
        flush=True,
    )
    return figures, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--packages", type=int, default=1500)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--sample", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    now = datetime.now(UTC)
    catalog, document = generate(args.packages, args.seed, now)
    entries = len(document["packages"]) - 1
    print(f"lock file: {entries} entries, {len(catalog.packages)} names", flush=True)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="scan-npm-bench-") as scratch:
        root = Path(scratch)
        lock = root / "package-lock.json"
        lock.write_text(json.dumps(document, indent=2))
        scenario = parse_scenario(SCENARIO, now=now, source="bench")
        registry = Registry(catalog, args.latency)
        with World(scenario, latency=args.latency) as world:
            print(f"latency {args.latency * 1000:.0f} ms on the registry, RDAP, DNS and Fastly")
            cache = DiskCache(root / "cache", 24 * 3600.0)
            cold, report = one_run("cold", lock, world, registry, cache)
            warm, _ = one_run("warm", lock, world, registry, cache)
            sample = dict(list(document["packages"].items())[: args.sample + 1])
            small = root / "sample" / "package-lock.json"
            small.parent.mkdir()
            small.write_text(json.dumps({**document, "packages": sample}))
            one, _ = one_run("1-at-once", small, world, registry, None, concurrency=1)
        registry.stop()
    per_name = one.metadata_seconds / max(one.packument_requests, 1)
    baseline = per_name * cold.packument_requests
    ctx = [f for f in report.findings if f.status.value == "reregistered"]
    defaults = Settings.from_env({})
    pacing = (
        f"{defaults.rates.get('rdap')}/s for the whole source"
        if defaults.pace == "source"
        else "paced per server, from 10/s"
    )
    print()
    print(
        f"cold scan:   {cold.seconds:.1f} s for {entries} entries: metadata "
        f"{cold.metadata_seconds:.1f} s ({cold.packument_requests} packuments), domains "
        f"{cold.seconds - cold.metadata_seconds:.1f} s ({cold.domains_asked} domains, "
        f"{cold.rdap_requests} RDAP requests, "
        f"{pacing}); each domain checked once: {cold.max_per_domain <= 1}"
    )
    print(
        f"warm scan:   {warm.seconds:.2f} s, {warm.packument_requests} packument and "
        f"{warm.rdap_requests} RDAP requests"
    )
    print(
        f"baseline:    one packument at a time, {per_name * 1000:.0f} ms each: ~{baseline:.0f} s "
        f"for the metadata alone ({baseline / max(cold.metadata_seconds, 1e-9):.1f}x the "
        "concurrent metadata phase)"
    )
    print(f"verdicts:    {dict(sorted(cold.verdicts.items()))}")
    print(f"ctx pattern: {[f'{f.package} {f.version}' for f in ctx]}")
    if args.json:
        data = {
            "entries": entries,
            "latency": args.latency,
            "load_average_before": load,
            "runs": [vars(f) for f in (cold, warm, one)],
            "baseline_seconds": baseline,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
