"""Everything a user can point the scan at → packages to look up and metadata already in hand.

Requirement and lock files name packages to look up on the index (which also
gives each release's upload date); wheels, sdists and the running environment
carry their metadata themselves. A package named on the command line is read
from the environment when it is installed in the wanted version, and from the
index otherwise. Every reader raises a ``ValueError`` subclass that names the
file (and line); the command turns that into exit code 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from lapsewatch.scan.local import DistError, installed, read_dist
from lapsewatch.scan.locks import LockError, read_lock
from lapsewatch.scan.packages import Origin, PackageMetadata, PackageRef, same_version
from lapsewatch.scan.requirements import RequirementsError, pinned_version, read_requirements

__all__ = ["InputError", "ScanInputs", "collect", "parse_name"]


class InputError(ValueError):
    """An input cannot be used; the message names it."""


@dataclass(frozen=True)
class ScanInputs:
    refs: tuple[PackageRef, ...] = ()
    """Packages to look up on the index."""
    local: tuple[PackageMetadata, ...] = ()
    """Packages whose metadata is already known (installed, dist files)."""
    notes: tuple[str, ...] = ()
    """Lines skipped on purpose, and why."""

    @property
    def empty(self) -> bool:
        return not self.refs and not self.local


def parse_name(text: str) -> tuple[str, str | None]:
    """A command-line package: ``name`` or ``name==version`` (any PEP 508 requirement)."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise InputError(f"{text!r} is not a package name or name==version: {exc}") from None
    if requirement.url:
        raise InputError(f"{text!r} is a direct reference; scan the file with --dist instead")
    return requirement.name, pinned_version(requirement)


def collect(
    *,
    requirements: Sequence[Path] = (),
    locks: Sequence[Path] = (),
    dists: Sequence[Path] = (),
    names: Sequence[str] = (),
    include_installed: bool = False,
    index_url: str,
    environment: Mapping[str, str] | None = None,
) -> ScanInputs:
    """Read every input; raise :class:`InputError` (or a reader's error) on bad input."""
    refs: list[PackageRef] = []
    local: list[PackageMetadata] = []
    notes: list[str] = []
    try:
        for path in requirements:
            parsed = read_requirements(path, environment=environment)
            refs.extend(parsed.refs)
            notes.extend(parsed.notes)
        for path in locks:
            parsed = read_lock(path, index_url=index_url, environment=environment)
            refs.extend(parsed.refs)
            notes.extend(parsed.notes)
        local.extend(read_dist(path) for path in dists)
    except (RequirementsError, LockError, DistError) as exc:
        raise InputError(str(exc)) from None
    environment_packages = installed() if (include_installed or names) else ()
    if include_installed:
        local.extend(environment_packages)
    by_name = {canonicalize_name(p.name): p for p in environment_packages}
    for text in names:
        name, version = parse_name(text)
        origin = Origin("argument")
        have = by_name.get(canonicalize_name(name))
        if have is not None and same_version(version, have.version):
            local.append(have.with_origins(origin))
        else:
            refs.append(PackageRef(name, version, origin))
    return ScanInputs(tuple(refs), tuple(local), tuple(notes))
