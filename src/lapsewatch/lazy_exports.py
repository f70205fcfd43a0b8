"""A package's re-exports, imported on first use (PEP 562).

Importing ``lapsewatch.cycle.due`` runs ``lapsewatch/cycle/__init__.py`` first; when
that file imported everything it re-exports, every command paid for the whole cycle,
every source and its HTTP client (about 0.3 s each) before doing anything. A package
lists its re-exports here instead, and for type checkers under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps each name to the
    submodule (relative to ``package``) that defines it."""

    def __getattr__(name: str) -> object:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{submodule}"), name)

    return __getattr__
