"""A local package index speaking PyPI's JSON API, for ``lapsewatch scan`` tests and demos.

Serves ``/pypi/<name>/json`` (the newest release) and ``/pypi/<name>/<version>/json``
in the shape PyPI uses (``info``, ``urls`` with upload times, ``releases``), from
a catalogue written in TOML::

    [[packages]]
    name = "alive-lib"
    versions = ["1.0", "1.1"]          # default ["1.0"]; the highest is "latest"
    author_email = "Alice <alice@alive.test>"
    maintainer_email = "bob@gmail.com"
    uploaded = "-400d"                 # relative to now, or an RFC 3339 date
    fault = "ok"                       # ok, 500, timeout, invalid_json

    [[packages.releases]]              # per-version overrides
    version = "0.9"
    author_email = "old@vacant.test"

Like the other world servers it binds 127.0.0.1 on a free port and counts the
requests it gets, so tests can assert that a cached scan made none.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, get_args
from urllib.parse import unquote, urlsplit

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from lapsewatch.dates import parse_datetime
from lapsewatch.world.http_base import JsonHandler, LoopbackHTTPServer
from lapsewatch.world.live import LiveScenario
from lapsewatch.world.scenario import Scenario

__all__ = [
    "CatalogError",
    "IndexCatalog",
    "IndexPackage",
    "IndexRelease",
    "IndexServer",
    "load_index",
    "parse_index",
    "release_document",
]

IndexFault = Literal["ok", "500", "timeout", "invalid_json"]
_RELATIVE = re.compile(r"^([+-])(\d+)([dh])$")
_TEXT_KEYS = ("author_email", "maintainer_email", "author", "maintainer")
_RELEASE_KEYS = frozenset({"version", "uploaded", "fault", *_TEXT_KEYS})
_PACKAGE_KEYS = frozenset({"name", "versions", "releases", *_RELEASE_KEYS} - {"version"})
_PROJECT = re.compile(r"^/pypi/([^/]+)/json/?$")
_RELEASE = re.compile(r"^/pypi/([^/]+)/([^/]+)/json/?$")


class CatalogError(ValueError):
    """A catalogue file or value cannot be used; the message names package and key."""


@dataclass(frozen=True)
class IndexRelease:
    version: str
    author_email: str | None = None
    maintainer_email: str | None = None
    author: str | None = None
    maintainer: str | None = None
    uploaded: datetime | None = None
    fault: IndexFault = "ok"


@dataclass(frozen=True)
class IndexPackage:
    name: str
    releases: Mapping[str, IndexRelease]

    @property
    def latest(self) -> IndexRelease:
        def order(version: str) -> tuple[int, Version | str]:
            try:
                return 1, Version(version)
            except InvalidVersion:
                return 0, version

        return self.releases[max(self.releases, key=order)]

    def release(self, version: str) -> IndexRelease | None:
        if version in self.releases:
            return self.releases[version]
        for known, release in self.releases.items():
            try:
                if Version(known) == Version(version):
                    return release
            except InvalidVersion:
                continue
        return None


@dataclass(frozen=True)
class IndexCatalog:
    packages: Mapping[str, IndexPackage] = field(default_factory=dict)
    """By canonical name."""

    def get(self, name: str) -> IndexPackage | None:
        return self.packages.get(canonicalize_name(name))

    def with_package(self, package: IndexPackage) -> IndexCatalog:
        return replace(self, packages={**self.packages, canonicalize_name(package.name): package})


def _when(value: object, now: datetime, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise CatalogError(f"{where}: expected a date or '-400d'")
    match = _RELATIVE.match(value.strip())
    if match:
        sign, amount, unit = match.groups()
        delta = timedelta(days=int(amount)) if unit == "d" else timedelta(hours=int(amount))
        return now + delta if sign == "+" else now - delta
    try:
        return parse_datetime(value)
    except ValueError as exc:
        raise CatalogError(f"{where}: {exc}") from None


def _release(data: Mapping[str, Any], version: str, now: datetime, where: str) -> IndexRelease:
    texts: dict[str, str | None] = {}
    for key in _TEXT_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise CatalogError(f"{where}: key {key!r} must be a string")
        texts[key] = value
    fault = data.get("fault", "ok")
    if fault not in get_args(IndexFault):
        raise CatalogError(f"{where}: fault {fault!r}; known: {', '.join(get_args(IndexFault))}")
    return IndexRelease(
        version=version,
        author_email=texts["author_email"],
        maintainer_email=texts["maintainer_email"],
        author=texts["author"],
        maintainer=texts["maintainer"],
        uploaded=_when(data.get("uploaded", "-400d"), now, f"{where}: key 'uploaded'"),
        fault=fault,
    )


def parse_index(
    text: str | Mapping[str, Any], *, now: datetime | None = None, source: str = "<index>"
) -> IndexCatalog:
    """Validate a catalogue (TOML text or the parsed dict) and resolve its dates."""
    now = now or datetime.now(UTC)
    try:
        data = tomllib.loads(text) if isinstance(text, str) else text
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: {exc}") from None
    catalog = IndexCatalog()
    entries = data.get("packages", [])
    if not isinstance(entries, list):
        raise CatalogError(f"{source}: 'packages' must be an array of tables")
    for number, entry in enumerate(entries, 1):
        where = f"{source}: package {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise CatalogError(f"{where}: needs a 'name'")
        where = f"{where} ({entry['name']!r})"
        unknown = sorted(set(entry) - _PACKAGE_KEYS)
        if unknown:
            raise CatalogError(f"{where}: unknown key(s) {', '.join(unknown)}")
        versions = entry.get("versions", ["1.0"])
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise CatalogError(f"{where}: 'versions' must be a list of strings")
        defaults = {k: v for k, v in entry.items() if k in _RELEASE_KEYS}
        releases = {v: _release(defaults, v, now, f"{where} {v}") for v in versions}
        for override in entry.get("releases", []):
            if not isinstance(override, dict) or not isinstance(override.get("version"), str):
                raise CatalogError(f"{where}: each release needs a 'version'")
            bad = sorted(set(override) - _RELEASE_KEYS)
            if bad:
                raise CatalogError(f"{where}: unknown release key(s) {', '.join(bad)}")
            version = override["version"]
            releases[version] = _release(
                {**defaults, **override}, version, now, f"{where} {version}"
            )
        if not releases:
            raise CatalogError(f"{where}: no versions")
        catalog = catalog.with_package(IndexPackage(entry["name"], releases))
    return catalog


def load_index(path: str | Path, *, now: datetime | None = None) -> IndexCatalog:
    return parse_index(Path(path).read_text(encoding="utf-8"), now=now, source=str(path))


def _file(package: IndexPackage, release: IndexRelease, base: str) -> dict[str, Any]:
    filename = f"{canonicalize_name(package.name).replace('-', '_')}-{release.version}.tar.gz"
    uploaded = release.uploaded
    return {
        "filename": filename,
        "packagetype": "sdist",
        "python_version": "source",
        "url": f"{base}/files/{filename}",
        "digests": {},
        "yanked": False,
        "upload_time": uploaded.strftime("%Y-%m-%dT%H:%M:%S") if uploaded else None,
        "upload_time_iso_8601": (
            uploaded.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if uploaded else None
        ),
    }


def release_document(
    package: IndexPackage, release: IndexRelease, base: str, *, project: bool
) -> dict[str, Any]:
    """PyPI's JSON for one release; ``project`` adds the ``releases`` map of the project page."""
    info = {
        "name": package.name,
        "version": release.version,
        "summary": "",
        "home_page": None,
        "license": None,
        "requires_dist": None,
        "requires_python": None,
        "yanked": False,
        "yanked_reason": None,
        "package_url": f"{base}/project/{package.name}/",
        "project_url": f"{base}/project/{package.name}/",
        "release_url": f"{base}/project/{package.name}/{release.version}/",
        **{key: getattr(release, key) for key in _TEXT_KEYS},
    }
    document: dict[str, Any] = {
        "info": info,
        "last_serial": 1,
        "urls": [_file(package, release, base)] if release.uploaded else [],
        "vulnerabilities": [],
    }
    if project:
        document["releases"] = {
            version: [_file(package, r, base)] if r.uploaded else []
            for version, r in package.releases.items()
        }
    return document


