"""npm inputs and the npm registry client: every lock file format, bad input, packuments."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from lapsewatch.scan.index import IndexAnswer, IndexOutcome
from lapsewatch.scan.inputs import ScanInputError, collect, find_inputs, is_input_path
from lapsewatch.scan.json_lines import key_lines
from lapsewatch.scan.npm import NpmClient, packument_url, parse_packument
from lapsewatch.scan.npm_locks import NpmInputError, read_npm
from lapsewatch.scan.packages import Origin, PackageRef
from lapsewatch.scan.yarn_lock import parse_classic
from lapsewatch.world.npm_registry import NpmRegistry, load_npm_catalog

NPM = Path(__file__).parent / "data" / "scan" / "npm"
REGISTRY = "https://registry.npmjs.org"
NOW = datetime.now(UTC)

# Every lock file describes the same tree: what it must yield, (name, version).
TREE = {
    ("@acme/widgets", "2.1.0"),
    ("ctx-js", "1.0.1"),
    ("debug", "4.3.4"),
    ("debug", "2.6.9"),  # nested: node_modules/redeem-me/node_modules/debug
    ("deleting-js", "3.0.1"),
    ("is-vacant", "1.0.0"),
    ("left-pad", "1.3.0"),
    ("ms", "2.0.0"),
    ("ms", "2.1.2"),
    ("redeem-me", "0.4.2"),
    ("string-width", "5.1.2"),
    ("string-width", "4.2.3"),  # the alias string-width-cjs, under its real name
}
LOCKS = [
    "lock-v1/package-lock.json",
    "lock-v2/package-lock.json",
    "lock-v3/package-lock.json",
    "shrinkwrap/npm-shrinkwrap.json",
    "pnpm-v5/pnpm-lock.yaml",
    "pnpm-v6/pnpm-lock.yaml",
    "pnpm-v9/pnpm-lock.yaml",
    "yarn-classic/yarn.lock",
    "yarn-berry/yarn.lock",
]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_lock_format_yields_the_tree(lock: str) -> None:
    parsed = read_npm(NPM / lock, registry=REGISTRY)
    assert {(r.name, r.version) for r in parsed.refs} == TREE
    assert all(r.ecosystem == "npm" and r.origin.line for r in parsed.refs)
    notes = "\n".join(parsed.notes)
    assert "from-git" in notes  # git: skipped with a reason
    assert "local-lib" in notes  # file:
    assert "skipped" in notes
    if "v1" not in lock and "classic" not in lock and "v5" not in lock:
        assert "@acme/ui" in notes or "packages/ui" in notes  # the workspace


def test_lines_point_at_the_entry() -> None:
    path = NPM / "lock-v3" / "package-lock.json"
    lines = path.read_text().splitlines()
    for ref in read_npm(path, registry=REGISTRY).refs:
        assert ref.origin.line is not None
        assert (
            ref.name.split("/")[-1] in lines[ref.origin.line - 1]
            or "string-width-cjs" in (lines[ref.origin.line - 1])
        )
    nested = next(r for r in read_npm(path, registry=REGISTRY).refs if r.version == "2.6.9")
    assert '"node_modules/redeem-me/node_modules/debug"' in lines[nested.origin.line - 1]  # type: ignore[operator]


def test_v1_alias_and_nesting() -> None:
    parsed = read_npm(NPM / "lock-v1" / "package-lock.json", registry=REGISTRY)
    lines = (NPM / "lock-v1" / "package-lock.json").read_text().splitlines()
    alias = next(r for r in parsed.refs if r.version == "4.2.3")
    assert alias.name == "string-width"
    assert '"string-width-cjs"' in lines[alias.origin.line - 1]  # type: ignore[operator]


def test_package_json_gives_ranges_to_resolve() -> None:
    parsed = read_npm(NPM / "package-json" / "package.json", registry=REGISTRY)
    wanted = {(r.name, r.spec) for r in parsed.refs}
    assert wanted == {
        ("@acme/widgets", "^2.0.0"),
        ("ctx-js", "^1.0.0"),
        ("is-vacant", "1.0.0"),
        ("left-pad", "~1.1.0"),
        ("string-width", "^4.2.0"),  # alias npm:string-width@^4.2.0
        ("debug", "latest"),
        ("redeem-me", ">=0.4.0 <0.5.0"),
    }
    assert "react" not in {r.name for r in parsed.refs}  # peer dependencies are the consumer's
    assert any("workspaces are not followed" in n for n in parsed.notes)


def test_another_registry_is_skipped(tmp_path: Path) -> None:
    text = (NPM / "lock-v3" / "package-lock.json").read_text()
    text = text.replace(
        "https://registry.npmjs.org/left-pad/", "https://npm.corp.example/left-pad/"
    )
    (tmp_path / "package-lock.json").write_text(text)
    parsed = read_npm(tmp_path / "package-lock.json", registry=REGISTRY)
    assert "left-pad" not in {r.name for r in parsed.refs}
    assert any("another registry (npm.corp.example)" in n for n in parsed.notes)
    private = read_npm(tmp_path / "package-lock.json", registry="https://npm.corp.example")
    assert "left-pad" in {r.name for r in private.refs}


@pytest.mark.parametrize(
    ("source", "name", "message"),
    [
        ("malformed-package-lock.json", "package-lock.json", ":8: not valid JSON"),
        ("future-package-lock.json", "package-lock.json", ":4: unknown lockfileVersion 4"),
        ("future-pnpm-lock.yaml", "pnpm-lock.yaml", ":1: unknown pnpm lockfileVersion '10.0'"),
        ("malformed-pnpm-lock.yaml", "pnpm-lock.yaml", ":6: not valid YAML"),
        ("malformed-yarn.lock", "yarn.lock", ":7: unterminated or invalid quoted string"),
        ("future-yarn.lock", "yarn.lock", ":4: unknown yarn lock file version 42"),
        ("bad-range-package.json", "package.json", ":5: debug: not an npm version range"),
    ],
)
def test_bad_input_names_file_and_line(
    tmp_path: Path, source: str, name: str, message: str
) -> None:
    target = tmp_path / name
    shutil.copy(NPM / "bad" / source, target)
    with pytest.raises(NpmInputError) as caught:
        read_npm(target, registry=REGISTRY)
    assert str(caught.value).startswith(str(target))
    assert message in str(caught.value)


def test_classic_reader_edge_cases() -> None:
    text = (
        "# yarn lockfile v1\n\n"
        '"@babel/code-frame@^7.0.0", "@babel/code-frame@^7.10.4":\n'
        '  version "7.12.13"\n'
        "  dependencies:\n"
        '    "@babel/highlight" "^7.12.13"\n'
    )
    (entry,) = parse_classic(text, "yarn.lock")
    assert entry.specs == ("@babel/code-frame@^7.0.0", "@babel/code-frame@^7.10.4")
    assert entry.fields == {"version": "7.12.13", "dependencies.@babel/highlight": "^7.12.13"}
    with pytest.raises(NpmInputError, match=r"yarn.lock:3: a field before any entry"):
        parse_classic('# yarn lockfile v1\n\n  version "1"\n', "yarn.lock")


def test_key_lines_tracks_nested_paths() -> None:
    text = '{\n "a": {\n  "b": [1, {"c": 2}],\n  "d": {}\n },\n "e": "x"\n}\n'
    lines = key_lines(text)
    assert lines[("a",)] == 2
    assert lines[("a", "b", 1, "c")] == 3
    assert lines[("a", "d")] == 4
    assert lines[("e",)] == 6


# ------------------------------------------------------------------------- detecting inputs


def test_directory_detection(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("{}")
    (tmp_path / "package-lock.json").write_text("{}")
    (tmp_path / "npm-shrinkwrap.json").write_text("{}")
    (tmp_path / "requirements.txt").write_text("")
    (tmp_path / "uv.lock").write_text("")
    requirements, locks, npm = find_inputs(tmp_path)
    assert [p.name for p in requirements] == ["requirements.txt"]
    assert [p.name for p in locks] == ["uv.lock"]
    assert [p.name for p in npm] == ["npm-shrinkwrap.json"]  # wins, as in npm
    assert is_input_path(str(tmp_path))
    assert not is_input_path("left-pad")


def test_command_line_names() -> None:
    inputs = collect(
        names=["npm:left-pad", "npm:@acme/widgets@2.1.0", "npm:debug@^4", "npm:debug@next"],
        index_url="http://127.0.0.1:1/pypi",
    )
    assert [(r.name, r.version, r.spec, r.ecosystem) for r in inputs.refs] == [
        ("left-pad", None, None, "npm"),
        ("@acme/widgets", "2.1.0", None, "npm"),
        ("debug", None, "^4", "npm"),
        ("debug", None, "next", "npm"),
    ]
    with pytest.raises(ScanInputError, match="not an npm package name"):
        collect(names=["npm:Not A Name"], index_url="http://127.0.0.1:1/pypi")


# ------------------------------------------------------------------------------ packuments


def test_scoped_packument_url() -> None:
    assert packument_url("http://r", "@acme/widgets") == "http://r/@acme%2fwidgets"
    assert packument_url("http://r", "left-pad") == "http://r/left-pad"


def test_people_from_strings_objects_and_contributors() -> None:
    data = {
        "name": "p",
        "dist-tags": {"latest": "1.0.0"},
        "maintainers": [{"name": "top", "email": "top@alive.test"}],
        "time": {"created": "2020-01-01T00:00:00.000Z", "1.0.0": "2020-01-01T00:00:00.000Z"},
        "versions": {
            "1.0.0": {
                "author": "Jane Doe <jane@alive.test> (https://alive.test)",
                "_npmUser": {"name": "jd", "email": "jd@alive.test"},
                "contributors": ["Only A Name", {"name": "X", "email": "x@alive.test"}],
            }
        },
    }
    packument = parse_packument(data, "p")
    meta = packument.metadata("1.0.0")
    assert meta.address_fields() == [
        ("maintainers", "top@alive.test"),  # the version lists none: the document's
        ("_npmUser", "jd@alive.test"),
        ("author", "Jane Doe <jane@alive.test> (https://alive.test)"),
        ("contributors", "Only A Name"),
        ("contributors", "x@alive.test"),
    ]
    first = meta.first_for("JANE@alive.test")
    assert first is not None
    assert first.version == "1.0.0"


def test_ranges_resolve_like_npm() -> None:
    versions = ["1.0.0", "1.2.0", "1.3.0-beta.1", "2.0.0", "2.1.0"]
    data = {
        "name": "r",
        "dist-tags": {"latest": "2.0.0", "next": "1.3.0-beta.1"},
        "versions": {v: {} for v in versions},
    }
    packument = parse_packument(data, "r")

    def resolve(spec: str | None) -> str | None:
        return packument.resolve(PackageRef("r", None, Origin("argument"), "npm", spec))

    assert resolve(None) == "2.0.0"  # latest, not the highest
    assert resolve("^2.0.0") == "2.0.0"  # latest satisfies the range: npm picks it
    assert resolve("^1.0.0") == "1.2.0"  # no prerelease
    assert resolve("next") == "1.3.0-beta.1"
    assert resolve(">=2.1.0") == "2.1.0"
    assert resolve("^3") is None


@pytest.fixture(scope="module")
def registry() -> Iterator[NpmRegistry]:
    with NpmRegistry(load_npm_catalog(NPM / "registry.toml", now=NOW), hang_seconds=1) as server:
        yield server


def fetch(base: str, refs: list[PackageRef]) -> tuple[list[IndexAnswer], int]:
    async def run() -> tuple[list[IndexAnswer], int]:
        async with httpx.AsyncClient(timeout=2.0) as http:
            client = NpmClient(base, http, attempts=1)
            answers = await asyncio.gather(*(client.fetch(ref) for ref in refs))
            return list(answers), client.requests

    return asyncio.run(run())


def npm_ref(name: str, version: str | None = None, spec: str | None = None) -> PackageRef:
    return PackageRef(name, version, Origin("argument"), "npm", spec)


def test_client_fetches_each_name_once(registry: NpmRegistry) -> None:
    registry.requests.reset()
    answers, requests = fetch(
        registry.registry_url,
        [npm_ref("debug", "2.6.9"), npm_ref("debug", "4.3.4"), npm_ref("@acme/widgets")],
    )
    assert requests == 2
    assert registry.requests.as_dict() == {"/debug": 1, "/@acme/widgets": 1}
    assert [a.metadata.version for a in answers if a.metadata] == ["2.6.9", "4.3.4", "2.1.0"]


def test_ctx_first_release_from_the_packument(registry: NpmRegistry) -> None:
    (answer,), _ = fetch(registry.registry_url, [npm_ref("ctx-js")])
    meta = answer.metadata
    assert meta is not None
    assert meta.version == "1.0.1"
    assert meta.published_at is not None
    assert abs(meta.published_at - (NOW - timedelta(days=2))) < timedelta(seconds=1)
    first = meta.first_for("dev@caught.test")
    assert first is not None
    assert first.version == "0.9.0"
    assert abs(first.published_at - (NOW - timedelta(days=400))) < timedelta(seconds=1)


def test_not_json_and_missing(registry: NpmRegistry) -> None:
    (garbled, missing, no_version), _ = fetch(
        registry.registry_url,
        [npm_ref("garbled-js"), npm_ref("no-such-js"), npm_ref("left-pad", "9.9.9")],
    )
    assert garbled.outcome is IndexOutcome.ERROR
    assert "unreadable packument for garbled-js" in garbled.detail
    assert "not JSON (line 1, column 1" in garbled.detail
    assert missing.outcome is IndexOutcome.NOT_FOUND
    assert no_version.outcome is IndexOutcome.NOT_FOUND
    assert "no version 9.9.9 of left-pad" in no_version.detail


def test_pre_commit_hook_and_workflow_cover_npm() -> None:
    root = Path(__file__).parent.parent
    (hook,) = yaml.safe_load((root / ".pre-commit-hooks.yaml").read_text())
    pattern = re.compile(hook["files"])
    for name in ("web/package-lock.json", "pnpm-lock.yaml", "yarn.lock", "requirements.txt"):
        assert pattern.search(name), name
    assert not pattern.search("src/app.json")
    workflow = yaml.safe_load((root / "docs" / "examples" / "lapsewatch-scan.yml").read_text())
    paths = workflow[True]["pull_request"]["paths"]  # YAML 1.1 reads the key "on" as True
    assert "**pnpm-lock.yaml" in paths
    assert "**yarn.lock" in paths
