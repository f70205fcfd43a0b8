"""The index client against the local JSON-API index, and the on-disk cache."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from lapsewatch.scan.cache import DiskCache
from lapsewatch.scan.index import IndexAnswer, IndexClient, IndexOutcome, check_index_url
from lapsewatch.scan.packages import Origin, PackageRef
from lapsewatch.world.index_server import CatalogError, IndexServer, load_index, parse_index

DATA = Path(__file__).parent / "data" / "scan"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def index() -> Iterator[IndexServer]:
    with IndexServer(load_index(DATA / "index.toml", now=NOW), hang_seconds=1.0) as server:
        yield server


def fetch_all(
    base: str, refs: list[PackageRef], cache: DiskCache | None = None
) -> tuple[list[IndexAnswer], int]:
    async def run() -> tuple[list[IndexAnswer], int]:
        async with httpx.AsyncClient(timeout=2.0) as http:
            client = IndexClient(base, http, cache=cache, attempts=2)
            answers = [await client.fetch(ref) for ref in refs]
            return answers, client.requests

    return asyncio.run(run())


def ref(name: str, version: str | None = None) -> PackageRef:
    return PackageRef(name, version, Origin("argument"))


# ------------------------------------------------------------------------------ the index


def test_latest_pinned_and_normalised_names(index: IndexServer) -> None:
    answers, requests = fetch_all(
        index.index_url, [ref("alive-lib"), ref("Alive_Lib", "1.0"), ref("caught-lib", "1.0")]
    )
    latest, pinned, caught = answers
    assert latest.outcome is IndexOutcome.FOUND
    assert latest.metadata is not None
    assert latest.metadata.version == "2.0"
    assert latest.metadata.author_email == '"Alive, Team" <team@alive.test>'
    assert pinned.metadata is not None
    assert pinned.metadata.version == "1.0"
    assert caught.metadata is not None
    assert caught.metadata.published_at is not None
    assert abs(caught.metadata.published_at - (NOW - timedelta(days=400))) < timedelta(seconds=1)
    assert requests == 3
    assert index.requests["/pypi/alive-lib/1.0/json"] == 1


def test_not_found(index: IndexServer) -> None:
    (package, version), _ = fetch_all(index.index_url, [ref("missing-lib"), ref("alive-lib", "9")])
    assert package.outcome is IndexOutcome.NOT_FOUND
    assert "no package missing-lib" in package.detail
    assert version.outcome is IndexOutcome.NOT_FOUND
    assert "no version 9 of alive-lib" in version.detail


def test_server_error_is_retried_then_an_error(index: IndexServer) -> None:
    before = index.requests["/pypi/broken-lib/json"]
    (answer,), _ = fetch_all(index.index_url, [ref("broken-lib")])
    assert answer.outcome is IndexOutcome.ERROR
    assert "HTTP 500" in answer.detail
    assert index.requests["/pypi/broken-lib/json"] - before == 2  # attempts=2


def test_garbled_answer_is_an_error() -> None:
    catalog = parse_index('[[packages]]\nname = "garbled"\nfault = "invalid_json"\n')
    with IndexServer(catalog) as server:
        (answer,), _ = fetch_all(server.index_url, [ref("garbled")])
    assert answer.outcome is IndexOutcome.ERROR
    assert "unreadable answer" in answer.detail


def test_unreachable_index_fails_once_then_fast(closed_port: Callable[[], int]) -> None:
    base = f"http://127.0.0.1:{closed_port()}/pypi"
    answers, requests = fetch_all(base, [ref("a"), ref("b"), ref("c")])
    assert {a.outcome for a in answers} == {IndexOutcome.ERROR}
    assert all("unreachable" in a.detail for a in answers)
    assert requests == 1


def test_answers_are_cached_errors_are_not(index: IndexServer, tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 3600)
    refs = [ref("vacant-lib"), ref("missing-lib"), ref("broken-lib")]
    first, asked = fetch_all(index.index_url, refs, cache)
    assert asked == 3
    second, asked_again = fetch_all(index.index_url, refs, DiskCache(tmp_path, 3600))
    assert asked_again == 1  # only the error is asked again
    assert [a.cached for a in second] == [True, True, False]
    assert [a.outcome for a in second] == [a.outcome for a in first]
    assert second[0].metadata == first[0].metadata


def test_index_url_must_be_http() -> None:
    assert check_index_url("https://pypi.org/pypi/") == "https://pypi.org/pypi"
    for bad in ("pypi.org/pypi", "file:///tmp/x", "ftp://x/y"):
        with pytest.raises(ValueError, match="not an http"):
            check_index_url(bad)


def test_catalog_errors() -> None:
    with pytest.raises(CatalogError, match="unknown key"):
        parse_index('[[packages]]\nname = "x"\nauthor_mail = "typo"\n')
    with pytest.raises(CatalogError, match="fault"):
        parse_index('[[packages]]\nname = "x"\nfault = "exploded"\n')
    with pytest.raises(CatalogError, match="needs a 'name'"):
        parse_index("[[packages]]\nversions = ['1']\n")


# ------------------------------------------------------------------------------ the cache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_cache_round_trip_and_expiry(tmp_path: Path) -> None:
    clock = Clock()
    cache = DiskCache(tmp_path, 60, clock=clock)
    cache.put("ns", "key", {"a": [1, "ü"]})
    cache.put("ns", "short", 1, ttl=5)
    assert cache.get("ns", "key") == {"a": [1, "ü"]}
    assert cache.get("other", "key") is None
    clock.now += 10
    assert cache.get("ns", "short") is None
    assert cache.get("ns", "key") is not None
    clock.now += 60
    assert cache.get("ns", "key") is None
    assert (tmp_path / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f")
    assert not list(tmp_path.rglob(".tmp-*"))


def test_corrupt_entries_warn_once_and_miss(tmp_path: Path) -> None:
    warnings: list[str] = []
    cache = DiskCache(tmp_path, 60, warn=warnings.append)
    cache.put("ns", "one", 1)
    cache.put("ns", "two", 2)
    files = sorted(tmp_path.rglob("*.json"))
    files[0].write_text("{not json")
    files[1].write_text(json.dumps({"key": "someone else", "expires": 1e12, "value": 3}))
    assert cache.get("ns", "one") is None
    assert cache.get("ns", "two") is None
    assert len(warnings) == 1
    assert "corrupt cache entry" in warnings[0]
    cache.put("ns", "one", 1)  # rewritten
    assert cache.get("ns", "one") == 1


def test_unwritable_cache_warns_once_and_carries_on(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    warnings: list[str] = []
    cache = DiskCache(blocker / "cache", 60, warn=warnings.append)
    cache.put("ns", "a", 1)
    cache.put("ns", "b", 2)
    assert cache.get("ns", "a") is None
    assert len(warnings) == 1
    assert "cannot write the cache" in warnings[0]
