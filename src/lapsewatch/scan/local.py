"""Metadata that needs no index: the running environment and wheel/sdist files.

Both read the same core metadata file (``METADATA`` in a wheel or an installed
``.dist-info``, ``PKG-INFO`` in an sdist), so they work offline and show exactly
what was installed or is about to be published.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from lapsewatch.scan.packages import Origin, PackageMetadata, metadata_from_email

__all__ = ["DistError", "installed", "read_dist"]

MAX_METADATA_BYTES = 4 * 1024 * 1024
"""Larger "metadata" is not metadata; refusing it bounds the work on hostile files."""

_WHEEL_METADATA = re.compile(r"^[^/]+\.dist-info/METADATA$")
_SDIST_METADATA = re.compile(r"^[^/]+/PKG-INFO$")


class DistError(ValueError):
    """A file given with ``--dist`` is not a readable wheel or sdist."""


def installed(path: list[str] | None = None) -> tuple[PackageMetadata, ...]:
    """Every distribution importable from ``path`` (default ``sys.path``), first one wins."""
    found: dict[str, PackageMetadata] = {}
    dists = (
        importlib_metadata.distributions(path=path)
        if path is not None
        else importlib_metadata.distributions()
    )
    for dist in dists:
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        if not text:
            continue
        where = dist.locate_file("")
        origin = Origin("installed", str(where) if where else None)
        try:
            meta = metadata_from_email(text, origin)
        except ValueError:
            continue
        found.setdefault(canonicalize_name(meta.name), meta)
    return tuple(found[key] for key in sorted(found))


def read_dist(path: Path, shown: str | None = None) -> PackageMetadata:
    """Core metadata of a wheel (``.whl``) or sdist (``.tar.gz``, ``.zip``)."""
    shown = shown or str(path)
    origin = Origin("dist", shown)
    name = path.name.lower()
    if not path.is_file():
        raise DistError(f"{shown}: no such file")
    try:
        if name.endswith(".whl"):
            data = _from_zip(path, _WHEEL_METADATA, shown, "*.dist-info/METADATA")
        elif name.endswith(".zip"):
            data = _from_zip(path, _SDIST_METADATA, shown, "*/PKG-INFO")
        elif ".tar" in name or name.endswith(".tgz"):
            data = _from_tar(path, shown)
        else:
            raise DistError(f"{shown}: not a wheel (.whl) or sdist (.tar.gz, .zip)")
        return metadata_from_email(data, origin)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise DistError(f"{shown}: cannot read the archive: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, DistError):
            raise
        raise DistError(f"{shown}: {exc}") from None


def _from_zip(path: Path, pattern: re.Pattern[str], shown: str, wanted: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        names = [info for info in archive.infolist() if pattern.match(info.filename)]
        if len(names) != 1:
            raise DistError(f"{shown}: expected one {wanted}, found {len(names)}")
        if names[0].file_size > MAX_METADATA_BYTES:
            raise DistError(f"{shown}: {names[0].filename} is too large to be metadata")
        return archive.read(names[0])


def _from_tar(path: Path, shown: str) -> bytes:
    with tarfile.open(path, mode="r:*") as archive:
        members = [m for m in archive.getmembers() if m.isfile() and _SDIST_METADATA.match(m.name)]
        if len(members) != 1:
            raise DistError(f"{shown}: expected one */PKG-INFO, found {len(members)}")
        if members[0].size > MAX_METADATA_BYTES:
            raise DistError(f"{shown}: {members[0].name} is too large to be metadata")
        handle = archive.extractfile(members[0])
        if handle is None:
            raise DistError(f"{shown}: cannot read {members[0].name}")
        with handle:
            return handle.read()
