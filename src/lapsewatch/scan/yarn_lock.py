"""``yarn.lock`` → the packages it installs: classic (v1) and berry (Yarn 2+).

Berry lock files are YAML with a ``__metadata`` entry, read with PyYAML. Classic
lock files are not YAML; the parsers on PyPI either give no line numbers (which
every finding and error needs) or are GPL-licensed and marked "planning", so
this is a small reader of the format yarn documents and writes: entries at
indent 0 (``"a@^1.0.0", a@^1.1.0:``), their fields at indent 2 (``version
"1.2.3"``), nested maps (``dependencies:``) at 4; values quoted JSON-style or
bare; ``#`` comments. Anything else is an error naming the line.

Aliases (``string-width-cjs@npm:string-width@^4``) are scanned under the real
name; berry's ``patch:`` resolutions under the package they patch. Workspaces,
git, ``file:``/``link:``/``portal:`` and remote tarballs are skipped with a note.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from lapsewatch.scan.npm_specs import (
    NpmInputError,
    Parsed,
    load_yaml,
    registry_problem,
    spec_problem,
    split_spec,
)
from lapsewatch.scan.packages import Origin, PackageRef

__all__ = ["ClassicEntry", "parse_classic", "read_yarn_lock"]

BERRY_VERSIONS = frozenset(range(4, 9))
"""``__metadata.version``: 4 (Yarn 2), 5-6 (Yarn 3), 8 (Yarn 4)."""

_FIELD = re.compile(r'^(?P<key>"(?:[^"\\]|\\.)*"|[^\s"]+)(?:\s+(?P<value>.*?))?\s*$')


@dataclass(frozen=True)
class ClassicEntry:
    """One classic entry: the specs it satisfies and its fields (nested maps flattened)."""

    line: int
    specs: tuple[str, ...]
    fields: dict[str, str] = field(default_factory=dict)


def _unquote(text: str, where: str) -> str:
    if not text.startswith('"'):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise NpmInputError(f"{where}: unterminated or invalid quoted string {text!r}") from None
    if not isinstance(value, str):
        raise NpmInputError(f"{where}: expected a string, found {text!r}")
    return value


def _split_specs(text: str, where: str) -> tuple[str, ...]:
    """``"a@^1", a@^2`` → (``a@^1``, ``a@^2``), commas inside quotes kept."""
    specs = []
    for part in re.findall(r'"(?:[^"\\]|\\.)*"|[^,]+', text):
        part = part.strip()
        if part:
            specs.append(_unquote(part, where))
    if not specs:
        raise NpmInputError(f"{where}: an entry without any package spec")
    return tuple(specs)


def parse_classic(text: str, shown: str) -> list[ClassicEntry]:
    """Entries of a classic ``yarn.lock``; :class:`NpmInputError` on a malformed line."""
    entries: list[ClassicEntry] = []
    current: ClassicEntry | None = None
    parent: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{shown}:{number}"
        indent = len(line) - len(stripped)
        if "\t" in line[: indent + 1]:
            raise NpmInputError(f"{where}: tab in indentation")
        if indent == 0:
            if not line.endswith(":"):
                raise NpmInputError(f"{where}: expected an entry like 'name@range:', got {line!r}")
            current = ClassicEntry(number, _split_specs(line[:-1], where))
            entries.append(current)
            parent = None
            continue
        if current is None:
            raise NpmInputError(f"{where}: a field before any entry")
        if indent not in (2, 4) or (indent == 4 and parent is None):
            raise NpmInputError(f"{where}: unexpected indentation ({indent} spaces)")
        match = _FIELD.match(stripped)
        if match is None:
            raise NpmInputError(f"{where}: cannot read {stripped!r}")
        key = _unquote(match["key"], where)
        value = match["value"]
        if indent == 2:
            parent = None
            if key.endswith(":") and value is None:
                parent = key[:-1]
                continue
            if value is None:
                raise NpmInputError(f"{where}: field {key!r} without a value")
            current.fields[key] = _unquote(value, where)
        elif value is not None:
            current.fields[f"{parent}.{key}"] = _unquote(value, where)
    return entries


class _Yarn:
    def __init__(self, shown: str, registry: str) -> None:
        self.shown = shown
        self.registry = registry
        self.refs: list[PackageRef] = []
        self.notes: list[str] = []

    def where(self, line: int | None) -> str:
        return f"{self.shown}:{line}" if line else self.shown

    def skip(self, line: int | None, what: str, why: str) -> None:
        self.notes.append(f"{self.where(line)}: {what} {why}: skipped")

    def add(self, name: str, version: str, line: int | None) -> None:
        origin = Origin("lock", self.shown, line)
        self.refs.append(PackageRef(name, version, origin, ecosystem="npm"))

    def classic(self, entry: ClassicEntry) -> None:
        name, spec = split_spec(entry.specs[0])
        if spec.startswith("npm:"):  # an alias
            name, spec = split_spec(spec[4:])
        version = entry.fields.get("version")
        if not version:
            raise NpmInputError(f"{self.where(entry.line)}: {name} has no version")
        problem = spec_problem(spec) or registry_problem(
            entry.fields.get("resolved"), self.registry
        )
        if problem:
            self.skip(entry.line, name, problem)
            return
        self.add(name, version, entry.line)

    def berry(self, key: str, entry: object, line: int | None) -> None:
        if not isinstance(entry, dict):
            raise NpmInputError(f"{self.where(line)}: entry {key!r} is not a map")
        resolution = entry.get("resolution")
        if not isinstance(resolution, str) or "@" not in resolution[1:]:
            raise NpmInputError(f"{self.where(line)}: entry {key!r} has no resolution")
        name, protocol = split_spec(resolution)
        if protocol.startswith("patch:"):  # "patch:resolve@npm%3A1.22.1#~builtin<compat/...>"
            name, protocol = split_spec(unquote(protocol[6:].split("#", 1)[0]))
        if protocol.startswith("workspace:"):
            self.skip(line, name, f"is a workspace of this repository ({protocol})")
            return
        if not protocol.startswith("npm:"):
            why = spec_problem(protocol) or f"is not from the registry ({protocol})"
            self.skip(line, name, why)
            return
        version = protocol[4:].split("::", 1)[0]
        archive = protocol.partition("::__archiveUrl=")[2]
        problem = registry_problem(unquote(archive), self.registry) if archive else None
        if problem:
            self.skip(line, name, problem)
            return
        self.add(name, version, line)


def read_yarn_lock(text: str, shown: str, registry: str) -> Parsed:
    """Read a ``yarn.lock`` of either generation; :class:`NpmInputError` when it is bad."""
    reader = _Yarn(shown, registry)
    if re.search(r"^__metadata:", text, re.MULTILINE):
        document = load_yaml(text, shown)
        data = document.data
        if not isinstance(data, dict):
            raise NpmInputError(f"{shown}:1: not a yarn lock file (no mapping)")
        metadata = data.get("__metadata")
        version = metadata.get("version") if isinstance(metadata, dict) else None
        if str(version) not in {str(v) for v in BERRY_VERSIONS}:
            lines = document.lines
            line = lines.get(("__metadata", "version"), lines.get(("__metadata",)))
            known = ", ".join(str(v) for v in sorted(BERRY_VERSIONS))
            raise NpmInputError(
                f"{reader.where(line)}: unknown yarn lock file version {version!r}; known: {known}"
            )
        for key, entry in data.items():
            if key != "__metadata":
                reader.berry(str(key), entry, document.lines.get((str(key),)))
    else:
        if "# yarn lockfile v1" not in text[:500] and text.strip():
            raise NpmInputError(
                f"{shown}:1: unknown yarn lock file version: neither '# yarn lockfile v1' "
                "(classic) nor a '__metadata' entry (berry)"
            )
        for entry in parse_classic(text, shown):
            reader.classic(entry)
    return Parsed(tuple(reader.refs), tuple(reader.notes))
