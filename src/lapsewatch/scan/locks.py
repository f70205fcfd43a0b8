"""Lock files → the pinned packages they install: ``pylock.toml`` (PEP 751), ``uv.lock``,
``poetry.lock``.

A lock file already lists the whole resolved tree, which is what a scan wants.
Only packages that come from a package index are looked up: a Git checkout, a
local directory or a direct URL has no index account that could be taken over,
so those are skipped with a note. A package from a *different* index than the
one scanned is skipped too: looking its name up on PyPI could report the
maintainers of an unrelated project with the same name.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName

from lapsewatch.scan.packages import Origin, PackageRef
from lapsewatch.scan.requirements import Parsed

__all__ = ["LockError", "LockKind", "lock_kind", "read_lock"]

LockKind = Literal["pylock", "uv", "poetry"]

_PYLOCK_NAME = re.compile(r"^pylock\.([^.]+\.)?toml$")
_PYPI_HOSTS = frozenset({"pypi.org", "pypi.python.org", "files.pythonhosted.org"})
_TABLE = re.compile(r"^\s*\[\[\s*(package|packages)\s*\]\]\s*$")
_NAME = re.compile(r"^\s*name\s*=")


class LockError(ValueError):
    """A lock file cannot be read or its kind cannot be told from its name."""


def lock_kind(path: Path) -> LockKind:
    """The format, by file name as the tools themselves name these files."""
    name = path.name
    if _PYLOCK_NAME.match(name):
        return "pylock"
    if name == "uv.lock":
        return "uv"
    if name == "poetry.lock":
        return "poetry"
    raise LockError(
        f"{path}: cannot tell the lock format from the file name; "
        "expected pylock.toml, pylock.<name>.toml, uv.lock, poetry.lock, package-lock.json, "
        "npm-shrinkwrap.json, pnpm-lock.yaml or yarn.lock"
    )


def read_lock(
    path: Path,
    *,
    index_url: str,
    environment: Mapping[str, str] | None = None,
    shown: str | None = None,
) -> Parsed:
    """Read one lock file; raise :class:`LockError` for unreadable or invalid files."""
    kind = lock_kind(path)
    shown = shown or str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise LockError(f"{shown}: no such lock file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise LockError(f"{shown}: cannot read the lock file: {exc}") from None
    key = "packages" if kind == "pylock" else "package"
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LockError(f"{shown}: '{key}' is not a list of tables")
    lines = _entry_lines(text, len(entries))
    reader = _Reader(kind, shown, index_url, environment)
    for entry, line in zip(entries, lines, strict=True):
        reader.entry(entry, line, data)
    return Parsed(tuple(reader.refs), tuple(reader.notes))


def _entry_lines(text: str, count: int) -> list[int | None]:
    """The line of each entry's ``name =``, so reports can point into the file."""
    found: list[int | None] = []
    in_entry = False
    for number, line in enumerate(text.splitlines(), 1):
        if _TABLE.match(line):
            in_entry = True
        elif in_entry and _NAME.match(line):
            found.append(number)
            in_entry = False
        elif line.lstrip().startswith("["):
            in_entry = False  # another table before a name: not an entry we can place
    return found if len(found) == count else [None] * count


def _same_index(url: str, index_url: str) -> bool:
    """PyPI's hosts always count (the default index, and what mirrors mirror)."""
    host = (urlsplit(url).hostname or "").lower()
    return host in _PYPI_HOSTS or host == (urlsplit(index_url).hostname or "").lower()


class _Reader:
    def __init__(
        self, kind: LockKind, shown: str, index_url: str, environment: Mapping[str, str] | None
    ) -> None:
        self.kind = kind
        self.shown = shown
        self.index_url = index_url
        self.environment = environment
        self.refs: list[PackageRef] = []
        self.notes: list[str] = []

    def entry(self, entry: dict[str, Any], line: int | None, document: dict[str, Any]) -> None:
        where = f"{self.shown}:{line}" if line else self.shown
        name, version = entry.get("name"), entry.get("version")
        if not isinstance(name, str) or not name:
            raise LockError(f"{where}: package entry without a name")
        if version is not None and not isinstance(version, str):
            raise LockError(f"{where}: version of {name} is not a string")
        skip = {"pylock": self._pylock_skip, "uv": self._uv_skip, "poetry": self._poetry_skip}[
            self.kind
        ](entry, document)
        if skip:
            self.notes.append(f"{where}: {name} {skip}: skipped")
            return
        self.refs.append(PackageRef(name, version, Origin("lock", self.shown, line)))

    def _pylock_skip(self, entry: dict[str, Any], document: dict[str, Any]) -> str | None:
        for key, what in (("vcs", "a VCS checkout"), ("directory", "a local directory")):
            if key in entry:
                return f"is {what}, not from an index"
        if "archive" in entry:
            return "is a direct archive URL, not from an index"
        index = entry.get("index")
        if isinstance(index, str) and not _same_index(index, self.index_url):
            return f"comes from another index ({index})"
        marker = entry.get("marker")
        if isinstance(marker, str):
            groups = document.get("default-groups", [])
            environment: dict[str, Any] = dict(self.environment or {})
            environment.setdefault("extras", frozenset())
            environment.setdefault(
                "dependency_groups", frozenset(g for g in groups if isinstance(g, str))
            )
            try:
                matches = Marker(marker).evaluate(environment, context="lock_file")
            except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
                return None  # an odd marker must not hide a package
            if not matches:
                return f"marker '{marker}' does not match this environment"
        return None

    def _uv_skip(self, entry: dict[str, Any], _document: dict[str, Any]) -> str | None:
        source = entry.get("source")
        if not isinstance(source, dict):
            return None
        registry = source.get("registry")
        if isinstance(registry, str):
            if registry.startswith(("http://", "https://")) and not _same_index(
                registry, self.index_url
            ):
                return f"comes from another index ({registry})"
            return None
        kind = next(iter(source), "unknown source")
        return f"is not from an index ({kind} source)"

    def _poetry_skip(self, entry: dict[str, Any], _document: dict[str, Any]) -> str | None:
        source = entry.get("source")
        if not isinstance(source, dict):
            return None
        kind, url = source.get("type"), source.get("url")
        if kind == "legacy" and isinstance(url, str):
            return None if _same_index(url, self.index_url) else f"comes from another index ({url})"
        return f"is not from an index ({kind} source)"
