"""A long cycle holds its memory: free heap pages go back to the kernel, and IN lists
take a few statement texts, not one per batch size (bench/RESULTS.md, "The
checker's memory")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, event, select

from lapsewatch import memory
from lapsewatch.store import Domain, make_engine, upgrade
from lapsewatch.store.db import IN_PADDED, in_values

glibc = pytest.mark.skipif(memory._malloc_trim is None, reason="malloc_trim is glibc's")


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@glibc
def test_trim_gives_back_the_free_pages_between_live_blocks() -> None:
    # 4 KB blocks come from glibc's heap (not Python's small-object arenas); keeping
    # every tenth pins the heap, so freeing the others leaves holes glibc keeps.
    blocks = [bytes(4096) + bytes([i % 251]) for i in range(20_000)]
    kept = blocks[::10]
    del blocks
    before = _rss_bytes()
    assert memory.trim() is True
    after = _rss_bytes()
    assert before - after > 30 * 1024 * 1024, (before, after)
    assert len(kept) == 2_000


@glibc
def test_the_trimmer_trims_once_a_period() -> None:
    now = [100.0]
    trimmer = memory.Trimmer(10.0, clock=lambda: now[0])
    assert trimmer.maybe() is False  # the period starts with the trimmer
    now[0] = 109.9
    assert trimmer.maybe() is False
    now[0] = 110.0
    assert trimmer.maybe() is True
    assert trimmer.maybe() is False  # right after one
    now[0] = 125.0
    assert trimmer.maybe() is True
    assert trimmer.trims == 2


@given(st.lists(st.text(min_size=1, max_size=5), max_size=300))
def test_in_values_are_the_same_set_in_a_power_of_two(values: list[str]) -> None:
    padded = in_values(values)
    assert set(padded) == set(values)
    assert padded[: len(values)] == values
    if values:  # (the strategy stays under IN_PADDED)
        assert len(padded) >= 8
        assert len(padded) & (len(padded) - 1) == 0
        assert len(padded) < max(16, 2 * len(values))
    else:
        assert padded == []


def test_batches_of_every_size_share_a_few_statement_texts(tmp_path: Path) -> None:
    engine: Engine = make_engine(f"sqlite:///{tmp_path / 'in.db'}")
    upgrade(engine)
    texts: set[str] = set()

    @event.listens_for(engine, "before_cursor_execute")
    def seen(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        texts.add(statement)

    with engine.connect() as connection:
        for size in range(1, 501):
            names = [f"d{i}.example" for i in range(size)]
            query = select(Domain.name).where(Domain.name.in_(in_values(names)))
            assert connection.execute(query).all() == []
        long = [f"d{i}.example" for i in range(IN_PADDED + 1)]
        assert in_values(long) == long  # past the padded sizes: as it is
        assert connection.execute(select(Domain.name).where(Domain.name.in_(long))).all() == []
    # 1..8 -> 8, then 16, 32, 64, 128, 256, 512: seven texts for 500 sizes (and the long one).
    assert len(texts) == 8
    engine.dispose()
