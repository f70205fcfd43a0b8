"""pip requirement files → the packages they name.

The line syntax (continuations, comments, ``${VAR}``, options) follows pip's own
reader; each requirement itself is parsed by ``packaging`` so the grammar is the
standard one, not a guess. Markers are evaluated for the running interpreter, as
pip would, and a skipped line is reported as a note rather than dropped silently.
No dependency resolution happens here: a requirement file is scanned as listed
(a lock file or ``--installed`` covers the whole tree).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from lapsewatch.scan.packages import Origin, PackageRef

__all__ = ["Parsed", "RequirementsError", "pinned_version", "read_requirements"]


class RequirementsError(ValueError):
    """A requirement file cannot be read; the message starts with ``file:line``."""


@dataclass(frozen=True)
class Parsed:
    refs: tuple[PackageRef, ...]
    notes: tuple[str, ...]


_COMMENT = re.compile(r"(^|\s+)#.*$")
_ENV_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
_NOT_A_NAME = re.compile(r"^(\.{1,2}[/\\]|[/\\~]|[A-Za-z][A-Za-z0-9+.-]*://|file:)")
_ARCHIVE = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".zip")

_INCLUDE = {"-r", "--requirement"}
_CONSTRAINT = {"-c", "--constraint"}
_EDITABLE = {"-e", "--editable"}
_INDEX = {"-i", "--index-url", "--extra-index-url", "--no-index", "-f", "--find-links"}
_GLOBAL = {
    "--pre",
    "--prefer-binary",
    "--require-hashes",
    "--only-binary",
    "--no-binary",
    "--trusted-host",
    "--use-feature",
}
_TAKES_VALUE = (
    _INCLUDE
    | _CONSTRAINT
    | _EDITABLE
    | (_INDEX - {"--no-index"})
    | {"--only-binary", "--no-binary", "--trusted-host", "--use-feature"}
)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join ``\\`` continuations (numbered by their first line), as pip does."""
    pending: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), 1):
        is_comment = line.lstrip().startswith("#")
        if not line.endswith("\\") or is_comment:
            if is_comment:
                line = " " + line  # a comment ends a continued line
            if pending:
                pending.append(line)
                yield first, "".join(pending)
                pending = []
            else:
                yield number, line
        else:
            if not pending:
                first = number
            pending.append(line[:-1])
    if pending:
        yield first, "".join(pending)


def _expand(line: str) -> str:
    """pip expands ``${NAME}`` (only that form) from the environment."""
    return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), m.group(0)), line)


def _split_option(line: str, where: str) -> tuple[str, str | None]:
    """``-r x``, ``-rx``, ``--requirement=x`` → (option, value)."""
    try:
        tokens = shlex.split(line, comments=False)
    except ValueError as exc:
        raise RequirementsError(f"{where}: {exc}") from None
    option, value = tokens[0], None
    if option.startswith("--") and "=" in option:
        option, value = option.split("=", 1)
    elif not option.startswith("--") and len(option) > 2:
        option, value = option[:2], option[2:]
    elif len(tokens) > 1:
        value = tokens[1]
    if option in _TAKES_VALUE and not value:
        raise RequirementsError(f"{where}: option {option} needs a value")
    return option, value


def _requirement_text(line: str) -> str:
    """The requirement part of a line: everything before its first ``-`` option."""
    words: list[str] = []
    for word in line.split(" "):
        if word.startswith("-") and words:
            break
        words.append(word)
    return " ".join(words).strip()


def pinned_version(requirement: Requirement) -> str | None:
    """The one version an ``==``/``===`` pin allows (not a wildcard), else ``None``."""
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


def read_requirements(
    path: Path, *, environment: Mapping[str, str] | None = None, shown: str | None = None
) -> Parsed:
    """Read ``path`` and the files it includes with ``-r``; raise :class:`RequirementsError`."""
    reader = _Reader(dict(environment) if environment else None)
    reader.read(path, shown or str(path), None)
    return Parsed(tuple(reader.refs), tuple(reader.notes))


class _Reader:
    def __init__(self, environment: dict[str, str] | None) -> None:
        self.environment = environment
        self.refs: list[PackageRef] = []
        self.notes: list[str] = []
        self.seen: set[Path] = set()

    def read(self, path: Path, shown: str, where: str | None) -> None:
        resolved = path.resolve()
        if resolved in self.seen:
            return  # included twice (or a cycle): its packages are already listed
        self.seen.add(resolved)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise RequirementsError(f"{where or shown}: no such requirement file {shown}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RequirementsError(f"{where or shown}: cannot read {shown}: {exc}") from None
        for number, raw in _logical_lines(text):
            line = _expand(_COMMENT.sub("", raw)).strip()
            if line:
                self.line(path, shown, number, line)

    def line(self, path: Path, shown: str, number: int, line: str) -> None:
        where = f"{shown}:{number}"
        if line.startswith("-"):
            self.option(path, shown, where, line)
            return
        text = _requirement_text(line)
        if _NOT_A_NAME.match(text) or (text.lower().endswith(_ARCHIVE) and "@" not in text):
            self.notes.append(f"{where}: {text} is a path or URL, not from an index: skipped")
            return
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            raise RequirementsError(f"{where}: not a valid requirement: {exc}") from None
        if requirement.url:
            self.notes.append(
                f"{where}: {requirement.name} is a direct reference ({requirement.url}), "
                "not from an index: skipped"
            )
            return
        if requirement.marker is not None:
            try:
                matches = requirement.marker.evaluate(self.environment)
            except (UndefinedComparison, UndefinedEnvironmentName, InvalidMarker) as exc:
                self.notes.append(f"{where}: marker of {requirement.name} not evaluated ({exc})")
                matches = True
            if not matches:
                self.notes.append(
                    f"{where}: {requirement.name} skipped: marker '{requirement.marker}' "
                    "does not match this environment"
                )
                return
        origin = Origin("requirements", shown, number)
        self.refs.append(PackageRef(requirement.name, pinned_version(requirement), origin))

    def option(self, path: Path, shown: str, where: str, line: str) -> None:
        option, value = _split_option(line, where)
        if option in _INCLUDE and value is not None:
            if _NOT_A_NAME.match(value) and "://" in value:
                self.notes.append(f"{where}: remote requirement file {value} skipped")
                return
            target = path.parent / value
            self.read(target, _join(shown, value), where)
        elif option in _CONSTRAINT:
            self.notes.append(
                f"{where}: constraint file {value} ignored: constraints only limit versions"
            )
        elif option in _EDITABLE:
            self.notes.append(f"{where}: editable {value} is a local project: skipped")
        elif option in _INDEX:
            self.notes.append(
                f"{where}: {option} ignored; the scan reads the index given by --index-url"
            )
        elif option not in _GLOBAL:
            raise RequirementsError(f"{where}: unknown option {option}")


def _join(shown: str, value: str) -> str:
    """A display path for an included file, relative like the one that included it."""
    parent = os.path.dirname(shown)
    return os.path.normpath(os.path.join(parent, value)) if parent else os.path.normpath(value)
