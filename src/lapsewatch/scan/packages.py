"""What the scanner knows about a package: where it was named and its core metadata.

Every input (requirement files, lock files, wheels, the running environment, the
index) is turned into these few frozen types, so the rest of the scan never
cares where a package came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, get_args

from packaging.metadata import parse_email
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from lapsewatch.dates import parse_datetime

__all__ = [
    "ADDRESS_FIELDS",
    "ECOSYSTEMS",
    "Ecosystem",
    "FirstPublished",
    "Origin",
    "PackageMetadata",
    "PackageRef",
    "metadata_from_email",
    "normal_name",
    "same_version",
]

Ecosystem = Literal["pypi", "npm"]
ECOSYSTEMS: tuple[Ecosystem, ...] = get_args(Ecosystem)

ADDRESS_FIELDS = ("author_email", "maintainer_email", "author", "maintainer")
"""Core metadata fields that may hold addresses, as the JSON API names them."""

_ABSENT = frozenset({"", "UNKNOWN", "None"})
"""Old distutils wrote ``UNKNOWN`` for a missing field; it is not an address."""


@dataclass(frozen=True)
class Origin:
    """Where a package was named, so a report (and SARIF) can point at the line."""

    kind: str
    """``requirements``, ``lock``, ``dist``, ``installed`` or ``argument``."""
    path: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.path is None:
            return self.kind
        return f"{self.path}:{self.line}" if self.line else self.path


def normal_name(ecosystem: Ecosystem, name: str) -> str:
    """The name two spellings of one package share: PEP 503 on PyPI, as written on npm
    (npm names are case-sensitive: a few old packages have capitals)."""
    return canonicalize_name(name) if ecosystem == "pypi" else name


@dataclass(frozen=True)
class PackageRef:
    """A package to look up on the index: a name and, when pinned, a version."""

    name: str
    version: str | None
    origin: Origin
    ecosystem: Ecosystem = "pypi"
    spec: str | None = None
    """An npm range or dist-tag (``^1.2.0``, ``next``) to resolve on the registry."""

    @property
    def key(self) -> tuple[str, str, str | None]:
        wanted = self.version if self.version is not None else self.spec
        return self.ecosystem, normal_name(self.ecosystem, self.name), wanted

    @property
    def shown(self) -> str:
        """``name 1.0`` or ``name ^1.0``, for messages."""
        wanted = self.version or self.spec
        return f"{self.name} {wanted}" if wanted else self.name


@dataclass(frozen=True)
class FirstPublished:
    """The earliest release that carried an address: when the registry first trusted it.

    The ctx pattern hides behind the newest release (the attacker's own, published
    after the domain was caught); the re-registration check compares with this one.
    """

    address: str
    """Lower-case canonical address."""
    version: str
    published_at: datetime


@dataclass(frozen=True)
class PackageMetadata:
    """The core metadata fields the scan needs, from whichever source had them."""

    name: str
    version: str | None
    author_email: str | None = None
    maintainer_email: str | None = None
    author: str | None = None
    maintainer: str | None = None
    published_at: datetime | None = None
    """When this release was uploaded to the index: the moment its addresses were
    made public, which stands in for "verified at" in the re-registration check."""
    origins: tuple[Origin, ...] = field(default=(), compare=False)
    ecosystem: Ecosystem = "pypi"
    people: tuple[tuple[str, str], ...] = ()
    """npm's (field, text) pairs: ``maintainers``, ``_npmUser``, ``author``, ``contributors``."""
    first_published: tuple[FirstPublished, ...] = field(default=(), compare=False)
    """Per address, the earliest release that carried it, where known."""
    release_times: tuple[tuple[str, datetime], ...] = field(default=(), compare=False)
    """Every release's upload time (PyPI's project page), oldest first; empty if unknown."""

    @property
    def key(self) -> tuple[str, str, str | None]:
        return self.ecosystem, normal_name(self.ecosystem, self.name), self.version

    def address_fields(self) -> list[tuple[str, str]]:
        """(field, value) for every non-empty field that may hold addresses."""
        found = []
        for name in ADDRESS_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and value.strip() not in _ABSENT:
                found.append((name, value.strip()))
        found.extend((name, value.strip()) for name, value in self.people if value.strip())
        return found

    def first_for(self, address: str) -> FirstPublished | None:
        wanted = address.lower()
        return next((f for f in self.first_published if f.address == wanted), None)

    def with_origins(self, *origins: Origin) -> PackageMetadata:
        merged = tuple(dict.fromkeys((*self.origins, *origins)))
        return replace(self, origins=merged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the cache (origins are per scan, so they are left out)."""
        data: dict[str, Any] = {"name": self.name, "version": self.version}
        for name in ADDRESS_FIELDS:
            data[name] = getattr(self, name)
        published = self.published_at
        data["published_at"] = published.isoformat() if published else None  # full precision
        data["ecosystem"] = self.ecosystem
        data["people"] = [list(pair) for pair in self.people]
        data["first_published"] = [
            [f.address, f.version, f.published_at.isoformat()] for f in self.first_published
        ]
        data["release_times"] = [[v, when.isoformat()] for v, when in self.release_times]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> PackageMetadata:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed dict."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("not a package metadata record")
        texts: dict[str, str | None] = {}
        for name in ("version", *ADDRESS_FIELDS):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"field {name!r} is not a string")
            texts[name] = value
        published = data.get("published_at")
        ecosystem = data.get("ecosystem", "pypi")
        if ecosystem not in ECOSYSTEMS:
            raise ValueError(f"unknown ecosystem {ecosystem!r}")
        try:
            people = tuple((str(f), str(v)) for f, v in data.get("people") or ())
            firsts = tuple(
                FirstPublished(str(a), str(v), parse_datetime(str(t)))
                for a, v, t in data.get("first_published") or ()
            )
            times = tuple(
                (str(v), parse_datetime(str(t))) for v, t in data.get("release_times") or ()
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed release history: {exc}") from None
        return cls(
            name=data["name"],
            version=texts["version"],
            author_email=texts["author_email"],
            maintainer_email=texts["maintainer_email"],
            author=texts["author"],
            maintainer=texts["maintainer"],
            published_at=parse_datetime(published) if isinstance(published, str) else None,
            ecosystem=ecosystem,
            people=people,
            first_published=firsts,
            release_times=times,
        )


def metadata_from_email(data: bytes | str, origin: Origin) -> PackageMetadata:
    """Read ``METADATA``/``PKG-INFO`` (RFC 822 style) with ``packaging``'s own parser."""
    raw, _unparsed = parse_email(data)
    name = raw.get("name")
    if not name:
        raise ValueError("the metadata has no Name field")
    return PackageMetadata(
        name=name,
        version=raw.get("version"),
        author_email=raw.get("author_email"),
        maintainer_email=raw.get("maintainer_email"),
        author=raw.get("author"),
        maintainer=raw.get("maintainer"),
        origins=(origin,),
    )


def same_version(wanted: str | None, have: str | None) -> bool:
    """Whether ``have`` satisfies a pin (``None`` = any), comparing as PEP 440 versions."""
    if wanted is None:
        return True
    if have is None:
        return False
    try:
        return Version(wanted) == Version(have)
    except InvalidVersion:
        return wanted == have
