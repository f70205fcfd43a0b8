"""npm inputs → the packages they install: ``package-lock.json`` (lockfileVersion 1, 2
and 3), ``npm-shrinkwrap.json`` (the same format), ``pnpm-lock.yaml`` (5.x, 6.x, 9.x),
``yarn.lock`` (classic v1 and berry, see :mod:`lapsewatch.scan.yarn_lock`) and a bare
``package.json`` (direct dependencies, each range resolved on the registry).

A lock file lists the whole installed tree, nested ``node_modules`` copies
included, with the real name behind an alias (``"string-width-cjs":
"npm:string-width@^4"``). Workspace packages, links, git, local and remote
tarball dependencies are skipped with a note: they have no registry account.
Each package points back at its line, and every error names the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from lapsewatch.scan.json_lines import KeyPath, key_lines
from lapsewatch.scan.npm_specs import (
    NpmInputError,
    Parsed,
    load_yaml,
    registry_problem,
    spec_problem,
    split_spec,
    valid_range,
)
from lapsewatch.scan.packages import Origin, PackageRef
from lapsewatch.scan.yarn_lock import read_yarn_lock

__all__ = ["NPM_FILES", "NpmInputError", "NpmKind", "npm_kind", "read_npm"]

NpmKind = Literal["package-lock", "pnpm", "yarn", "package-json"]
NPM_FILES: dict[str, NpmKind] = {
    "npm-shrinkwrap.json": "package-lock",
    "package-lock.json": "package-lock",
    "pnpm-lock.yaml": "pnpm",
    "yarn.lock": "yarn",
    "package.json": "package-json",
}
"""npm's own order: a shrinkwrap wins over a package-lock, a lock file over package.json."""

_DEPENDENCY_SECTIONS = ("dependencies", "devDependencies", "optionalDependencies")
"""``peerDependencies`` are the consumer's to install, so a bare package.json skips them."""
_PNPM_MAJORS = (5, 6, 9)


def npm_kind(path: Path) -> NpmKind | None:
    return NPM_FILES.get(path.name)


