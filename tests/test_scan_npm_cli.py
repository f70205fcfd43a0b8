"""``lapsewatch scan`` on npm trees, the ctx pattern and mixed repositories, end to end.

The command runs (in this process: tests/cli_support.py) against the local world (RDAP,
DNS, Fastly), the local PyPI index and the local npm registry: nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lapsewatch.world import World, demo_scenario
from lapsewatch.world.index_server import IndexServer, load_index
from lapsewatch.world.npm_registry import (
    NpmCatalog,
    NpmPackage,
    NpmRegistry,
    NpmRelease,
    load_npm_catalog,
)
from tests.cli_support import Ran
from tests.test_scan_cli import DATA, NOW, lapsewatch_scan

NPM = DATA / "npm"

# The npm tree every lock file describes: (package, version, address) → verdict.
EXPECTED = {
    ("@acme/widgets", "2.1.0", "dev@lapsing.test"): "expiring",
    ("@acme/widgets", "2.1.0", "acme.bot@gmail.com"): "free_provider",
    ("ctx-js", "1.0.1", "dev@caught.test"): "reregistered",  # the ctx pattern
    ("debug", "4.3.4", "qix@alive.test"): "registered",
    ("debug", "4.3.4", "tj@alive.test"): "registered",
    ("debug", "2.6.9", "qix@alive.test"): "registered",
    ("debug", "2.6.9", "tj@alive.test"): "registered",
    ("deleting-js", "3.0.1", "jane@deleting.test"): "pending_delete",
    ("is-vacant", "1.0.0", "ops@vacant.test"): "available",
    ("left-pad", "1.3.0", "camwest@alive.test"): "registered",
    ("ms", "2.0.0", None): "not_found",
    ("ms", "2.1.2", None): "not_found",
    ("redeem-me", "0.4.2", "r@redeeming.test"): "redemption",
    ("string-width", "5.1.2", "sindre@alive.test"): "registered",
    ("string-width", "5.1.2", "joe at alive dot test"): "unparseable",
    ("string-width", "4.2.3", "sindre@alive.test"): "registered",
    ("string-width", "4.2.3", "joe at alive dot test"): "unparseable",
}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=4.0) as running:
        yield running


@pytest.fixture(scope="module")
def index() -> Iterator[IndexServer]:
    with IndexServer(load_index(DATA / "index.toml", now=NOW)) as server:
        yield server


@pytest.fixture(scope="module")
def registry() -> Iterator[NpmRegistry]:
    catalog = load_npm_catalog(NPM / "registry.toml", now=NOW)
    with NpmRegistry(catalog, hang_seconds=4.0) as server:
        yield server


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("npm-cache")


def npm_scan(
    world: World,
    registry: NpmRegistry,
    *args: str,
    cache: Path | None = None,
    index: IndexServer | None = None,
    cwd: Path | None = None,
) -> Ran:
    extra = ["--cache-dir", str(cache)] if cache else ["--no-cache"]
    if index is not None:
        extra += ["--index-url", index.index_url]
    env = {**world.env(), "LAPSEWATCH_NPM_REGISTRY_URL": registry.registry_url}
    return lapsewatch_scan(*args, *extra, env=env, cwd=cwd)


def findings(stdout: str) -> dict[tuple[str, str | None, str | None], dict[str, Any]]:
    return {(f["package"], f["version"], f["address"]): f for f in json.loads(stdout)}


@pytest.mark.parametrize(
    "lock",
    [
        "lock-v1/package-lock.json",
        "lock-v2/package-lock.json",
        "lock-v3/package-lock.json",
        "shrinkwrap/npm-shrinkwrap.json",
        "pnpm-v5/pnpm-lock.yaml",
        "pnpm-v6/pnpm-lock.yaml",
        "pnpm-v9/pnpm-lock.yaml",
        "yarn-classic/yarn.lock",
        "yarn-berry/yarn.lock",
    ],
)
def test_every_npm_lock_format(world: World, registry: NpmRegistry, cache: Path, lock: str) -> None:
    result = npm_scan(world, registry, str(NPM / lock), "--format", "json", cache=cache)
    assert result.returncode == 1, result.stderr
    found = findings(result.stdout)
    assert {key: f["verdict"] for key, f in found.items()} == EXPECTED, result.stderr[-3000:]
    assert {f["ecosystem"] for f in found.values()} == {"npm"}
    assert "from-git" in result.stderr
    assert "skipped" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctx_pattern_on_npm_names_the_first_release(
    world: World, registry: NpmRegistry, tmp_path: Path
) -> None:
    result = npm_scan(
        world, registry, "npm:ctx-js", "npm:fresh-js", "npm:caught-js@1.0.0", "--format", "json"
    )
    assert result.returncode == 1, result.stderr
    found = findings(result.stdout)
    ctx = found[("ctx-js", "1.0.1", "dev@caught.test")]
    assert ctx["verdict"] == "reregistered"
    assert ctx["first_published"]["version"] == "0.9.0"
    assert "ctx-js 0.9.0 first published this address" in ctx["reason"]
    assert ctx["reason"].startswith("RDAP: registered ")  # .test has RDAP
    assert "the scanned 1.0.1" in ctx["reason"]
    # published after the domain was caught, never before: its (new) owner published it
    assert found[("fresh-js", "1.0.0", "f@caught.test")]["verdict"] == "registered"
    caught = found[("caught-js", "1.0.0", "carol@caught.test")]
    assert caught["verdict"] == "reregistered"  # re-registered after the version was published


def test_ctx_pattern_on_pypi(world: World, index: IndexServer, registry: NpmRegistry) -> None:
    result = npm_scan(world, registry, "ctx-lib", "--format", "json", index=index)
    assert result.returncode == 1, result.stderr
    (ctx,) = json.loads(result.stdout)
    assert ctx["version"] == "0.3"
    assert ctx["verdict"] == "reregistered"
    assert ctx["ecosystem"] == "pypi"
    assert ctx["first_published"]["version"] == "0.1"
    assert "ctx-lib 0.1 first published this address" in ctx["reason"]


def test_package_json_resolves_ranges(world: World, registry: NpmRegistry, cache: Path) -> None:
    result = npm_scan(world, registry, str(NPM / "package-json"), "--format", "json", cache=cache)
    assert result.returncode == 1, result.stderr
    versions = {(f["package"], f["version"]) for f in json.loads(result.stdout)}
    assert versions == {
        ("@acme/widgets", "2.1.0"),
        ("ctx-js", "1.0.1"),
        ("is-vacant", "1.0.0"),
        ("left-pad", "1.1.3"),  # ~1.1.0
        ("string-width", "4.2.3"),
        ("debug", "4.3.4"),  # "latest"
        ("redeem-me", "0.4.2"),
    }


def test_mixed_tree_scans_both_ecosystems(
    world: World, index: IndexServer, registry: NpmRegistry, tmp_path: Path
) -> None:
    mixed = tmp_path / "repo"
    shutil.copytree(NPM / "mixed", mixed)
    world.rdap_requests.reset()
    result = npm_scan(world, registry, ".", "--format", "json", index=index, cwd=mixed)
    assert result.returncode == 1, result.stderr
    found = {
        (f["ecosystem"], f["package"], f["address"]): f["verdict"]
        for f in json.loads(result.stdout)
    }
    assert found == {
        ("pypi", "alive-lib", "team@alive.test"): "registered",
        ("pypi", "alive-lib", "bob@gmail.com"): "free_provider",
        ("pypi", "ctx-lib", "figlief@caught.test"): "reregistered",
        ("npm", "ctx-js", "dev@caught.test"): "reregistered",
        ("npm", "left-pad", "camwest@alive.test"): "registered",
    }
    assert "reading requirements.txt, package-lock.json" in " ".join(result.stderr.split())
    assert world.rdap_requests["caught.test"] == 1  # shared by both ecosystems: asked once
    assert world.rdap_requests["alive.test"] == 1


def test_sarif_and_markdown_show_the_ecosystem(
    world: World, registry: NpmRegistry, cache: Path
) -> None:
    lock = str(NPM / "lock-v3" / "package-lock.json")
    sarif = npm_scan(world, registry, lock, "--format", "sarif", cache=cache)
    log = json.loads(sarif.stdout)
    results = log["runs"][0]["results"]
    ctx = next(r for r in results if r["properties"]["package"] == "ctx-js")
    assert ctx["properties"]["ecosystem"] == "npm"
    assert ctx["properties"]["first_published"]["version"] == "0.9.0"
    logical = ctx["locations"][0]["logicalLocations"][0]
    assert logical["fullyQualifiedName"] == "npm:ctx-js@1.0.1"
    assert ctx["locations"][0]["physicalLocation"]["region"] == {"startLine": 40}
    markdown = npm_scan(world, registry, lock, "--format", "markdown", cache=cache)
    assert "| Ecosystem | Package |" in markdown.stdout
    assert "| npm | ctx-js | 1.0.1 | dev@caught.test | caught.test | **reregistered** |" in (
        markdown.stdout
    )


def test_cached_second_scan_asks_nobody(
    world: World, registry: NpmRegistry, tmp_path: Path
) -> None:
    lock = str(NPM / "pnpm-v9" / "pnpm-lock.yaml")
    first = npm_scan(world, registry, lock, "--format", "json", cache=tmp_path)
    registry.requests.reset()
    world.rdap_requests.reset()
    second = npm_scan(world, registry, lock, "--format", "json", cache=tmp_path)
    assert findings(second.stdout).keys() == findings(first.stdout).keys()
    assert registry.requests.total == 0
    assert world.rdap_requests.total == 0


def test_packument_that_is_not_json_is_reported(world: World, registry: NpmRegistry) -> None:
    result = npm_scan(world, registry, "npm:garbled-js", "npm:left-pad", "--format", "json")
    assert result.returncode == 0, result.stderr
    found = findings(result.stdout)
    garbled = found[("garbled-js", None, None)]
    assert garbled["verdict"] == "metadata_error"
    assert "not JSON (line 1, column 1" in garbled["reason"]
    assert found[("left-pad", "1.3.0", "camwest@alive.test")]["verdict"] == "registered"
    assert "could not be read from the npm registry" in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("source", "name", "message"),
    [
        ("malformed-package-lock.json", "package-lock.json", "package-lock.json:8: not valid JSON"),
        ("future-package-lock.json", "package-lock.json", "unknown lockfileVersion 4"),
        ("malformed-yarn.lock", "yarn.lock", "yarn.lock:7:"),
        ("future-pnpm-lock.yaml", "pnpm-lock.yaml", "pnpm-lock.yaml:1: unknown pnpm"),
    ],
)
def test_bad_lock_files_exit_2(
    world: World, registry: NpmRegistry, tmp_path: Path, source: str, name: str, message: str
) -> None:
    shutil.copy(NPM / "bad" / source, tmp_path / name)
    result = npm_scan(world, registry, str(tmp_path / name))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_bad_registry_url_exits_2(world: World, registry: NpmRegistry) -> None:
    result = lapsewatch_scan("npm:left-pad", "--npm-registry-url", "registry.npmjs.org")
    assert result.returncode == 2
    assert "--npm-registry-url" in result.stderr


# ------------------------------------------------------- mail hosts, and WHOIS-only TLDs


@pytest.fixture(scope="module")
def world_registry() -> Iterator[NpmRegistry]:
    """Packages whose maintainers sit on the demo world's ``mailed.test`` (healthy, but
    its mail hosts are on ``old-mail.test``, which lapsed) and ``steady.wz`` (a .wz
    domain, WHOIS only, registered 2011-03-01)."""

    def person(address: str) -> dict[str, str]:
        return {"name": address.split("@")[0], "email": address}

    day = datetime(2019, 5, 1, tzinfo=UTC)
    catalog = NpmCatalog.of(
        [
            NpmPackage("mailed-js", [NpmRelease("1.0.0", day, author=person("mia@mailed.test"))]),
            NpmPackage("fine-js", [NpmRelease("2.0.0", day, author=person("ann@alive.test"))]),
            NpmPackage(
                "old-wz-js",
                [
                    NpmRelease(
                        "0.1.0",
                        datetime(2009, 2, 1, tzinfo=UTC),
                        maintainers=(person("old@steady.wz"),),
                    ),
                    NpmRelease("1.0.0", day, maintainers=(person("old@steady.wz"),)),
                ],
            ),
        ]
    )
    with NpmRegistry(catalog) as server:
        yield server


def test_mail_host_lapsed_in_json_and_the_exit_code(
    world: World, world_registry: NpmRegistry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    result = npm_scan(
        world, world_registry, "npm:mailed-js", "npm:fine-js", "--format", "json", cache=cache
    )
    assert result.returncode == 1, result.stderr  # mail_host_lapsed is dangerous
    found = findings(result.stdout)
    mailed = found[("mailed-js", "1.0.0", "mia@mailed.test")]
    assert mailed["verdict"] == "mail_host_lapsed"
    assert mailed["dangerous"] is True
    assert mailed["domain"] == "mailed.test"
    assert "old-mail.test" in mailed["reason"]
    assert found[("fine-js", "2.0.0", "ann@alive.test")]["verdict"] == "registered"
    # --fail-on: named, in 'dangerous' (above), or left out (the second runs hit the cache)
    for fail_on, code in (("mail_host_lapsed", 1), ("none", 0), ("expiring,unknown", 0)):
        again = npm_scan(
            world, world_registry, "npm:mailed-js", "npm:fine-js", "--fail-on", fail_on,
            "--format", "json", cache=cache,
        )  # fmt: skip
        assert again.returncode == code, (fail_on, again.stderr)
        assert findings(again.stdout)[("mailed-js", "1.0.0", "mia@mailed.test")]["verdict"] == (
            "mail_host_lapsed"
        )


def test_a_reregistration_seen_by_whois_says_whois(
    world: World, world_registry: NpmRegistry
) -> None:
    result = npm_scan(world, world_registry, "npm:old-wz-js", "--format", "json")
    assert result.returncode == 1, result.stderr
    found = findings(result.stdout)[("old-wz-js", "1.0.0", "old@steady.wz")]
    assert found["verdict"] == "reregistered"
    assert found["decided_by"] == "whois"
    assert found["reason"].startswith("WHOIS: registered 2011-03-01, after old-wz-js 0.1.0 ")
    assert "RDAP" not in found["reason"]
