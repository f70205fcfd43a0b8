"""What the scan reads: requirement files, lock files, wheels, sdists, the environment."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from lapsewatch.scan.inputs import ScanInputError, collect, parse_name
from lapsewatch.scan.local import DistError, installed, read_dist
from lapsewatch.scan.locks import LockError, lock_kind, read_lock
from lapsewatch.scan.requirements import RequirementsError, read_requirements

DATA = Path(__file__).parent / "data" / "scan"
TREE = DATA / "tree"
LOCKS = DATA / "locks"
INDEX = "http://127.0.0.1:1/pypi"
LINUX = {"sys_platform": "linux"}


def metadata(**fields: str) -> str:
    lines = ["Metadata-Version: 2.1"]
    lines += [f"{key.replace('_', '-').title()}: {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n\nLong description.\n"


def make_wheel(directory: Path, name: str, version: str, **fields: str) -> Path:
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(
            f"{name}-{version}.dist-info/METADATA", metadata(name=name, version=version, **fields)
        )
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return path


def make_sdist(directory: Path, name: str, version: str, **fields: str) -> Path:
    path = directory / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, text in (
            (f"{name}-{version}/PKG-INFO", metadata(name=name, version=version, **fields)),
            (f"{name}-{version}/src/{name}/PKG-INFO", "Name: decoy\n"),
            (f"{name}-{version}/pyproject.toml", "[project]\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------- requirement files


def test_requirements_tree() -> None:
    parsed = read_requirements(TREE / "requirements.txt", environment=LINUX)
    refs = [(r.name, r.version, str(r.origin)) for r in parsed.refs]
    assert ("alive-lib", "1.0", f"{TREE}/requirements.txt:6") in refs  # joined continuation
    assert ("lapsing-lib", None, f"{TREE}/requirements.txt:9") in refs  # marker true, range
    assert ("parked-lib", "1.0", f"{TREE}/requirements.txt:14") in refs  # ===
    assert ("deleting-lib", None, f"{TREE}/requirements.txt:12") in refs  # ~= is not a pin
    assert ("caught-lib", "1.0", f"{TREE}/base.txt:1") in refs  # -r include
    assert ("missing-lib", "0.1", f"{TREE}/base.txt:7") in refs
    assert "win-lib" not in {r.name for r in parsed.refs}
    notes = "\n".join(parsed.notes)
    assert "win-lib skipped: marker 'sys_platform == \"win32\"'" in notes
    assert "constraint file constraints.txt ignored" in notes
    assert "--index-url ignored" in notes


def test_marker_follows_the_environment() -> None:
    parsed = read_requirements(TREE / "requirements.txt", environment={"sys_platform": "win32"})
    assert "win-lib" in {r.name for r in parsed.refs}


def test_includes_are_relative_and_cycles_end(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("-r sub/b.txt\nfirst\n")
    (tmp_path / "sub" / "b.txt").write_text("--requirement=../a.txt\nsecond==2\n")
    parsed = read_requirements(tmp_path / "a.txt", shown="a.txt")
    assert [(r.name, str(r.origin)) for r in parsed.refs] == [
        ("second", "sub/b.txt:2"),
        ("first", "a.txt:2"),
    ]


def test_options_paths_urls_and_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIN", "3.1")
    (tmp_path / "r.txt").write_text(
        "-e ./local-project\n"
        "./downloads/thing-1.0-py3-none-any.whl\n"
        "https://example.invalid/x-1.0.tar.gz\n"
        "direct @ https://example.invalid/direct-1.0.tar.gz\n"
        "--pre\n"
        "--only-binary :all:\n"
        "pinned==${PIN}\n"
        "\\\n"
        "   # a comment ends a continuation\n"
    )
    parsed = read_requirements(tmp_path / "r.txt")
    assert [(r.name, r.version) for r in parsed.refs] == [("pinned", "3.1")]
    notes = "\n".join(parsed.notes)
    assert "editable ./local-project is a local project" in notes
    assert "thing-1.0-py3-none-any.whl is a path or URL" in notes
    assert "direct is a direct reference" in notes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("good\nalive-lib==\n", "r.txt:2: not a valid requirement"),
        ("good\n-r missing.txt\n", "r.txt:2: no such requirement file"),
        ("--frobnicate\n", "r.txt:1: unknown option --frobnicate"),
        ("-r\n", "r.txt:1: option -r needs a value"),
    ],
)
def test_bad_requirement_files_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "r.txt").write_text(text)
    with pytest.raises(RequirementsError, match=message):
        read_requirements(tmp_path / "r.txt", shown="r.txt")


def test_missing_requirement_file(tmp_path: Path) -> None:
    with pytest.raises(RequirementsError, match="no such requirement file"):
        read_requirements(tmp_path / "nope.txt")


# ---------------------------------------------------------------------------- lock files


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("pylock.toml", "pylock"),
        ("pylock.dev.toml", "pylock"),
        ("uv.lock", "uv"),
        ("poetry.lock", "poetry"),
    ],
)
def test_lock_kind_by_name(name: str, kind: str) -> None:
    assert lock_kind(Path(name)) == kind


def test_unknown_lock_name() -> None:
    with pytest.raises(LockError, match="cannot tell the lock format"):
        lock_kind(Path("requirements.lock"))


def test_pylock() -> None:
    parsed = read_lock(LOCKS / "pylock.toml", index_url=INDEX, environment=LINUX, shown="pylock")
    assert [(r.name, r.version, str(r.origin)) for r in parsed.refs] == [
        ("alive-lib", "1.0", "pylock:6"),
        ("vacant-lib", "1.0", "pylock:17"),
    ]
    notes = "\n".join(parsed.notes)
    assert "win-lib marker 'sys_platform == 'win32'' does not match" in notes
    assert "from-git is a VCS checkout" in notes


def test_uv_lock() -> None:
    parsed = read_lock(LOCKS / "uv.lock", index_url=INDEX, shown="uv.lock")
    assert [(r.name, r.version, str(r.origin)) for r in parsed.refs] == [
        ("caught-lib", "1.0", "uv.lock:10")
    ]
    notes = "\n".join(parsed.notes)
    assert "myproject is not from an index (editable source)" in notes
    assert "private-lib comes from another index" in notes


def test_uv_lock_registry_matching_the_index_url() -> None:
    parsed = read_lock(
        LOCKS / "uv.lock", index_url="https://packages.example.invalid/pypi", shown="uv.lock"
    )
    assert {r.name for r in parsed.refs} == {"caught-lib", "private-lib"}


def test_poetry_lock() -> None:
    parsed = read_lock(LOCKS / "poetry.lock", index_url=INDEX, shown="poetry.lock")
    assert [(r.name, r.version, str(r.origin)) for r in parsed.refs] == [
        ("lapsing-lib", "1.0", "poetry.lock:4")
    ]
    assert any("from-dir is not from an index (directory source)" in n for n in parsed.notes)


def test_broken_lock_file(tmp_path: Path) -> None:
    (tmp_path / "uv.lock").write_text("[[package]\nname=")
    with pytest.raises(LockError, match="cannot read the lock file"):
        read_lock(tmp_path / "uv.lock", index_url=INDEX)
    (tmp_path / "poetry.lock").write_text("[[package]]\nversion = '1'\n")
    with pytest.raises(LockError, match="without a name"):
        read_lock(tmp_path / "poetry.lock", index_url=INDEX)


# ----------------------------------------------------------------- wheels, sdists, installed


def test_wheel_and_sdist(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "wheelpkg", "1.0", author_email="W <w@vacant.test>")
    sdist = make_sdist(tmp_path, "sdistpkg", "2.0", maintainer_email="m@alive.test")
    assert read_dist(wheel).author_email == "W <w@vacant.test>"
    meta = read_dist(sdist)
    assert (meta.name, meta.version, meta.maintainer_email) == ("sdistpkg", "2.0", "m@alive.test")
    assert str(meta.origins[0]) == str(sdist)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.whl", b"not a zip", "cannot read the archive"),
        ("x.tar.gz", b"not a tarball", "cannot read the archive"),
        ("x.exe", b"MZ", "not a wheel"),
    ],
)
def test_bad_dist_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DistError, match=message):
        read_dist(tmp_path / name)


def test_wheel_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "empty-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("empty/__init__.py", "")
    with pytest.raises(DistError, match=r"expected one \*\.dist-info/METADATA, found 0"):
        read_dist(path)


def test_installed_reads_this_environment() -> None:
    packages = {p.name.lower(): p for p in installed()}
    assert "httpx" in packages
    assert packages["httpx"].origins[0].kind == "installed"


def test_installed_from_a_path(tmp_path: Path) -> None:
    info = tmp_path / "fake_pkg-3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(metadata(name="fake-pkg", version="3.0", author_email="a@b.c"))
    assert [(p.name, p.version) for p in installed([str(tmp_path)])] == [("fake-pkg", "3.0")]


def test_names_prefer_the_installed_version() -> None:
    inputs = collect(names=["httpx", "httpx==0.0.1", "surely-not-installed-pkg"], index_url=INDEX)
    assert [p.name for p in inputs.local] == ["httpx"]
    assert [(r.name, r.version) for r in inputs.refs] == [
        ("httpx", "0.0.1"),
        ("surely-not-installed-pkg", None),
    ]


@pytest.mark.parametrize("bad", ["not a name!", "x @ https://example.invalid/x.whl"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ScanInputError):
        parse_name(bad)


def test_collect_wraps_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(ScanInputError, match="no such requirement file"):
        collect(requirements=[tmp_path / "missing.txt"], index_url=INDEX)
