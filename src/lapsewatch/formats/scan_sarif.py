"""``lapsewatch scan --format sarif``: SARIF 2.1.0 for code-scanning dashboards.

One result per package and address; one rule per status, always all of them in
the same order so ``ruleIndex`` is stable between runs. Levels: ``error`` for a
dangerous verdict (the address can be taken over), ``warning`` when the scan
could not tell (``unknown``, ``not_found``, ``metadata_error``), ``note`` for
the rest (registered, free provider, unparseable, no address). Results point at
the requirement or lock file line that named the package when there is one;
``partialFingerprints`` keep an alert stable across runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePath
from typing import Any

from rich.console import Console

from lapsewatch import __version__
from lapsewatch.formats.scan_json import evidence, first_published
from lapsewatch.scan.findings import Finding, ScanReport, Status

__all__ = ["SARIF_SCHEMA", "level", "render", "sarif_log"]

SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
FINGERPRINT = "lapsewatchFinding/v1"

_RULES: dict[Status, tuple[str, str]] = {
    Status.EXPIRING: (
        "MaintainerDomainExpiring",
        "The domain has expired or is in its renewal grace period; unless renewed it will be "
        "released and anyone can register it.",
    ),
    Status.REDEMPTION: (
        "MaintainerDomainInRedemption",
        "The registration has lapsed; the domain is in its redemption grace period and will "
        "be released soon.",
    ),
    Status.PENDING_DELETE: (
        "MaintainerDomainPendingDelete",
        "The registry is about to release the domain; drop-catchers register such names within "
        "minutes.",
    ),
    Status.AVAILABLE: (
        "MaintainerDomainAvailable",
        "The domain is not registered: anyone can register it and receive this address's mail.",
    ),
    Status.REREGISTERED: (
        "MaintainerDomainReregistered",
        "The domain was registered after the release that published this address: its owner "
        "may be someone else now.",
    ),
    Status.FOR_SALE: (
        "MaintainerDomainForSale",
        "The domain is parked or offered for sale: its owner is a reseller, not the maintainer.",
    ),
    Status.MAIL_HOST_LAPSED: (
        "MaintainerMailHostLapsed",
        "The domain is registered, but a mail host (MX) it uses sits on another domain that is "
        "lapsing, free or for sale: whoever registers that domain receives this address's mail.",
    ),
    Status.UNKNOWN: (
        "MaintainerDomainUnknown",
        "No status source could say what state the domain is in; it is checked again next time.",
    ),
    Status.NOT_FOUND: (
        "PackageNotFound",
        "The index has no such package or version, so its maintainers could not be checked.",
    ),
    Status.METADATA_ERROR: (
        "PackageMetadataUnavailable",
        "The package's metadata could not be read from the index.",
    ),
    Status.UNPARSEABLE: (
        "MaintainerAddressUnparseable",
        "The metadata holds text that is not an email address (often an obfuscated one); it "
        "was not guessed at.",
    ),
    Status.REGISTERED: (
        "MaintainerDomainRegistered",
        "The domain is registered and was registered before the release that published "
        "this address.",
    ),
    Status.FREE_PROVIDER: (
        "MaintainerAddressFreeProvider",
        "The address is at a well-known mail provider, whose domain does not lapse.",
    ),
    Status.NO_ADDRESS: (
        "PackageWithoutAddress",
        "The package metadata names no maintainer address.",
    ),
}
_ORDER = tuple(_RULES)


def level(status: Status) -> str:
    if status.dangerous:
        return "error"
    return "warning" if status.unchecked else "note"


def _rule(status: Status) -> dict[str, Any]:
    name, text = _RULES[status]
    properties: dict[str, Any] = {"tags": ["security", "supply-chain", "account-takeover"]}
    if status.dangerous:
        properties["security-severity"] = "8.0"
    return {
        "id": status.value,
        "name": name,
        "shortDescription": {"text": name},
        "fullDescription": {"text": text},
        "help": {
            "text": text,
            "markdown": f"{text}\n\nAn attacker who controls a maintainer's mail domain can "
            "reset the maintainer's password on the package index unless the account has "
            "another verified address and 2FA.",
        },
        "defaultConfiguration": {"level": level(status)},
        "properties": properties,
    }


def _uri(path: str) -> str:
    pure = PurePath(path)
    return pure.as_uri() if pure.is_absolute() else pure.as_posix()


def _locations(finding: Finding) -> list[dict[str, Any]]:
    pin = "==" if finding.ecosystem == "pypi" else "@"
    name = finding.qualified_name
    logical = {
        "name": finding.package,
        "fullyQualifiedName": f"{name}{pin}{finding.version}" if finding.version else name,
        "kind": "module",
    }
    found = []
    for origin in finding.origins:
        if origin.path is None or origin.kind == "installed":
            continue
        physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(origin.path)}}
        if origin.line:
            physical["region"] = {"startLine": origin.line}
        found.append({"physicalLocation": physical, "logicalLocations": [logical]})
    return found[:10] or [{"logicalLocations": [logical]}]


def _message(finding: Finding) -> str:
    name = finding.qualified_name
    package = f"{name} {finding.version}" if finding.version else name
    if finding.address is None:
        return f"{package}: {finding.status.value}: {finding.reason}"
    where = f" on {finding.domain}" if finding.domain else ""
    return f"{package}: maintainer address {finding.address}{where} is {finding.status.value}: " + (
        finding.reason
    )


def _result(finding: Finding) -> dict[str, Any]:
    name = finding.qualified_name.lower()  # pypi findings keep their v1 fingerprints
    identity = "\n".join((name, finding.address or "", finding.status.value))
    return {
        "ruleId": finding.status.value,
        "ruleIndex": _ORDER.index(finding.status),
        "level": level(finding.status),
        "message": {"text": _message(finding)},
        "locations": _locations(finding),
        "partialFingerprints": {FINGERPRINT: hashlib.sha256(identity.encode()).hexdigest()},
        "properties": {
            "package": finding.package,
            "version": finding.version,
            "address": finding.address,
            "domain": finding.domain,
            "verdict": finding.status.value,
            "ecosystem": finding.ecosystem,
            "first_published": first_published(finding),
            "fields": list(finding.fields),
            "evidence": evidence(finding),
        },
    }


def sarif_log(report: ScanReport) -> dict[str, Any]:
    notifications = [{"level": "note", "message": {"text": note}} for note in report.notes]
    for message in (report.index_message, report.offline_message):
        if message:
            notifications.append({"level": "warning", "message": {"text": message}})
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "lapsewatch",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_rule(status) for status in _ORDER],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "results": [_result(f) for f in report.findings],
                "columnKind": "unicodeCodePoints",
            }
        ],
    }


def render(report: ScanReport, console: Console) -> str:
    return json.dumps(sarif_log(report), indent=2, ensure_ascii=False) + "\n"