def read_npm(path: Path, *, registry: str, shown: str | None = None) -> Parsed:
    """Read one npm input; raise :class:`NpmInputError` (``file:line: why``) when it is bad."""
    kind = npm_kind(path)
    shown = shown or str(path)
    if kind is None:
        known = ", ".join(NPM_FILES)
        raise NpmInputError(f"{shown}: not an npm file this scan reads ({known})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise NpmInputError(f"{shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NpmInputError(f"{shown}: cannot read the file: {exc}") from None
    reader = _Reader(shown, registry)
    if kind == "yarn":
        return read_yarn_lock(text, shown, registry)
    if kind == "pnpm":
        reader.pnpm(text)
    else:
        data = _json(text, shown)
        lines = key_lines(text)
        if kind == "package-json":
            reader.package_json(data, lines)
        else:
            reader.package_lock(data, lines)
    return Parsed(tuple(reader.refs), tuple(reader.notes))


def _json(text: str, shown: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NpmInputError(
            f"{shown}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise NpmInputError(f"{shown}:1: not a JSON object")
    return data


def _node_name(path: str) -> str:
    """``node_modules/a/node_modules/@s/b`` → ``@s/b``."""
    return path.rsplit("node_modules/", 1)[-1]


class _Reader:
    def __init__(self, shown: str, registry: str) -> None:
        self.shown = shown
        self.registry = registry
        self.refs: list[PackageRef] = []
        self.notes: list[str] = []

    def where(self, line: int | None) -> str:
        return f"{self.shown}:{line}" if line else self.shown

    def add(
        self, name: str, version: str | None, line: int | None, spec: str | None = None
    ) -> None:
        origin = Origin("lock", self.shown, line)
        self.refs.append(PackageRef(name, version, origin, ecosystem="npm", spec=spec))

    def skip(self, line: int | None, what: str, why: str) -> None:
        self.notes.append(f"{self.where(line)}: {what} {why}: skipped")

    # -- package-lock.json / npm-shrinkwrap.json -------------------------------------------

    def package_lock(self, data: dict[str, Any], lines: dict[KeyPath, int]) -> None:
        version = data.get("lockfileVersion")
        if version not in (1, 2, 3):
            line = lines.get(("lockfileVersion",))
            raise NpmInputError(
                f"{self.where(line)}: unknown lockfileVersion {version!r}; known: 1, 2, 3"
            )
        if version == 1:
            dependencies = data.get("dependencies", {})
            self.v1_dependencies(dependencies, ("dependencies",), lines)
            return
        packages = data.get("packages")
        if not isinstance(packages, dict):
            raise NpmInputError(
                f"{self.where(lines.get(('lockfileVersion',)))}: lockfileVersion {version} "
                "without a 'packages' object"
            )
        for path, entry in packages.items():
            self.v2_entry(path, entry, lines.get(("packages", path)))

    def v2_entry(self, path: str, entry: Any, line: int | None) -> None:
        if path == "":
            return  # the project itself
        if not isinstance(entry, dict):
            raise NpmInputError(f"{self.where(line)}: entry {path!r} is not an object")
        if not path.startswith("node_modules/") and "/node_modules/" not in path:
            self.skip(line, path, "is a folder of this repository (a workspace or file: target)")
            return
        name = entry.get("name") or _node_name(path)  # "name" is set for an alias
        if not isinstance(name, str):
            raise NpmInputError(f"{self.where(line)}: the name of {path!r} is not a string")
        resolved = entry.get("resolved")
        if entry.get("link"):
            self.skip(line, name, f"is a link to {resolved or 'a local folder'}")
            return
        problem = registry_problem(resolved if isinstance(resolved, str) else None, self.registry)
        if problem:
            self.skip(line, name, problem)
            return
        version = entry.get("version")
        if not isinstance(version, str) or not version:
            self.skip(line, name, "has no version")
            return
        self.add(name, version, line)

    def v1_dependencies(self, deps: Any, path: KeyPath, lines: dict[KeyPath, int]) -> None:
        if not isinstance(deps, dict):
            raise NpmInputError(f"{self.where(lines.get(path))}: 'dependencies' is not an object")
        for name, entry in deps.items():
            here = (*path, name)
            line = lines.get(here)
            if not isinstance(entry, dict):
                raise NpmInputError(f"{self.where(line)}: entry {name!r} is not an object")
            self.v1_entry(name, entry, line)
            if "dependencies" in entry:
                self.v1_dependencies(entry["dependencies"], (*here, "dependencies"), lines)

    def v1_entry(self, name: str, entry: dict[str, Any], line: int | None) -> None:
        version = entry.get("version")
        if not isinstance(version, str) or not version:
            raise NpmInputError(f"{self.where(line)}: {name} has no version")
        if version.startswith("npm:"):  # an alias: "npm:string-width@4.2.3"
            name, version = split_spec(version[4:])
        problem = spec_problem(version)
        resolved = entry.get("resolved")
        problem = problem or registry_problem(
            resolved if isinstance(resolved, str) else None, self.registry
        )
        if problem:
            self.skip(line, name, problem)
            return
        self.add(name, version, line)

    # -- package.json -------------------------------------------------------------------------

    def package_json(self, data: dict[str, Any], lines: dict[KeyPath, int]) -> None:
        if "workspaces" in data:
            self.notes.append(
                f"{self.where(lines.get(('workspaces',)))}: workspaces are not followed from "
                "package.json; scan the lock file to cover them"
            )
        for section in _DEPENDENCY_SECTIONS:
            deps = data.get(section, {})
            if not isinstance(deps, dict):
                line = lines.get((section,))
                raise NpmInputError(f"{self.where(line)}: '{section}' is not an object")
            for name, spec in deps.items():
                line = lines.get((section, name))
                if not isinstance(spec, str):
                    raise NpmInputError(f"{self.where(line)}: the range of {name} is not a string")
                self.direct(name, spec.strip(), line)

    def direct(self, name: str, spec: str, line: int | None) -> None:
        if spec.startswith("npm:"):
            name, spec = split_spec(spec[4:])
        problem = spec_problem(spec)
        if problem:
            self.skip(line, name, problem)
            return
        if not valid_range(spec):
            raise NpmInputError(f"{self.where(line)}: {name}: not an npm version range: {spec!r}")
        self.add(name, None, line, spec=spec or "*")

    # -- pnpm-lock.yaml -----------------------------------------------------------------------

    def pnpm(self, text: str) -> None:
        document = load_yaml(text, self.shown)
        data, lines = document.data, document.lines
        if not isinstance(data, dict):
            raise NpmInputError(f"{self.shown}:1: not a pnpm lock file (no mapping)")
        raw = data.get("lockfileVersion")
        line = lines.get(("lockfileVersion",))
        try:
            major = int(str(raw).split(".", 1)[0])
        except ValueError:
            major = -1
        if major not in _PNPM_MAJORS:
            raise NpmInputError(
                f"{self.where(line)}: unknown pnpm lockfileVersion {raw!r}; known: 5.x, 6.x, 9.x"
            )
        self.pnpm_links(data, lines)
        packages = data.get("packages") or {}
        if not isinstance(packages, dict):
            raise NpmInputError(f"{self.where(lines.get(('packages',)))}: 'packages' is not a map")
        for key, entry in packages.items():
            self.pnpm_entry(str(key), entry, major, lines.get(("packages", str(key))))

    def pnpm_links(self, data: dict[str, Any], lines: dict[tuple[str, ...], int]) -> None:
        importers = data.get("importers")
        if not isinstance(importers, dict):
            return
        line = lines.get(("importers",))
        for importer, project in importers.items():
            for name, version in _importer_deps(project):
                if version.startswith("link:"):
                    self.skip(
                        lines.get(("importers", str(importer)), line),
                        f"{name} (in {importer})",
                        f"is a workspace link ({version})",
                    )

    def pnpm_entry(self, key: str, entry: Any, major: int, line: int | None) -> None:
        if not isinstance(entry, dict):
            entry = {}
        parsed = _pnpm_key(key, major)
        resolution = entry.get("resolution")
        resolution = resolution if isinstance(resolution, dict) else {}
        name = entry.get("name") if isinstance(entry.get("name"), str) else None
        if parsed is None or resolution.get("type") in ("git", "directory"):
            what = name or (parsed[0] if parsed else split_spec(key.lstrip("/"))[0])
            kind = resolution.get("type") or ("tarball" if "tarball" in resolution else "git")
            self.skip(line, what, f"is a {kind} dependency ({key}), not from the registry")
            return
        name, version = parsed
        tarball = resolution.get("tarball")
        problem = registry_problem(tarball, self.registry) if isinstance(tarball, str) else None
        if problem is None and not valid_range(version):
            problem = f"has version {version!r}, not from the registry"
        if problem:
            self.skip(line, name, problem)
            return
        self.add(name, version, line)


def _importer_deps(project: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(project, dict):
        return
    for section in ("dependencies", "devDependencies", "optionalDependencies"):
        deps = project.get(section)
        if not isinstance(deps, dict):
            continue
        for name, value in deps.items():
            version = value.get("version") if isinstance(value, dict) else value
            if isinstance(version, str):
                yield str(name), version


def _pnpm_key(key: str, major: int) -> tuple[str, str] | None:
    """A ``packages`` key → (name, version); ``None`` when it is not a registry package.

    5.x: ``/name/1.2.3_peer@1.0.0``; 6.x: ``/name@1.2.3(peer@1.0.0)``; 9.x:
    ``name@1.2.3``. Keys of git, tarball and directory dependencies have another shape.
    """
    if major < 9:
        if not key.startswith("/"):
            return None
        key = key[1:]
    key = key.split("(", 1)[0]
    if major == 5:
        name, _, version = key.rpartition("/")
        version = version.split("_", 1)[0]
    else:
        name, version = split_spec(key)
    if not name or not version or ":" in version or "/" in version:
        return None
    return name, version
