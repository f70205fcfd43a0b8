"""A local npm registry serving packuments, for ``lapsewatch scan`` tests and benches.

``GET /<name>`` and ``GET /@scope%2fname`` (or ``/@scope/name``) answer the full
packument in the registry's shape: ``_id``, ``_rev``, ``dist-tags``,
``versions`` (each with ``maintainers``, ``_npmUser``, ``author``,
``contributors``, ``dist``), ``time`` (``created``, ``modified`` and one entry
per version) and the latest version's ``maintainers`` and ``author`` at the top.
The catalogue is TOML (or built in Python, see :class:`NpmPackage`)::

    [[packages]]
    name = "@acme/widgets"
    versions = ["1.0.0", "1.1.0"]          # default ["1.0.0"]
    published = "-400d"                     # the first version; each next one an hour later
    author = "Alice <alice@alive.test> (https://alive.test)"   # or { name, email, url }
    maintainers = [{ name = "alice", email = "alice@alive.test" }]
    npm_user = { name = "alice", email = "alice@alive.test" }  # default: first maintainer
    contributors = ["Bob <bob@gmail.com>"]
    dist_tags = { next = "2.0.0-rc.1" }     # "latest" defaults to the highest stable version
    fault = "ok"                            # ok, 500, timeout, not_json

    [[packages.releases]]                   # per-version overrides
    version = "1.1.0"
    published = "-2d"

Like the other world servers it binds 127.0.0.1 on a free port, adds the
configured latency to every answer (``latency=0.05`` for the bench) and counts
requests by decoded path (``/@acme/widgets``).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args
from urllib.parse import unquote, urlsplit

from lapsewatch.dates import parse_datetime
from lapsewatch.world.http_base import JsonHandler, LoopbackHTTPServer
from lapsewatch.world.live import LiveScenario
from lapsewatch.world.pacing import Pacing
from lapsewatch.world.scenario import Scenario

__all__ = [
    "NpmCatalog",
    "NpmCatalogError",
    "NpmPackage",
    "NpmRegistry",
    "NpmRelease",
    "load_npm_catalog",
    "packument",
    "parse_npm_catalog",
]

NpmFault = Literal["ok", "500", "timeout", "not_json"]
Person = str | Mapping[str, str]
"""``"Name <email> (url)"`` or ``{"name": ..., "email": ..., "url": ...}``, as npm stores them."""

_RELATIVE = re.compile(r"^([+-])(\d+)([dh])$")
_PEOPLE_KEYS = ("author", "maintainers", "npm_user", "contributors")
_RELEASE_KEYS = frozenset({"version", "published", *_PEOPLE_KEYS})
_PACKAGE_KEYS = frozenset(
    {"name", "versions", "releases", "dist_tags", "fault", *_RELEASE_KEYS} - {"version"}
)


class NpmCatalogError(ValueError):
    """A catalogue cannot be used; the message names the package and key."""


@dataclass(frozen=True)
class NpmRelease:
    version: str
    published: datetime
    author: Person | None = None
    maintainers: tuple[Person, ...] = ()
    npm_user: Person | None = None
    contributors: tuple[Person, ...] = ()


@dataclass(frozen=True)
class NpmPackage:
    name: str
    releases: Sequence[NpmRelease]
    """In publish order."""
    dist_tags: Mapping[str, str] = field(default_factory=dict)
    fault: NpmFault = "ok"

    @property
    def latest(self) -> str:
        if "latest" in self.dist_tags:
            return self.dist_tags["latest"]
        stable = [r.version for r in self.releases if "-" not in r.version]
        return max(stable or [r.version for r in self.releases], key=_order)


def _order(version: str) -> tuple[int, ...]:
    core = version.split("-", 1)[0].split("+", 1)[0]
    return tuple(int(p) if p.isdigit() else 0 for p in core.split("."))


@dataclass(frozen=True)
class NpmCatalog:
    packages: Mapping[str, NpmPackage] = field(default_factory=dict)

    @classmethod
    def of(cls, packages: Sequence[NpmPackage]) -> NpmCatalog:
        return cls({p.name: p for p in packages})


def _when(value: object, now: datetime, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise NpmCatalogError(f"{where}: expected a date or '-400d'")
    match = _RELATIVE.match(value.strip())
    if match:
        sign, amount, unit = match.groups()
        delta = timedelta(days=int(amount)) if unit == "d" else timedelta(hours=int(amount))
        return now + delta if sign == "+" else now - delta
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise NpmCatalogError(f"{where}: {exc}") from None


def _person(value: object, where: str) -> Person:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    raise NpmCatalogError(f"{where}: a person is a string or a table of strings")


def _people(value: object, where: str) -> tuple[Person, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise NpmCatalogError(f"{where}: expected a list of people")
    return tuple(_person(item, where) for item in value)


def _release(data: Mapping[str, Any], version: str, published: datetime, where: str) -> NpmRelease:
    maintainers = _people(data.get("maintainers"), f"{where}: maintainers")
    user = data.get("npm_user")
    return NpmRelease(
        version=version,
        published=published,
        author=_person(data["author"], f"{where}: author") if "author" in data else None,
        maintainers=maintainers,
        npm_user=_person(user, f"{where}: npm_user") if user is not None else None,
        contributors=_people(data.get("contributors"), f"{where}: contributors"),
    )


def parse_npm_catalog(
    text: str, *, now: datetime | None = None, source: str = "<npm catalog>"
) -> NpmCatalog:
    """Validate a TOML catalogue and resolve its dates."""
    now = now or datetime.now(UTC)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise NpmCatalogError(f"{source}: {exc}") from None
    packages: list[NpmPackage] = []
    for number, entry in enumerate(data.get("packages", []), 1):
        where = f"{source}: package {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise NpmCatalogError(f"{where}: needs a 'name'")
        where = f"{where} ({entry['name']!r})"
        unknown = sorted(set(entry) - _PACKAGE_KEYS)
        if unknown:
            raise NpmCatalogError(f"{where}: unknown key(s) {', '.join(unknown)}")
        versions = entry.get("versions", ["1.0.0"])
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise NpmCatalogError(f"{where}: 'versions' must be a list of strings")
        defaults = {k: v for k, v in entry.items() if k in _RELEASE_KEYS}
        first = _when(entry.get("published", "-400d"), now, f"{where}: published")
        overrides: dict[str, dict[str, Any]] = {}
        for override in entry.get("releases", []):
            if not isinstance(override, dict) or not isinstance(override.get("version"), str):
                raise NpmCatalogError(f"{where}: each release needs a 'version'")
            bad = sorted(set(override) - _RELEASE_KEYS)
            if bad:
                raise NpmCatalogError(f"{where}: unknown release key(s) {', '.join(bad)}")
            overrides[override["version"]] = override
        releases = []
        for index, version in enumerate(dict.fromkeys([*versions, *overrides])):
            merged = {**defaults, **overrides.get(version, {})}
            published = first + timedelta(hours=index)
            if "published" in overrides.get(version, {}):
                published = _when(merged["published"], now, f"{where} {version}: published")
            releases.append(_release(merged, version, published, f"{where} {version}"))
        tags = entry.get("dist_tags", {})
        fault = entry.get("fault", "ok")
        if fault not in get_args(NpmFault):
            raise NpmCatalogError(f"{where}: fault {fault!r}; known: {get_args(NpmFault)}")
        releases.sort(key=lambda r: r.published)
        packages.append(NpmPackage(entry["name"], releases, dict(tags), fault))
    return NpmCatalog.of(packages)


def load_npm_catalog(path: str | Path, *, now: datetime | None = None) -> NpmCatalog:
    return parse_npm_catalog(Path(path).read_text(encoding="utf-8"), now=now, source=str(path))


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _manifest(package: NpmPackage, release: NpmRelease, base: str) -> dict[str, Any]:
    basename = package.name.rsplit("/", 1)[-1]
    digest = hashlib.sha1(f"{package.name}@{release.version}".encode()).hexdigest()
    manifest: dict[str, Any] = {
        "name": package.name,
        "version": release.version,
        "description": f"{package.name}, as served by the lapsewatch test registry",
        "main": "index.js",
        "license": "MIT",
        "dependencies": {},
        "_id": f"{package.name}@{release.version}",
        "_nodeVersion": "18.17.1",
        "_npmVersion": "9.6.7",
        "dist": {
            "tarball": f"{base}/{package.name}/-/{basename}-{release.version}.tgz",
            "shasum": digest,
            "integrity": "sha512-" + hashlib.sha512(digest.encode()).hexdigest()[:86] + "==",
            "fileCount": 4,
            "unpackedSize": 4096,
        },
        "directories": {},
        "_hasShrinkwrap": False,
    }
    if release.author is not None:
        manifest["author"] = release.author
    if release.maintainers:
        manifest["maintainers"] = list(release.maintainers)
    user = release.npm_user or (release.maintainers[0] if release.maintainers else None)
    if user is not None:
        manifest["_npmUser"] = user
    if release.contributors:
        manifest["contributors"] = list(release.contributors)
    return manifest


def packument(package: NpmPackage, base: str) -> dict[str, Any]:
    """The full packument of ``package`` as the public registry shapes it."""
    latest = next((r for r in package.releases if r.version == package.latest), None)
    times = {r.version: _iso(r.published) for r in package.releases}
    published = [r.published for r in package.releases]
    document: dict[str, Any] = {
        "_id": package.name,
        "_rev": f"{len(package.releases)}-{hashlib.md5(package.name.encode()).hexdigest()}",
        "name": package.name,
        "description": f"{package.name}, as served by the lapsewatch test registry",
        "dist-tags": {"latest": package.latest, **package.dist_tags},
        "versions": {r.version: _manifest(package, r, base) for r in package.releases},
        "time": {"created": _iso(min(published)), "modified": _iso(max(published)), **times},
        "license": "MIT",
        "readme": f"# {package.name}\n",
        "readmeFilename": "README.md",
    }
    if latest is not None:
        if latest.maintainers:
            document["maintainers"] = list(latest.maintainers)
        if latest.author is not None:
            document["author"] = latest.author
    return document


class _RegistryHandler(JsonHandler):
    server: NpmRegistry

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.requests.add(path)
        if not self.paced():
            return
        package = self.server.catalog.packages.get(path.lstrip("/"))
        if package is None:
            self.send_json(404, {"error": "Not found"})
        elif package.fault == "500":
            self.send_json(500, {"error": "Internal Server Error"})
        elif package.fault == "timeout":
            if self.server.hang():
                self.send_json(503, {"error": "too late"})
        elif package.fault == "not_json":
            body = b"<html><body><h1>502 Bad Gateway</h1>\n<p>upstream error</p></body></html>\n"
            self.send_body(200, body, "application/json")
        else:
            self.send_json(200, packument(package, self.server.url))


class NpmRegistry(LoopbackHTTPServer):
    """Packuments on loopback; ``registry_url`` is what ``--npm-registry-url`` takes."""

    def __init__(
        self, catalog: NpmCatalog, *, latency: float = 0.0, hang_seconds: float = 10.0
    ) -> None:
        # The base server keeps a live scenario for the domain fakes; a registry has no domains.
        live = LiveScenario(Scenario(domains={}, tlds=()))
        super().__init__(_RegistryHandler, live, hang_seconds)
        self.catalog = catalog
        self.pacing = Pacing(latency=latency)

    @property
    def registry_url(self) -> str:
        return self.url

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
