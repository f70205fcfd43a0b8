"""The local world of ``bench/cycle.py`` in its own process: ``WorldProcess`` starts
``cycle.py _world`` (RDAP, DNS and Fastly with added latency and a rate limit per server,
or the patchwork of registries with their own quotas) and asks it for its counters;
``world_main`` is that child, answering ``stats`` lines on stdin with JSON until stdin closes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cycle_children import SCRIPT, _child_env


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
                str(SCRIPT),
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
