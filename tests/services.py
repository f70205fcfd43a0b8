"""Skip a test when a local service is missing, or fail it in CI."""

from __future__ import annotations

import os

import pytest


def require_service(name: str, available: bool) -> None:
    """Skip when a local service is missing, but fail when LAPSEWATCH_REQUIRE_SERVICES=1 (CI)."""
    if available:
        return
    if os.environ.get("LAPSEWATCH_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is not installed, and LAPSEWATCH_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{name} is not installed")
