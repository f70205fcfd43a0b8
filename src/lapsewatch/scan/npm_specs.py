"""What every npm input reader shares: where a dependency comes from, and YAML with lines.

Only packages from the npm registry have an account whose password reset could
be hijacked, so git, local (``file:``, ``link:``, ``workspace:``) and remote
tarball dependencies are skipped with a note. A package resolved from *another*
registry (a private one) is skipped too: looking its name up on the public
registry could describe an unrelated package of the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import semantic_version  # type: ignore[import-untyped, unused-ignore]
import yaml  # type: ignore[import-untyped, unused-ignore]

from lapsewatch.scan.requirements import Parsed

__all__ = [
    "NpmInputError",
    "Parsed",
    "YamlDocument",
    "load_yaml",
    "registry_problem",
    "spec_problem",
    "split_spec",
    "valid_range",
]

PUBLIC_REGISTRY_HOSTS = frozenset({"registry.npmjs.org", "registry.yarnpkg.com"})
_LOCAL = ("file:", "link:", "workspace:", "portal:", "exec:")
_GIT = ("git:", "git+", "github:", "gitlab:", "bitbucket:", "gist:")
_GITHUB_SHORTHAND = re.compile(r"^[\w.-]+/[\w.-]+(#.*)?$")
_TAG = re.compile(r"^[A-Za-z][\w.-]*$")


class NpmInputError(ValueError):
    """An npm input cannot be read; the message starts with ``file:line`` where known."""


def split_spec(text: str) -> tuple[str, str]:
    """``left-pad@^1.3.0`` → (``left-pad``, ``^1.3.0``); a scope's ``@`` is part of the name."""
    at = text.find("@", 1)
    if at < 0:
        return text, ""
    return text[:at], text[at + 1 :]


def spec_problem(spec: str) -> str | None:
    """Why a dependency spec is not a registry package (``None`` when it is one)."""
    if spec.startswith(_LOCAL):
        kind = spec.split(":", 1)[0]
        return f"is a local dependency ({kind}:), not from the registry"
    if spec.startswith(_GIT) or spec.endswith(".git"):
        return "is a git dependency, not from the registry"
    if "://" in spec:
        return "is a URL dependency, not from the registry"
    if _GITHUB_SHORTHAND.match(spec):
        return "is a GitHub shorthand (user/repo), not from the registry"
    return None


def valid_range(spec: str) -> bool:
    """An npm range (``semantic_version.NpmSpec``) or a dist-tag name (``next``)."""
    if _TAG.match(spec):
        return True
    try:
        semantic_version.NpmSpec(spec)
    except ValueError:
        return False
    return True


def registry_problem(resolved: str | None, registry: str) -> str | None:
    """Why a lock file's ``resolved`` URL is not the registry's tarball (``None`` when it is)."""
    if not resolved:
        return None
    if resolved.startswith((*_GIT, "git@")) or ".git#" in resolved:
        return "is a git dependency, not from the registry"
    parts = urlsplit(resolved)
    if parts.scheme not in ("http", "https"):
        return f"is a local dependency ({resolved}), not from the registry"
    host = (parts.hostname or "").lower()
    if "/-/" not in parts.path:
        return f"is a remote tarball ({host}), not from the registry"
    if host not in PUBLIC_REGISTRY_HOSTS and host != (urlsplit(registry).hostname or "").lower():
        return f"comes from another registry ({host})"
    return None


@dataclass(frozen=True)
class YamlDocument:
    """A YAML document and the line of each key of its top-level and second-level maps."""

    data: Any
    lines: dict[tuple[str, ...], int]


def _loader() -> Any:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it


def load_yaml(text: str, shown: str) -> YamlDocument:
    """Safe-load YAML, keeping key lines; :class:`NpmInputError` with ``file:line`` when invalid."""
    loader = _loader()(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        problem = getattr(exc, "problem", None) or str(exc)
        raise NpmInputError(f"{where}: not valid YAML: {problem}") from None
    finally:
        loader.dispose()
    lines: dict[tuple[str, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(str(key.value),)] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                for inner, _ in value.value:
                    lines[(str(key.value), str(inner.value))] = inner.start_mark.line + 1
    return YamlDocument(data, lines)
