"""``lapsewatch scan``: which packages I depend on have a maintainer address on a
domain that is lapsing, for sale or was re-registered?

Inputs (requirement files, lock files, wheels, sdists, the environment, names)
→ core metadata (locally or from a JSON-API index) → addresses → each distinct
domain checked once with the verdict engine → one finding per package and
address. Formats live in :mod:`lapsewatch.formats`; the command in
:mod:`lapsewatch.commands.scan`.
"""

from lapsewatch.scan.cache import DiskCache, default_cache_dir
from lapsewatch.scan.findings import Finding, ScanReport, Status, parse_fail_on
from lapsewatch.scan.index import DEFAULT_INDEX_URL
from lapsewatch.scan.inputs import ScanInputError, ScanInputs, collect
from lapsewatch.scan.run import Progress, ScanOptions, run_scan, scan

__all__ = [
    "DEFAULT_INDEX_URL",
    "DiskCache",
    "Finding",
    "Progress",
    "ScanInputError",
    "ScanInputs",
    "ScanOptions",
    "ScanReport",
    "Status",
    "collect",
    "default_cache_dir",
    "parse_fail_on",
    "run_scan",
    "scan",
]
