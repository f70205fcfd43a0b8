"""Everything a user can point the scan at → packages to look up and metadata already in hand.

Requirement and lock files name packages to look up on the index (which also
gives each release's upload date); wheels, sdists and the running environment
carry their metadata themselves. A package named on the command line is read
from the environment when it is installed in the wanted version, and from the
index otherwise. Every reader raises a ``ValueError`` subclass that names the
file (and line); the command turns that into exit code 2.

npm packages come from npm's lock files, a bare ``package.json`` or ``npm:NAME``
arguments. A path argument is read by its file name; a directory is searched
for the files this scan knows (not its sub-directories: ``node_modules`` alone
would be thousands), so ``lapsewatch scan .`` covers a mixed Python and npm tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from lapsewatch.scan.local import DistError, installed, read_dist
from lapsewatch.scan.locks import LockError, read_lock
from lapsewatch.scan.npm_locks import NPM_FILES, NpmInputError, npm_kind, read_npm
from lapsewatch.scan.npm_specs import split_spec, valid_range
from lapsewatch.scan.packages import Origin, PackageMetadata, PackageRef, same_version
from lapsewatch.scan.requirements import RequirementsError, pinned_version, read_requirements

__all__ = ["ScanInputError", "ScanInputs", "collect", "find_inputs", "is_input_path", "parse_name"]

_REQUIREMENTS = re.compile(r"^requirements[^/]*\.txt$")
_PYTHON_LOCKS = re.compile(r"^(pylock(\.[^.]+)?\.toml|uv\.lock|poetry\.lock)$")
_NPM_LOCKS = ("npm-shrinkwrap.json", "package-lock.json", "pnpm-lock.yaml", "yarn.lock")
_NPM_NAME = re.compile(r"^(@[a-z0-9][\w.~-]*/)?[a-z0-9_~][\w.~-]*$", re.IGNORECASE)


class ScanInputError(ValueError):
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


def _npm_name(text: str) -> PackageRef:
    """``npm:left-pad``, ``npm:left-pad@1.3.0``, ``npm:@scope/name@^2``."""
    name, wanted = split_spec(text[4:].strip())
    if not _NPM_NAME.match(name):
        raise ScanInputError(f"{text!r} is not an npm package name")
    origin = Origin("argument")
    if not wanted:
        return PackageRef(name, None, origin, ecosystem="npm")
    if not valid_range(wanted):
        raise ScanInputError(f"{text!r}: {wanted!r} is not an npm version, range or dist-tag")
    exact = re.fullmatch(r"v?\d+\.\d+\.\d+(-[\w.-]+)?(\+[\w.-]+)?", wanted)
    if exact:
        return PackageRef(name, wanted.removeprefix("v"), origin, ecosystem="npm")
    return PackageRef(name, None, origin, ecosystem="npm", spec=wanted)


def is_input_path(text: str) -> bool:
    """Whether a command-line argument names a file or directory to read, not a package."""
    path = Path(text)
    if not path.exists():
        return False
    return path.is_dir() or _file_kind(path) is not None


def _file_kind(path: Path) -> str | None:
    name = path.name
    if name in NPM_FILES:
        return "npm"
    if _REQUIREMENTS.match(name):
        return "requirements"
    if _PYTHON_LOCKS.match(name):
        return "lock"
    return None


def find_inputs(directory: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """The known files in ``directory``: (requirement files, Python locks, npm inputs).

    As npm itself: ``npm-shrinkwrap.json`` wins over ``package-lock.json``, and a bare
    ``package.json`` is read only when no npm lock file is there.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file())
    requirements = [p for p in files if _REQUIREMENTS.match(p.name)]
    locks = [p for p in files if _PYTHON_LOCKS.match(p.name)]
    present = {p.name for p in files}
    npm = [directory / name for name in _NPM_LOCKS if name in present]
    if "npm-shrinkwrap.json" in present:
        npm = [p for p in npm if p.name != "package-lock.json"]
    if not npm and "package.json" in present:
        npm = [directory / "package.json"]
    return requirements, locks, npm


def parse_name(text: str) -> tuple[str, str | None]:
    """A command-line package: ``name`` or ``name==version`` (any PEP 508 requirement)."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement as exc:
        raise ScanInputError(f"{text!r} is not a package name or name==version: {exc}") from None
    if requirement.url:
        raise ScanInputError(f"{text!r} is a direct reference; scan the file with --dist instead")
    return requirement.name, pinned_version(requirement)


def collect(
    *,
    requirements: Sequence[Path] = (),
    locks: Sequence[Path] = (),
    dists: Sequence[Path] = (),
    names: Sequence[str] = (),
    paths: Sequence[Path] = (),
    include_installed: bool = False,
    index_url: str,
    npm_registry_url: str = "https://registry.npmjs.org",
    environment: Mapping[str, str] | None = None,
) -> ScanInputs:
    """Read every input; raise :class:`ScanInputError` (or a reader's error) on bad input."""
    refs: list[PackageRef] = []
    local: list[PackageMetadata] = []
    notes: list[str] = []
    requirements, locks, npm = list(requirements), list(locks), []
    for path in paths:
        if path.is_dir():
            found = find_inputs(path)
            if not any(found):
                raise ScanInputError(
                    f"{path}: no known dependency file here (requirements*.txt, pylock.toml, "
                    f"uv.lock, poetry.lock, {', '.join(NPM_FILES)})"
                )
            notes.append(f"{path}: reading {', '.join(p.name for group in found for p in group)}")
            requirements += found[0]
            locks += found[1]
            npm += found[2]
        else:
            kind = _file_kind(path)
            target = {"requirements": requirements, "lock": locks, "npm": npm}.get(kind or "")
            if target is None:
                raise ScanInputError(f"{path}: not a dependency file this scan knows")
            target.append(path)
    try:
        for path in requirements:
            parsed = read_requirements(path, environment=environment)
            refs.extend(parsed.refs)
            notes.extend(parsed.notes)
        for path in locks:
            if npm_kind(path) in ("package-lock", "pnpm", "yarn"):
                npm.append(path)  # --lock takes npm's lock files too
                continue
            parsed = read_lock(path, index_url=index_url, environment=environment)
            refs.extend(parsed.refs)
            notes.extend(parsed.notes)
        for path in npm:
            parsed = read_npm(path, registry=npm_registry_url)
            refs.extend(parsed.refs)
            notes.extend(parsed.notes)
        local.extend(read_dist(path) for path in dists)
    except (RequirementsError, LockError, DistError, NpmInputError) as exc:
        raise ScanInputError(str(exc)) from None
    python_names = [text for text in names if not text.startswith("npm:")]
    refs.extend(_npm_name(text) for text in names if text.startswith("npm:"))
    environment_packages = installed() if (include_installed or python_names) else ()
    if include_installed:
        local.extend(environment_packages)
    by_name = {canonicalize_name(p.name): p for p in environment_packages}
    for text in python_names:
        name, version = parse_name(text)
        origin = Origin("argument")
        have = by_name.get(canonicalize_name(name))
        if have is not None and same_version(version, have.version):
            local.append(have.with_origins(origin))
        else:
            refs.append(PackageRef(name, version, origin))
    return ScanInputs(tuple(refs), tuple(local), tuple(notes))