class _IndexHandler(JsonHandler):
    server: IndexServer

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.requests.add(path)
        project, release = _PROJECT.match(path), _RELEASE.match(path)
        match = project or release
        package = self.server.catalog.get(match.group(1)) if match else None
        if package is None:
            self.send_json(404, {"message": "Not Found"})
            return
        chosen = package.latest if release is None else package.release(release.group(2))
        if chosen is None:
            self.send_json(404, {"message": "Not Found"})
            return
        if chosen.fault == "500":
            self.send_json(500, {"message": "Internal Server Error"})
        elif chosen.fault == "timeout":
            if self.server.hang():
                self.send_json(503, {"message": "too late"})
        elif chosen.fault == "invalid_json":
            self.send_body(200, b'{"info": {"name": ', "application/json")
        else:
            base = self.server.url
            self.send_json(
                200, release_document(package, chosen, base, project=project is not None)
            )


class IndexServer(LoopbackHTTPServer):
    """The JSON API on loopback; ``index_url`` is what ``--index-url`` takes.

    ``requests`` counts requests by path, e.g. ``/pypi/alive-lib/1.0/json``.
    """

    def __init__(self, catalog: IndexCatalog, *, hang_seconds: float = 10.0) -> None:
        # The base server keeps a live scenario for the domain fakes; an index has no domains.
        super().__init__(_IndexHandler, LiveScenario(Scenario(domains={}, tlds=())), hang_seconds)
        self.catalog = catalog

    @property
    def index_url(self) -> str:
        return f"{self.url}/pypi"

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
