"""Shared fixtures."""

from __future__ import annotations

import pytest

from lapsewatch.world.nsd import nsd_available
from tests.services import require_service


@pytest.fixture
def require_nsd() -> None:
    """Use in tests marked ``@pytest.mark.nsd``."""
    require_service("NSD", nsd_available())
