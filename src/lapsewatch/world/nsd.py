"""Run the real authoritative server NSD on loopback, serving the world's zones.

The builtin server is convenient, but only a real server proves that what
lapsewatch learns from DNS holds against production software. The zones come
from ``zone.py``, the same code the builtin server answers from.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from lapsewatch.world.dns_server import bind_udp_tcp
from lapsewatch.world.live import LiveScenario, RequestCounter, Snapshot
from lapsewatch.world.zone import zone_text

__all__ = ["NsdError", "NsdServer", "nsd_available", "nsd_binary"]

_FALLBACK_BINARY = "/usr/sbin/nsd"


class NsdError(RuntimeError):
    """NSD could not be started or did not pick up a change; the message carries its log."""


def nsd_binary() -> str | None:
    """Path of the ``nsd`` binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("nsd")
    if found:
        return found
    return _FALLBACK_BINARY if os.access(_FALLBACK_BINARY, os.X_OK) else None


def nsd_available() -> bool:
    return nsd_binary() is not None


class NsdServer:
    """NSD in the foreground (``nsd -d``) with its own config, zones and state in a temp dir.

    Changes to the live scenario are written out and loaded with SIGHUP (a restart
    when the set of TLDs changes); per-domain DNS faults are not applied, NSD just
    serves the zones. It cannot count queries, so ``requests`` stays empty.
    """

    host = "127.0.0.1"

    def __init__(self, live: LiveScenario, *, startup_timeout: float = 10.0) -> None:
        binary = nsd_binary()
        if binary is None:
            raise NsdError("NSD is not installed (Debian package 'nsd')")
        self.binary = binary
        self.live = live
        self.startup_timeout = startup_timeout
        self.requests = RequestCounter()
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._tlds: tuple[str, ...] = ()
        self._mtime = 0.0

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="lapsewatch-nsd-"))
        udp, tcp = bind_udp_tcp(self.host)  # a port free for both; NSD binds it a moment later
        self.port = int(udp.getsockname()[1])
        udp.close()
        tcp.close()
        snapshot = self.live.current
        self._write(snapshot)
        self._launch()
        self._wait(snapshot.serial)
        self.live.subscribe(self._reload)

    def stop(self) -> None:
        self.live.unsubscribe(self._reload)
        self._terminate()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def log(self) -> str:
        """What NSD wrote to its log and its terminal so far."""
        if self._dir is None:
            return ""
        parts = [p.read_text(errors="replace") for p in self._logs() if p.exists()]
        return "\n".join(parts).strip()

    def _logs(self) -> tuple[Path, Path]:
        assert self._dir is not None
        return self._dir / "nsd.log", self._dir / "nsd.out"

    def _write(self, snapshot: Snapshot) -> None:
        assert self._dir is not None
        for tld, zone in snapshot.zones.items():
            (self._dir / f"{tld}.zone").write_text(zone_text(zone))
        # NSD reloads a zone file only if its mtime changed (seconds): force a newer one.
        self._mtime = max(time.time(), self._mtime + 1)
        for tld in snapshot.zones:
            os.utime(self._dir / f"{tld}.zone", (self._mtime, self._mtime))
        self._tlds = tuple(snapshot.zones)
        (self._dir / "nsd.conf").write_text(self._config())

    def _config(self) -> str:
        assert self._dir is not None
        d = self._dir
        server = {
            "ip-address": f"{self.host}@{self.port}",
            "port": str(self.port),
            "do-ip6": "no",
            "username": '""',
            "chroot": '""',
            "zonesdir": f'"{d}"',
            "database": '""',
            "zonelistfile": f'"{d}/zone.list"',
            "xfrdfile": f'"{d}/xfrd.state"',
            "xfrdir": f'"{d}"',
            "pidfile": f'"{d}/nsd.pid"',
            "logfile": f'"{d}/nsd.log"',
            "cookie-secret-file": f'"{d}/cookiesecrets.txt"',
            "verbosity": "1",
            "server-count": "1",
            "hide-version": "yes",
            "minimal-responses": "yes",
            "rrl-ratelimit": "0",  # tests query fast from one address
        }
        lines = ["server:", *(f"  {key}: {value}" for key, value in server.items())]
        lines += ["remote-control:", "  control-enable: no"]
        for tld in self._tlds:
            lines += ["zone:", f'  name: "{tld}"', f'  zonefile: "{d}/{tld}.zone"']
        return "\n".join(lines) + "\n"

    def _launch(self) -> None:
        assert self._dir is not None
        with self._logs()[1].open("ab") as out:
            self._process = subprocess.Popen(
                [self.binary, "-d", "-c", str(self._dir / "nsd.conf")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _reload(self, snapshot: Snapshot) -> None:
        if self._process is None:
            return
        tlds_changed = tuple(snapshot.zones) != self._tlds
        self._write(snapshot)
        if tlds_changed:  # new zones need a new config: restart on the same port
            self._terminate()
            self._launch()
        else:
            self._process.send_signal(signal.SIGHUP)
        self._wait(snapshot.serial)

    def _wait(self, serial: int) -> None:
        """Until every zone answers its SOA with ``serial`` (or, without zones, NSD answers)."""
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self._tlds)
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise NsdError(f"NSD exited (status {code}):\n{self.log}")
            try:
                pending = [t for t in pending if self._serial(t) != serial]
                if not pending and (self._tlds or self._serial(".") is None):
                    return
            except (dns.exception.DNSException, OSError):
                pass
            time.sleep(0.05)
        self._terminate()
        raise NsdError(
            f"NSD did not serve serial {serial} for {', '.join(pending) or 'any zone'} on "
            f"{self.host}:{self.port} within {self.startup_timeout:g} s:\n{self.log}"
        )

    def _serial(self, tld: str) -> int | None:
        query = dns.message.make_query(tld, dns.rdatatype.SOA)
        response = dns.query.udp(query, self.host, port=self.port, timeout=0.25)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        return None
