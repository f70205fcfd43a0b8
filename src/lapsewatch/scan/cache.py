"""An on-disk cache of JSON values with an expiry, that can never fail a scan.

One file per entry (named by a hash of its key) so concurrent scans and partial
writes cannot corrupt each other: a file is written under a temporary name and
renamed into place, which is atomic on POSIX and Windows. An unreadable,
corrupt or unwritable cache only produces a warning; the scan then simply asks
the network again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["DiskCache", "default_cache_dir"]

FORMAT = 1
_TAG = "Signature: 8a477f597d28d172789f06886806bc55\n# lapsewatch scan cache\n"
"""A CACHEDIR.TAG (https://bford.info/cachedir/) so backup tools skip the cache."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lapsewatch/scan`` (``~/.cache`` when unset), like the bootstrap copy."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lapsewatch" / "scan"


class DiskCache:
    """``get``/``put`` JSON values by (namespace, key); entries expire after ``ttl`` seconds."""

    def __init__(
        self,
        root: Path,
        ttl: float,
        *,
        warn: Callable[[str], None] = lambda _message: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.ttl = ttl
        self._warn = warn
        self._clock = clock
        self._writable = True
        self._warned: set[str] = set()
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def _path(self, namespace: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.root / f"v{FORMAT}" / namespace / digest[:2] / f"{digest}.json"

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self._warn(message)

    def get(self, namespace: str, key: str) -> Any | None:
        """The stored value if present and fresh, else ``None`` (never raises)."""
        path = self._path(namespace, key)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self._warn_once("read", f"cannot read the cache ({exc}); asking the network instead")
            self.misses += 1
            return None
        try:
            entry = json.loads(text)
            if not isinstance(entry, dict) or entry.get("key") != key:
                raise ValueError("not an entry for this key")
            expires = float(entry["expires"])
            value = entry["value"]
        except (ValueError, KeyError, TypeError):
            self._warn_once(
                "corrupt", f"ignored a corrupt cache entry ({path}); it will be rewritten"
            )
            self.misses += 1
            return None
        if expires <= self._clock():
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, namespace: str, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` (JSON-serialisable) atomically; failures only warn, once."""
        if not self._writable:
            return
        path = self._path(namespace, key)
        entry = {
            "key": key,
            "stored": self._clock(),
            "expires": self._clock() + (self.ttl if ttl is None else ttl),
            "value": value,
        }
        temporary: str | None = None
        try:
            self._prepare(path.parent)
            descriptor, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=".tmp-", suffix=".json"
            )
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(entry, handle, ensure_ascii=False, separators=(",", ":"))
            os.replace(temporary, path)
            temporary = None
            self.writes += 1
        except (OSError, TypeError, ValueError) as exc:
            self._writable = False
            self._warn(f"cannot write the cache in {self.root} ({exc}); results are not saved")
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    def _prepare(self, directory: Path) -> None:
        if directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            with contextlib.suppress(OSError):
                tag.write_text(_TAG, encoding="utf-8")
