"""``lapsewatch scan`` as people run it, against the local index and the local world.

The command runs in the test's own process (tests/cli_support.py), with real exit
codes, stdout and stderr; the table and scanning this very environment run it as a real
process. Nothing leaves 127.0.0.1: the index, RDAP, DNS and Fastly are local servers,
and the offline test points every source at a closed port.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lapsewatch.world import World, demo_scenario
from lapsewatch.world.index_server import IndexServer, load_index
from tests.cli_support import SOURCE_LIMITS, Ran, lapsewatch

DATA = Path(__file__).parent / "data" / "scan"
TREE = DATA / "tree" / "requirements.txt"
LOCKS = DATA / "locks"
NOW = datetime.now(UTC)
CONTRACT = ("package", "version", "address", "domain", "verdict", "reason")

# What the tree must report: (package, address) → verdict.
EXPECTED = {
    ("alive-lib", "team@alive.test"): "registered",
    ("alive-lib", "bob@gmail.com"): "free_provider",
    ("lapsing-lib", "dev@lapsing.test"): "expiring",
    ("redeeming-lib", "ops@mail.redeeming.test"): "redemption",
    ("deleting-lib", "jane@deleting.test"): "pending_delete",
    ("deleting-lib", "alice@alive.test"): "registered",
    ("vacant-lib", "x@vacant.test"): "available",
    ("parked-lib", "p@parked.test"): "for_sale",
    ("caught-lib", "c@caught.test"): "reregistered",
    ("fresh-lib", "f@caught.test"): "registered",
    ("hidden-lib", "h@hidden.nordap"): "unknown",
    ("obfuscated-lib", "jane at example dot com"): "unparseable",
    ("obfuscated-lib", "joe[at]alive.test"): "unparseable",
    ("invalid-lib", "root@localhost"): "unparseable",
    ("invalid-lib", "bad@@x.test"): "unparseable",
    ("noaddr-lib", None): "no_address",
    ("missing-lib", None): "not_found",
}
TREE_DOMAINS = (
    "alive.test",
    "lapsing.test",
    "redeeming.test",
    "deleting.test",
    "vacant.test",
    "parked.test",
    "caught.test",
    "hidden.nordap",
)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with World(demo_scenario(now=NOW), hang_seconds=4.0) as running:
        yield running


@pytest.fixture(scope="module")
def index() -> Iterator[IndexServer]:
    with IndexServer(load_index(DATA / "index.toml", now=NOW)) as server:
        yield server


def lapsewatch_scan(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, process: bool = False
) -> Ran:
    """``lapsewatch scan ARGS``, in this process unless ``process`` (tests/cli_support.py)."""
    given = {**SOURCE_LIMITS, "COLUMNS": "250", **(env or {})}
    return lapsewatch("scan", *args, env=given, cwd=cwd, process=process, timeout=90)


def scan_tree(
    world: World,
    index: IndexServer,
    cache: Path,
    *extra: str,
    output: str = "json",
    process: bool = False,
) -> Ran:
    return lapsewatch_scan(
        "-r",
        str(TREE),
        "--index-url",
        index.index_url,
        "--cache-dir",
        str(cache),
        "--format",
        output,
        *extra,
        env={**world.env(), "XDG_CACHE_HOME": str(cache.parent / "unused")},
        process=process,
    )


def verdicts(stdout: str) -> dict[tuple[str, str | None], str]:
    return {(f["package"], f["address"]): f["verdict"] for f in json.loads(stdout)}


def reset(world: World, index: IndexServer) -> None:
    for counter in (world.rdap_requests, world.dns_requests, world.fastly_requests, index.requests):
        counter.reset()


@pytest.fixture(scope="module")
def tree_run(
    world: World, index: IndexServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Ran, dict[str, int], dict[str, int]]:
    """One scan of the tree, shared: its result and the traffic it caused."""
    reset(world, index)
    result = scan_tree(world, index, tmp_path_factory.mktemp("tree") / "cache")
    return result, world.rdap_requests.as_dict(), index.requests.as_dict()


# ------------------------------------------------------------------ the requirements tree


def test_every_verdict_state_in_the_tree(
    tree_run: tuple[Ran, dict[str, int], dict[str, int]],
) -> None:
    result, _, _ = tree_run
    assert result.returncode == 1, result.stderr  # dangerous verdicts found
    assert verdicts(result.stdout) == EXPECTED
    assert "win-lib skipped" in result.stderr  # marker for another platform
    assert "constraint file constraints.txt ignored" in result.stderr


def test_json_contract(
    tree_run: tuple[Ran, dict[str, int], dict[str, int]],
) -> None:
    findings = json.loads(tree_run[0].stdout)
    for finding in findings:
        assert tuple(finding)[:6] == CONTRACT
        assert finding["reason"]
    by_key = {(f["package"], f["address"]): f for f in findings}
    caught = by_key[("caught-lib", "c@caught.test")]
    assert "after caught-lib 1.0 was published" in caught["reason"]
    assert caught["domain"] == "caught.test"
    assert {e["source"] for e in caught["evidence"]} == {"rdap", "dns", "fastly"}
    assert caught["origins"] == [f"{DATA / 'tree' / 'base.txt'}:1"]
    redemption = by_key[("redeeming-lib", "ops@mail.redeeming.test")]
    assert redemption["domain"] == "redeeming.test"
    assert redemption["fields"] == ["maintainer_email"]
    free = by_key[("alive-lib", "bob@gmail.com")]
    assert free["free_provider"] is True
    assert free["evidence"] == []
    assert by_key[("parked-lib", "p@parked.test")]["fields"] == ["author"]
    assert "obfuscated" in by_key[("obfuscated-lib", "jane at example dot com")]["reason"]
    assert by_key[("obfuscated-lib", "jane at example dot com")]["domain"] is None


def test_each_domain_is_checked_once(
    tree_run: tuple[Ran, dict[str, int], dict[str, int]],
) -> None:
    _, rdap, index_requests = tree_run
    for domain in TREE_DOMAINS:
        if domain != "hidden.nordap":  # no RDAP server for .nordap
            assert rdap.get(domain) == 1, domain
    assert "gmail.com" not in rdap
    assert index_requests["/pypi/alive-lib/1.0/json"] == 1  # listed twice in the tree


def test_sarif_is_valid_and_has_one_result_per_package_and_address(
    world: World, index: IndexServer, tmp_path: Path
) -> None:
    result = scan_tree(world, index, tmp_path / "cache", output="sarif")
    assert result.returncode == 1, result.stderr
    log = json.loads(result.stdout)
    schema = json.loads((DATA / "sarif-schema-2.1.0.json").read_text())
    validator = jsonschema.Draft4Validator(schema)
    assert [e.message for e in validator.iter_errors(log)] == []

    run = log["runs"][0]
    results = run["results"]
    assert len(results) == len(EXPECTED)
    pairs = {(r["properties"]["package"], r["properties"]["address"]) for r in results}
    assert pairs == set(EXPECTED)
    rules = run["tool"]["driver"]["rules"]
    levels: dict[str, set[str]] = {"error": set(), "warning": set(), "note": set()}
    for item in results:
        assert rules[item["ruleIndex"]]["id"] == item["ruleId"]
        levels[item["level"]].add(item["ruleId"])
    assert levels["error"] == {
        "expiring",
        "redemption",
        "pending_delete",
        "available",
        "reregistered",
        "for_sale",
    }
    assert levels["warning"] == {"unknown", "not_found"}
    assert levels["note"] == {"registered", "free_provider", "unparseable", "no_address"}
    caught = next(r for r in results if r["ruleId"] == "reregistered")
    location = caught["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == (DATA / "tree" / "base.txt").as_uri()
    assert location["region"] == {"startLine": 1}

    broken = json.loads(json.dumps(log))
    broken["runs"][0]["results"][0]["level"] = "fatal"
    assert list(validator.iter_errors(broken)), "the schema must catch an invalid level"


def test_markdown_for_ci_comments(world: World, index: IndexServer, tmp_path: Path) -> None:
    result = scan_tree(world, index, tmp_path / "cache", output="markdown")
    assert result.returncode == 1, result.stderr
    text = result.stdout
    assert text.startswith("## lapsewatch scan\n")
    dangerous = text.split("### Maintainer addresses on dangerous domains", 1)[1]
    dangerous = dangerous.split("###", 1)[0]
    caught = "| pypi | caught-lib | 1.0 | c@caught.test | caught.test | **reregistered** |"
    assert caught in dangerous
    assert "alive-lib" not in dangerous
    assert "| hidden-lib |" in text.split("### Could not check", 1)[1]
    assert "<details><summary>All 17 findings</summary>" in text


def test_table_on_a_terminal_width(world: World, index: IndexServer, tmp_path: Path) -> None:
    result = scan_tree(world, index, tmp_path / "cache", output="table", process=True)
    assert result.returncode == 1, result.stderr
    for word in ("reregistered", "pending_delete", "free_provider", "unparseable", "no_address"):
        assert word in result.stdout
    assert "6 dangerous" in result.stdout
    assert "in 13 packages (8 domains checked, 0 from the cache)" in result.stdout


# ------------------------------------------------------------------- exit codes, --fail-on


@pytest.mark.parametrize(
    ("fail_on", "code"),
    [
        ("none", 0),
        ("registered", 1),
        ("unknown", 1),
        ("unparseable,no_address", 1),
        ("all", 1),
    ],
)
def test_fail_on(world: World, index: IndexServer, tmp_path: Path, fail_on: str, code: int) -> None:
    result = lapsewatch_scan(
        "alive-lib==1.0",
        "hidden-lib",
        "noaddr-lib",
        "--index-url",
        index.index_url,
        "--cache-dir",
        str(tmp_path),
        "--fail-on",
        fail_on,
        env=world.env(),
    )
    assert result.returncode == code, result.stderr


def test_unknown_alone_does_not_fail_by_default(
    world: World, index: IndexServer, tmp_path: Path
) -> None:
    result = lapsewatch_scan(
        "alive-lib==1.0",
        "hidden-lib",
        "--index-url",
        index.index_url,
        "--cache-dir",
        str(tmp_path),
        "--format",
        "json",
        env=world.env(),
    )
    assert result.returncode == 0, result.stderr
    assert "unknown" in verdicts(result.stdout).values()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-r", "missing-requirements.txt"], "no such requirement file"),
        (["-r", "{bad}"], "bad.txt:2: not a valid requirement"),
        (["--lock", "requirements.lock"], "cannot tell the lock format"),
        (["--dist", "{bad_wheel}"], "cannot read the archive"),
        (["alive-lib", "--fail-on", "dangerous,bogus"], "unknown status 'bogus'"),
        (["alive-lib", "--index-url", "pypi.org/pypi"], "--index-url"),
        (["not a name!"], "not a package name"),
        ([], "nothing to scan"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("good-lib\nbroken-lib==\n")
    bad_wheel = tmp_path / "x-1.0-py3-none-any.whl"
    bad_wheel.write_bytes(b"not a zip")
    filled = [a.format(bad=bad, bad_wheel=bad_wheel) for a in args]
    result = lapsewatch_scan(*filled, "--no-cache", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_unreachable_index_is_reported_not_fatal(
    tmp_path: Path, closed_port: Callable[[], int]
) -> None:
    base = f"http://127.0.0.1:{closed_port()}/pypi"
    args = ("-r", str(TREE), "--index-url", base, "--no-cache", "--format", "json")
    result = lapsewatch_scan(*args)
    assert result.returncode == 0, result.stderr
    assert set(verdicts(result.stdout).values()) == {"metadata_error"}
    assert "13 packages could not be read from the index" in " ".join(result.stderr.split())
    assert lapsewatch_scan(*args, "--fail-on", "metadata_error").returncode == 1


# ------------------------------------------------------------------------------ the cache


def test_second_scan_makes_no_network_call(
    world: World, index: IndexServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = scan_tree(world, index, cache)
    assert first.returncode == 1, first.stderr
    reset(world, index)
    second = scan_tree(world, index, cache)
    assert second.returncode == 1, second.stderr
    assert verdicts(second.stdout) == verdicts(first.stdout) == EXPECTED
    traffic = {
        "index": index.requests.total,
        "rdap": world.rdap_requests.total,
        "dns": world.dns_requests.total,
        "fastly": world.fastly_requests.total,
    }
    assert traffic == {"index": 0, "rdap": 0, "dns": 0, "fastly": 0}


def test_no_cache_asks_again(world: World, index: IndexServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    scan_tree(world, index, cache)
    reset(world, index)
    result = scan_tree(world, index, cache, "--no-cache")
    assert result.returncode == 1
    assert index.requests.total > 0
    assert world.rdap_requests["caught.test"] == 1


def test_corrupt_cache_warns_and_carries_on(
    world: World, index: IndexServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    scan_tree(world, index, cache)
    entries = list(cache.rglob("*.json"))
    assert entries
    for entry in entries:
        entry.write_bytes(b"\x00garbage{")
    result = scan_tree(world, index, cache)
    assert result.returncode == 1, result.stderr
    assert verdicts(result.stdout) == EXPECTED
    assert "corrupt cache entry" in result.stderr


def test_unwritable_cache_warns_and_carries_on(
    world: World, index: IndexServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = scan_tree(world, index, blocker / "cache")
    assert result.returncode == 1, result.stderr
    assert verdicts(result.stdout) == EXPECTED
    assert "cannot write the cache" in " ".join(result.stderr.split())


def test_default_cache_dir_follows_xdg(world: World, index: IndexServer, tmp_path: Path) -> None:
    result = lapsewatch_scan(
        "vacant-lib",
        "--index-url",
        index.index_url,
        env={**world.env(), "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert result.returncode == 1, result.stderr
    assert (tmp_path / "lapsewatch" / "scan" / "CACHEDIR.TAG").is_file()


# ------------------------------------------------------------------ locks, dists, installed


def test_lock_files(world: World, index: IndexServer, tmp_path: Path) -> None:
    result = lapsewatch_scan(
        *("--lock", str(LOCKS / "pylock.toml")),
        *("--lock", str(LOCKS / "uv.lock")),
        *("--lock", str(LOCKS / "poetry.lock")),
        *("--index-url", index.index_url, "--cache-dir", str(tmp_path), "--format", "json"),
        env=world.env(),
    )
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)
    assert {(f["package"], f["address"]): f["verdict"] for f in findings} == {
        ("alive-lib", "team@alive.test"): "registered",
        ("alive-lib", "bob@gmail.com"): "free_provider",
        ("vacant-lib", "x@vacant.test"): "available",
        ("caught-lib", "c@caught.test"): "reregistered",
        ("lapsing-lib", "dev@lapsing.test"): "expiring",
    }
    origins = {f["package"]: f["origins"] for f in findings}
    assert origins["caught-lib"] == [f"{LOCKS / 'uv.lock'}:10"]
    assert origins["lapsing-lib"] == [f"{LOCKS / 'poetry.lock'}:4"]
    for skipped in ("win-lib", "from-git", "myproject", "private-lib", "from-dir"):
        assert skipped in result.stderr


def _metadata(name: str, version: str, header: str) -> bytes:
    return f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{header}\n\n".encode()


def test_wheel_and_sdist_built_here(world: World, index: IndexServer, tmp_path: Path) -> None:
    wheel = tmp_path / "wheelpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("wheelpkg/__init__.py", "")
        archive.writestr(
            "wheelpkg-1.0.dist-info/METADATA",
            _metadata("wheelpkg", "1.0", 'Author-email: "W, Dev" <w@vacant.test>'),
        )
    sdist = tmp_path / "sdistpkg-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        data = _metadata("sdistpkg", "2.0", "Maintainer-email: m@alive.test, name at x dot org")
        info = tarfile.TarInfo("sdistpkg-2.0/PKG-INFO")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    reset(world, index)
    result = lapsewatch_scan(
        *("--dist", str(wheel), "--dist", str(sdist)),
        *("--index-url", index.index_url, "--cache-dir", str(tmp_path / "c"), "--format", "json"),
        env=world.env(),
    )
    assert result.returncode == 1, result.stderr
    assert verdicts(result.stdout) == {
        ("wheelpkg", "w@vacant.test"): "available",
        ("sdistpkg", "m@alive.test"): "registered",
        ("sdistpkg", "name at x dot org"): "unparseable",
    }
    assert index.requests.total == 0  # a dist carries its own metadata


def test_installed_offline(tmp_path: Path, closed_port: Callable[[], int]) -> None:
    """This very environment, with every source unreachable: unknown, said clearly, exit 0."""
    port = closed_port()
    offline = {
        "LAPSEWATCH_RDAP_BOOTSTRAP_URL": f"http://127.0.0.1:{port}/dns.json",
        "LAPSEWATCH_DNS_NAMESERVERS": f"127.0.0.1:{port}",
        "LAPSEWATCH_TIMEOUT": "5",
        "LAPSEWATCH_ATTEMPTS": "3",
    }
    started = time.monotonic()
    result = lapsewatch_scan(
        "--installed", "--cache-dir", str(tmp_path), "--format", "json", env=offline, process=True
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    packages = {f["package"].lower() for f in findings}
    assert {"httpx", "rich", "lapsewatch"} <= packages
    checked = [f for f in findings if f["domain"] and not f["free_provider"]]
    assert checked
    assert {f["verdict"] for f in checked} == {"unknown"}
    count = len({f["domain"] for f in checked})
    stderr = " ".join(result.stderr.split())
    assert f"{count} domains could not be checked: no status source answered (offline?)" in stderr
    assert elapsed < 30, f"an offline scan took {elapsed:.1f} s"
    assert not list(tmp_path.glob("v*/domains/**/*.json"))  # nothing learned, nothing cached
