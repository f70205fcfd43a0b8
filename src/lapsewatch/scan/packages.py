"""What the scanner knows about a package: where it was named and its core metadata.

Every input (requirement files, lock files, wheels, the running environment, the
index) is turned into these few frozen types, so the rest of the scan never
cares where a package came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from packaging.metadata import parse_email
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from lapsewatch.dates import parse_datetime

__all__ = [
    "ADDRESS_FIELDS",
    "Origin",
    "PackageMetadata",
    "PackageRef",
    "metadata_from_email",
    "same_version",
]

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


@dataclass(frozen=True)
class PackageRef:
    """A package to look up on the index: a name and, when pinned, a version."""

    name: str
    version: str | None
    origin: Origin

    @property
    def key(self) -> tuple[str, str | None]:
        return canonicalize_name(self.name), self.version


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

    @property
    def key(self) -> tuple[str, str | None]:
        return canonicalize_name(self.name), self.version

    def address_fields(self) -> list[tuple[str, str]]:
        """(field, value) for every non-empty field that may hold addresses."""
        found = []
        for name in ADDRESS_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) and value.strip() not in _ABSENT:
                found.append((name, value.strip()))
        return found

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
        return cls(
            name=data["name"],
            version=texts["version"],
            author_email=texts["author_email"],
            maintainer_email=texts["maintainer_email"],
            author=texts["author"],
            maintainer=texts["maintainer"],
            published_at=parse_datetime(published) if isinstance(published, str) else None,
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
