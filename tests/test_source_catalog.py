"""The source catalog: each source described once, and the only place that names them."""

from __future__ import annotations

import asyncio
import io
import tokenize
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

import lapsewatch
from lapsewatch import source_catalog
from lapsewatch.config import KNOWN_SOURCES, ConfigError, Settings
from lapsewatch.pace.policy import START_BY_SOURCE
from lapsewatch.sources import build_sources
from lapsewatch.verdict import REGISTRY_SOURCES

SRC = Path(lapsewatch.__file__).parent
NAMES = {spec.name for spec in source_catalog.CATALOG}
# Where a source's name may be written: the catalog; each source's own module (its
# ``name`` and observations); the local world and the demo's account of it (the
# world's own vocabulary, not the product's); an example in the API schema.
ALLOWED = {"source_catalog.py", "demo.py", "web/schemas.py"}


def _string_literals(path: Path) -> set[str]:
    found = set()
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type == tokenize.STRING and token.string[:1] in "\"'":
            found.add(token.string.strip("\"'"))
    return found


def test_only_the_catalog_names_the_sources() -> None:
    named_elsewhere = {}
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC).as_posix()
        if relative in ALLOWED or relative.startswith(("sources/", "world/")):
            continue
        names = _string_literals(path) & NAMES
        if names:
            named_elsewhere[relative] = sorted(names)
    assert named_elsewhere == {}


def test_configuration_comes_from_the_catalog() -> None:
    assert set(KNOWN_SOURCES) == NAMES
    assert Settings().rates == {s.name: s.rate for s in source_catalog.CATALOG}
    assert Settings().sources == tuple(s.name for s in source_catalog.CATALOG if s.default)
    with_key = Settings.from_env({"LAPSEWATCH_FASTLY_KEY": "k"})
    assert with_key.sources == (*Settings().sources, "fastly")
    with pytest.raises(ConfigError, match="LAPSEWATCH_FASTLY_KEY is not set"):
        Settings.from_env({"LAPSEWATCH_SOURCES": "rdap,fastly"})
    assert START_BY_SOURCE == {"dns": 100.0, "whois": 2.0}


def test_verdict_authority_comes_from_the_catalog() -> None:
    assert REGISTRY_SOURCES == ("rdap", "whois")
    ranks = [s.rank for s in source_catalog.by_authority()]
    assert ranks == sorted(set(ranks)), "each source its own rank"
    assert [s.name for s in source_catalog.by_authority()] == ["rdap", "whois", "fastly", "dns"]


def test_a_setting_default_is_written_once() -> None:
    """``from_env`` with nothing set is the dataclass's defaults, field by field."""
    from_env, default = Settings.from_env({}), Settings()
    differing = [
        f.name for f in fields(Settings) if getattr(from_env, f.name) != getattr(default, f.name)
    ]
    assert differing == []
    assert Settings.from_env({"LAPSEWATCH_PACE_WINDOW": "30"}).pace_window == 30
    assert isinstance(Settings.from_env({"LAPSEWATCH_ATTEMPTS": "2"}).attempts, int)


def test_each_entry_builds_its_source() -> None:
    """Every factory builds a source of its entry's name; the order is the settings'."""
    settings = Settings(sources=("whois", "dns", "fastly", "rdap"), fastly_key="k")

    async def build() -> list[str]:
        async with httpx.AsyncClient() as client:
            sources = build_sources(settings, client)
            whois = next(s for s in sources if s.name == "whois")
            assert getattr(whois, "rdap", None) is next(s for s in sources if s.name == "rdap")
            return [s.name for s in sources]

    assert asyncio.run(build()) == ["whois", "dns", "fastly", "rdap"]


def test_a_source_that_cannot_be_asked_is_not_built() -> None:
    async def build() -> list[str]:
        async with httpx.AsyncClient() as client:
            return [s.name for s in build_sources(Settings(sources=("rdap", "fastly")), client)]

    assert asyncio.run(build()) == ["rdap"]
