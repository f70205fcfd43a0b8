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


POSTGRES_URL = os.environ.get(
    "LAPSEWATCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LAPSEWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def postgres_reachable() -> bool:
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping())
    except redis.RedisError:
        return False
