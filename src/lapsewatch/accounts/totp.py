"""TOTP (RFC 6238) second factor and its one-time recovery codes.

Codes are checked against an injected clock (tests), one 30-second step either
side (phones drift), and the matching time step is returned so the caller can
refuse the same code twice (a shoulder-surfed code must not log in again).
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

import pyotp
from pyotp.exceptions import OTPVerificationError

__all__ = [
    "ISSUER",
    "format_recovery_code",
    "matching_timecode",
    "new_recovery_codes",
    "new_secret",
    "normalize_recovery_code",
    "provisioning_uri",
]

ISSUER = "lapsewatch"
VALID_WINDOW = 1
_CODE = re.compile(r"^\d{6}$")
_RECOVERY = re.compile(r"^[0-9a-f]{16}$")


def new_secret() -> str:
    """160 random bits, base32: what authenticator apps expect (RFC 4226 recommends 160)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, username: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://`` URI an authenticator app scans (as a QR code) or imports."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def matching_timecode(secret: str, code: str, now: datetime) -> int | None:
    """The time step ``code`` belongs to (within one step of ``now``), or ``None``."""
    cleaned = "".join(str(code).split())
    if not _CODE.match(cleaned):
        return None
    try:
        return pyotp.TOTP(secret).verify_and_get_timecode(
            cleaned, for_time=now, valid_window=VALID_WINDOW
        )
    except (OTPVerificationError, ValueError):
        return None


def new_recovery_codes(count: int) -> tuple[str, ...]:
    """``count`` codes of 64 random bits each, shown once as ``xxxx-xxxx-xxxx-xxxx``."""
    return tuple(format_recovery_code(secrets.token_hex(8)) for _ in range(count))


def format_recovery_code(raw: str) -> str:
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def normalize_recovery_code(code: str) -> str | None:
    """Lower-case hex without separators, or ``None`` when it cannot be one of ours."""
    cleaned = re.sub(r"[\s-]", "", str(code)).lower()
    return cleaned if _RECOVERY.match(cleaned) else None
